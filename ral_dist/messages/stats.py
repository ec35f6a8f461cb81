"""What the learner reports of a step, and where a step's wall time went: typed, read by the controller (the step
record in metrics.jsonl) and by the Prometheus recorders (`ral_dist.runtime.metrics`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class LearnerStepStats:
    """One step on every rank: loss terms averaged over the applied updates, then over ranks."""

    loss: float
    policy_loss: float
    kl: float  # k3 KL to the reference
    attn_loss: float  # the RAL attention term (advantage-weighted JSD to p_old)
    attn_jsd: float  # unweighted mean JSD(p_theta || p_old)
    clip_fraction: float
    ratio_mean: float
    attn_grad_norm: float  # mean over the step's measured updates of the attention term's own gradient norm; NaN
    attn_grad_share: float  # mean over the measured updates of attn_grad_norm / the whole update's gradient norm
    attn_grad_norm_first: float  # ... of the first update (0 when theta == theta_old, RAL.md §3)
    attn_grad_norm_by_minibatch: list[float]  # every update's (NaN where not measured)
    skipped_updates: int  # updates dropped for a non-finite loss
    updates: int
    lr: float
    n_trajectories: int
    n_tokens: int  # response tokens of the whole step
    learn_s: float
    staleness_max: int  # most policy versions a trajectory lagged the learner
    version: int  # policy version after the step
    warnings: list[str] = field(default_factory=list)
    # Stats of a learner subclass's loss and step inputs (distillation: reverse_kl, teacher_attn_jsd,
    # teacher_wait_s) and of TIS (learner.tis_cap set), under the names they have in the step record.
    extra: dict[str, float] = field(default_factory=dict)

    def as_record(self) -> dict:
        """The fields the step record carries (per-update lists and counters stay with the learner's metrics)."""
        keep = ("kl", "attn_loss", "attn_jsd", "attn_grad_norm", "attn_grad_share", "policy_loss", "loss",
                "clip_fraction", "skipped_updates", "lr", "staleness_max")
        return {k: getattr(self, k) for k in keep} | self.extra


@dataclass(frozen=True)
class PhaseTimes:
    """Wall seconds of one step's phases as the controller saw them."""

    rollout_s: float  # launch of the step's rollout -> every chunk in (in one_step_off it overlaps the last learn)
    rollout_wait_s: float  # how long the controller blocked on the rollout
    reward_s: float  # the wait for rewards once every rollout is in
    learn_s: float
    sync_s: float
    step_s: float

    @classmethod
    def phases(cls) -> tuple[str, ...]:
        """The phase names (the Prometheus label values)."""
        return tuple(f.name.removesuffix("_s") for f in dataclasses.fields(cls))
