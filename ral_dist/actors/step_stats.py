"""The learner step's statistics over its ranks: the TIS weights' and, in one all-reduce, every per-rank scalar of
the updates (their loss terms, the attention term's gradient norms, the step's counts). Collectives: every rank
calls them in step."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist

from ral_dist.algorithms import tis_weights
from ral_dist.messages import LearnerStepStats, Trajectory

# What every loss reports of each update (averaged over the applied updates of a step, then over ranks).
LOSS_STATS = ("loss", "policy_loss", "kl", "attn_loss", "attn_jsd", "clip_fraction", "ratio_mean")


def tis_step_stats(old: torch.Tensor, rollout: torch.Tensor, cap: float, device: torch.device) -> dict[str, float]:
    """TIS weight stats over every response token of the step on all ranks (``old``, ``rollout``: this rank's
    tokens' log-probs, concatenated; the weights are fixed per step)."""
    _, local = tis_weights(old, rollout, torch.ones_like(old), cap)
    n = float(len(old))
    sums = torch.tensor([local["tis_weight_mean"] * n, local["tis_truncated_fraction"] * n, n],
                        dtype=torch.float64, device=device)
    peak = torch.tensor([local["tis_ratio_max"]], dtype=torch.float64, device=device)
    dist.all_reduce(sums)
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    return {"tis_weight_mean": float(sums[0] / sums[2]), "tis_ratio_max": float(peak[0]),
            "tis_truncated_fraction": float(sums[1] / sums[2])}


def reduce_step(outcomes: list[dict | None], extra_names: tuple[str, ...], mine: list[Trajectory], version: int,
                world_size: int, device: torch.device, **fields) -> LearnerStepStats:
    """The step's stats, the same on every rank. One all-reduce for every per-rank scalar: the mean stats (over
    this rank's applied updates; None: an update skipped for a non-finite loss), the per-update gradient norms of
    the attention term and of the whole update (every rank runs the same number of updates; the logged norm is the
    mean of the ranks' local norms, not the norm of the averaged gradient) and the step's counts; one more for the
    oldest policy version of the step.
    ``version``: the learner's after the step; ``fields``: the rest of `LearnerStepStats` (``extra`` is extended
    with the means of ``extra_names``)."""
    names = LOSS_STATS + extra_names
    applied = [o for o in outcomes if o is not None]
    means = [sum(o[k] for o in applied) / len(applied) if applied else float("nan") for k in names]
    norms = [o["attn_grad_norm"] if o is not None else float("nan") for o in outcomes]
    totals = [o["grad_norm"] if o is not None else float("nan") for o in outcomes]
    counts = [len(mine), sum(len(t.response.ids) for t in mine)]
    packed = torch.tensor(means + norms + totals + counts, dtype=torch.float64, device=device)
    dist.all_reduce(packed)
    n_trajectories, n_tokens = (int(v) for v in packed[-2:].tolist())
    packed = (packed[:-2] / world_size).cpu().tolist()
    oldest = torch.tensor([min(t.behaviour.version for t in mine)], dtype=torch.float64, device=device)
    dist.all_reduce(oldest, op=dist.ReduceOp.MIN)
    mean = dict(zip(names, packed[: len(names)], strict=True))
    by_mb = packed[len(names) : len(names) + len(norms)]
    finite_norms = [g for g in by_mb if math.isfinite(g)]
    shares = [a / t for a, t in zip(by_mb, packed[len(names) + len(norms) :], strict=True)
              if math.isfinite(a) and math.isfinite(t) and t > 0]
    skipped = len(outcomes) - len(applied)
    if skipped:
        fields["warnings"] = [*fields["warnings"], f"skipped {skipped} update(s) with a non-finite loss"]
    fields["extra"] = fields["extra"] | {k: mean[k] for k in extra_names}
    return LearnerStepStats(
        **{k: mean[k] for k in LOSS_STATS},
        attn_grad_norm=float(np.mean(finite_norms)) if finite_norms else float("nan"),
        attn_grad_share=float(np.mean(shares)) if shares else float("nan"),
        attn_grad_norm_first=by_mb[0], attn_grad_norm_by_minibatch=by_mb, skipped_updates=skipped,
        updates=len(applied), n_trajectories=n_trajectories, n_tokens=n_tokens,
        staleness_max=version - 1 - int(oldest.item()), version=version, **fields)
