"""The student side of on-policy (attention) distillation (RAL.md §5), called by `ral_dist.learner.Learner`.

The learner receives one teacher ObjectRef per rollout chunk and takes them as they complete (`attach_targets`),
lays the targets out in its own mini-batch padding (`teacher_batch`), and adds mu * reverse KL on the response
tokens and gamma_attn * mean attention JSD (no advantage) to the GRPO terms (`distill_terms`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ral_dist.algorithms import (
    DistillTerms,
    LossTerms,
    attention_jsd,
    distill_loss,
    reverse_kl_full,
    reverse_kl_topk,
)
from ral_dist.collate import LearnerBatch
from ral_dist.config import DistillConfig
from ral_dist.messages import TeacherTargets, Trajectory


def attach_targets(trajectories: list[Trajectory], teacher: list, step: int, timeout_s: float) -> float:
    """Set ``t.teacher`` on every trajectory, in order; returns the seconds spent waiting for the teacher.

    ``teacher``: per rollout chunk, an ObjectRef of (or a plain) list of `TeacherTargets`, in the order of the
    chunks the trajectories came from; a failed teacher call raises as soon as it fails.
    """
    t0 = time.time()
    chunks: list = list(teacher)
    pending = [i for i, c in enumerate(chunks) if not isinstance(c, list)]
    if pending:
        from ral_dist.ray_cluster import wait_all  # only the Ray path needs it

        fetched = wait_all([chunks[i] for i in pending], f"step {step}: the teacher targets of {len(pending)} "
                           "rollout chunk(s)", timeout_s)
        for i, c in zip(pending, fetched, strict=True):
            chunks[i] = c
    waited = time.time() - t0
    targets = [t for c in chunks for t in c]
    if len(targets) != len(trajectories):
        raise ValueError(f"step {step}: {len(targets)} teacher targets for {len(trajectories)} trajectories")
    for traj, target in zip(trajectories, targets, strict=True):
        if target.attention.shape[0] != len(traj.response_ids) or target.attention.shape[1] != traj.attention.shape[1]:
            raise ValueError(f"step {step}: teacher targets of {traj.sample.id} have shape "
                             f"{tuple(target.attention.shape)}, the trajectory's rows {tuple(traj.attention.shape)}")
        traj.teacher = target
    return waited


@dataclass
class TeacherBatch:
    """Teacher targets in a `LearnerBatch`'s padding."""

    attention: torch.Tensor  # [B, R, P + R]
    logprobs: torch.Tensor | None  # [B, R, V] (full)
    topk_ids: torch.Tensor | None  # [B, R, k] (top-k)
    topk_logprobs: torch.Tensor | None  # [B, R, k]


def teacher_batch(batch: LearnerBatch, trajectories: list[Trajectory]) -> TeacherBatch:
    B, R = batch.response_ids.shape
    P = batch.prompts.prompt_len
    device = batch.response_ids.device
    first = trajectories[0].teacher
    if first is None:
        raise ValueError(f"trajectory {trajectories[0].sample.id} has no teacher targets")
    attention = torch.zeros((B, R, P + R), device=device)
    full = first.logprobs is not None
    width = first.logprobs.shape[-1] if full else first.topk_ids.shape[-1]
    # Padding rows are masked out of the loss; zeros there keep every value finite.
    dist = torch.zeros((B, R, width), device=device)
    ids = None if full else torch.zeros((B, R, width), dtype=torch.long, device=device)
    for b, t in enumerate(trajectories):
        target: TeacherTargets = t.teacher
        n, off = len(t.response_ids), P - t.prompt_len
        attention[b, :n, off : P + n] = target.attention.float().to(device)
        if full:
            dist[b, :n] = target.logprobs.to(device)
        else:
            dist[b, :n] = target.topk_logprobs.to(device)
            ids[b, :n] = target.topk_ids.to(device)
    return TeacherBatch(attention, dist if full else None, ids, None if full else dist)


def distill_terms(grpo: LossTerms, student_logits: torch.Tensor, p_theta: torch.Tensor, batch: LearnerBatch,
                  teacher: TeacherBatch, dc: DistillConfig, mode: str = "token_mean") -> DistillTerms:
    """GRPO + mu * KL(student || teacher) + gamma_attn * mean_t JSD(p_theta^t || p_teacher^t) (RAL.md §5).

    student_logits: [B, R, V] (already divided by the sampling temperature); p_theta: [B, R, P + R] with grad.
    With gamma_attn = 0 the JSD is still computed (detached) for logging and the total is the on-policy KD loss.
    """
    mask = batch.response_mask
    if teacher.logprobs is not None:
        rkl = reverse_kl_full(student_logits, teacher.logprobs, mask, mode)
    else:
        rkl = reverse_kl_topk(student_logits, teacher.topk_ids, teacher.topk_logprobs, mask, mode)
    p = p_theta if dc.gamma_attn != 0 else p_theta.detach()
    jsd = attention_jsd(p, teacher.attention, mask, mode)
    return distill_loss(grpo, rkl, jsd, mu=dc.mu, gamma_attn=dc.gamma_attn)
