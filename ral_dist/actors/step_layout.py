"""How a learner rank cuts its share of a step into updates: the seeded mini-batch order, micro-batches under the
token budget (as many on every rank), and the whole mini-batch's counts over all ranks that every mean of the loss
divides by (`ral_dist.algorithms.Denominators`). The last two are collectives: every rank calls them in step."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from ral_dist.algorithms import Denominators
from ral_dist.messages.collate import pack_micro_batches, split_groups


def minibatch_indices(n: int, num_minibatches: int, seed: list[int], prompts: list | None = None) -> list[list[int]]:
    """0..n-1 in a seeded order (the run seed, step, epoch and rank), split into the mini-batches. ``prompts``: each
    index's prompt; the order is then one of the prompts, each prompt's indices together (None: every index its own
    prompt, the same order as a permutation of 0..n-1)."""
    prompts = list(range(n)) if prompts is None else prompts
    members: dict = {}
    for i, p in enumerate(prompts):
        members.setdefault(p, []).append(i)
    distinct = list(members.values())
    order = np.array([i for k in np.random.default_rng(seed).permutation(len(distinct)) for i in distinct[k]],
                     dtype=np.int64)
    return [mb.tolist() for mb in np.array_split(order, num_minibatches)]


def micro_batch_groups(lengths: list[int], indices: list[int], budget: int | None,
                       device: torch.device) -> list[list[int]]:
    """A mini-batch's indices packed into micro-batches of at most ``budget`` tokens (``lengths`` by index), as
    many on every rank: ZeRO-3 gathers parameters in every forward, so a rank with fewer forwards would hang the
    others. An empty group is a forward that adds nothing."""
    groups = pack_micro_batches([lengths[i] for i in indices], budget)
    count = torch.tensor([len(groups)], dtype=torch.float64, device=device)
    dist.all_reduce(count, op=dist.ReduceOp.MAX)
    return [[indices[k] for k in g] for g in split_groups(groups, int(count.item()))]


def global_denominators(response_lengths: list[int], world_size: int, device: torch.device) -> Denominators:
    """The mini-batch's valid tokens and sequences over all ranks, per rank: DeepSpeed averages the ranks'
    gradients, so each rank's sum over this count makes that average the mini-batch's mean."""
    counts = torch.tensor([sum(response_lengths), sum(n > 0 for n in response_lengths)], dtype=torch.float64,
                          device=device)
    dist.all_reduce(counts)
    tokens, sequences = (max(float(c), 1.0) / world_size for c in counts.tolist())
    return Denominators(tokens=tokens, sequences=sequences)
