"""What flows between the actors. Plain dataclasses of CPU tensors, pickled through Ray's object store.

A `Trajectory` is one sampled response with everything the reward workers and the learner need, stored
without padding: positions index the unpadded sequence (prompt then response), so any batch layout can be
rebuilt from it (`ral_dist.collate`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ral_dist.data import Sample


@dataclass
class Trajectory:
    sample: Sample  # the prompt's sample (images, question, answer, regions)
    group: int  # index of the prompt within the step; the G responses of a prompt share it
    policy_version: int  # version of the weights that sampled it
    prompt_len: int  # unpadded prompt length P
    response_ids: torch.Tensor  # [R] up to and including EOS
    old_logprobs: torch.Tensor  # [R] fp32, from the weights that sampled
    attention: torch.Tensor  # [R, P + R] p_old rows of the response tokens (fp16 on the wire by default)
    question_attention: torch.Tensor  # [Q, P + R] rows of the question tokens
    visual_positions: torch.Tensor  # [V] into the unpadded sequence
    question_positions: torch.Tensor  # [Q]
    visual_grid: tuple[int, int, int]
    temporal_patch: int
    text: str
    truncated: bool = False  # hit max_new_tokens without EOS
    rewards: dict[str, float] = field(default_factory=dict)  # every reward term, filled by a RewardWorker
    reward_notes: dict[str, str] = field(default_factory=dict)  # why a term scored 0 when it could not be computed
    reward: float = 0.0  # weighted total
    advantage: float = 0.0  # group-normalised, filled by the controller
    teacher: TeacherTargets | None = None  # distillation job: the teacher's targets, attached by the learner


@dataclass
class TeacherTargets:
    """What a TeacherActor returns for one student trajectory (RAL.md §5), unpadded like `Trajectory.attention`."""

    attention: torch.Tensor  # [R, P + R] the teacher's attention policy rows (its last layer, heads averaged)
    token_logprobs: torch.Tensor  # [R] fp32, the teacher's log-prob of each of the student's tokens
    logprobs: torch.Tensor | None = None  # [R, V] fp32, full distribution (teacher.top_k None)
    topk_ids: torch.Tensor | None = None  # [R, k] its top-k token ids (teacher.top_k = k) ...
    topk_logprobs: torch.Tensor | None = None  # [R, k] ... and their log-probs; residual mass = 1 - sum(exp)


@dataclass
class RolloutBatch:
    """One rollout worker's share of a step: its trajectories, and the prompts it had to skip (with why)."""

    trajectories: list[Trajectory]
    groups: list[int]  # the prompt groups this chunk was given
    skipped: list[tuple[int, str, str]] = field(default_factory=list)  # (group, sample id, reason)
    worker_restarted: bool = False  # the worker had been restarted by Ray before this call ran
    engine_stats: dict = field(default_factory=dict)  # vllm engine: log-prob mismatch sums (ral_dist.logprob_mismatch)


def flatten(batches: list) -> list[Trajectory]:
    """Trajectories of RolloutBatch objects (or plain lists of trajectories), in order."""
    out: list[Trajectory] = []
    for item in batches:
        out.extend(item.trajectories if isinstance(item, RolloutBatch) else item)
    return out


@dataclass
class RewardResult:
    """What a RewardWorker returns for one trajectory (small: the controller never fetches attention maps)."""

    terms: dict[str, float]
    notes: dict[str, str]
    total: float
    accuracy: float
    attention_on_target: float  # NaN when the sample has no ground-truth region


@dataclass
class RewardBatch:
    """A RewardWorker's answer for one RolloutBatch: the scores, plus the batch's accounting (small)."""

    results: list[RewardResult]
    groups: list[int]
    skipped: list[tuple[int, str, str]]
    worker_restarted: bool
    engine_stats: dict = field(default_factory=dict)  # the RolloutBatch's, passed on to the controller


@dataclass
class StepStats:
    """The learner's report of one step (rank 0's view, loss terms averaged over ranks and mini-batches)."""

    values: dict[str, float]
    warnings: list[str] = field(default_factory=list)
