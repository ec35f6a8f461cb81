"""The student's learner of on-policy (attention) distillation (RAL.md §5): the RL learner with another loss.

It overrides the two hooks of `ral_dist.actors.learner.Learner`: `attach_targets` takes the teacher's targets of
the step (one ObjectRef per rollout chunk, taken as they complete), and `compute_loss` adds mu * reverse KL on the
response tokens and gamma_attn * mean attention JSD (no advantage weighting) to the GRPO terms.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from ral_dist.actors.learner import Learner, MiniBatch
from ral_dist.algorithms import (
    Denominators,
    DistillTerms,
    LossTerms,
    attention_jsd,
    distill_loss,
    reverse_kl_full,
    reverse_kl_topk,
)
from ral_dist.distill.targets import TeacherBatch, TeacherTargets, teacher_batch
from ral_dist.distill_config import DistillConfig, DistillJobConfig
from ral_dist.messages import Trajectory
from ral_dist.messages.collate import LearnerBatch
from ral_dist.models.generation import ResponseForward


def fetch_targets(trajectories: list[Trajectory], teacher: list, step: int, timeout_s: float
                  ) -> tuple[list[TeacherTargets], float]:
    """The targets of every trajectory of this rank's share, in order, and the seconds spent waiting for the teacher.

    ``teacher``: per rollout chunk, an ObjectRef of (or a plain) list of `TeacherTargets`: this rank's share of the
    chunk's targets, cut like its trajectories; a failed teacher call raises as soon as it fails.
    """
    t0 = time.time()
    chunks: list = list(teacher)
    pending = [i for i, c in enumerate(chunks) if not isinstance(c, list)]
    if pending:
        from ral_dist.runtime.ray_cluster import wait_all  # only the Ray path needs it

        fetched = wait_all([chunks[i] for i in pending], f"step {step}: the teacher targets of {len(pending)} "
                           "rollout chunk(s)", timeout_s)
        for i, c in zip(pending, fetched, strict=True):
            chunks[i] = c
    waited = time.time() - t0
    targets = [t for c in chunks for t in c]
    if len(targets) != len(trajectories):
        raise ValueError(f"step {step}: {len(targets)} teacher targets for {len(trajectories)} trajectories")
    for traj, target in zip(trajectories, targets, strict=True):
        if target.attention.shape != traj.behaviour.attention.shape:
            raise ValueError(f"step {step}: teacher targets of {traj.sample.id} have shape "
                             f"{tuple(target.attention.shape)}, the trajectory's rows "
                             f"{tuple(traj.behaviour.attention.shape)}")
    return targets, waited


def distill_terms(grpo: LossTerms, student_logits: torch.Tensor, p_theta: torch.Tensor, batch: LearnerBatch,
                  teacher: TeacherBatch, dc: DistillConfig, mode: str = "token_mean",
                  denominators: Denominators | None = None) -> DistillTerms:
    """GRPO + mu * KL(student || teacher) + gamma_attn * mean_t JSD(p_theta^t || p_teacher^t) (RAL.md §5).

    student_logits: [B, R, V] (already divided by the sampling temperature); p_theta: [B, R, P + R] with grad.
    With gamma_attn = 0 the JSD is still computed (detached) for logging and the total is the on-policy KD loss.
    """
    mask = batch.response_mask
    if teacher.logprobs is not None:
        rkl = reverse_kl_full(student_logits, teacher.logprobs, mask, mode, denominators)
    else:
        rkl = reverse_kl_topk(student_logits, teacher.topk_ids, teacher.topk_logprobs, mask, mode, denominators)
    p = p_theta if dc.gamma_attn != 0 else p_theta.detach()
    jsd = attention_jsd(p, teacher.attention, mask, mode, denominators)
    return distill_loss(grpo, rkl, jsd, mu=dc.mu, gamma_attn=dc.gamma_attn)


class DistillLearner(Learner):
    config_class = DistillJobConfig
    extra_loss_stats = ("reverse_kl", "teacher_attn_jsd")
    keep_logits = True

    def attach_targets(self, step: int, trajectories: list[Trajectory], teacher: list | None = None
                       ) -> dict[str, float]:
        if teacher is None:
            raise ValueError(f"step {step}: the distillation learner needs the teacher's targets")
        self._shard_targets, waited = fetch_targets(trajectories, teacher, step, self.cfg.run.timeout_s)
        return {"teacher_wait_s": waited}

    def compute_loss(self, mb: MiniBatch, forward: ResponseForward) -> tuple[LossTerms, dict[str, torch.Tensor]]:
        grpo, _ = super().compute_loss(mb, forward)
        teacher = teacher_batch(mb.batch, [self._shard_targets[i] for i in mb.indices])
        d = distill_terms(grpo, forward.logits / self.cfg.rollout.temperature, forward.attention, mb.batch, teacher,
                          self.cfg.distill, self.cfg.learner.loss_agg, mb.denominators)
        return dataclasses.replace(grpo, total=d.total), {"reverse_kl": d.reverse_kl, "teacher_attn_jsd": d.attn_jsd}
