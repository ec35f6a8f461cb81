"""What a reward worker sends back: per trajectory its terms and total (small: never the attention maps)."""

from __future__ import annotations

from dataclasses import dataclass

from ral_dist.messages.trajectory import ChunkAccounting


@dataclass(frozen=True)
class RewardResult:
    terms: dict[str, float]  # every registered reward term (ral_dist.rewards), 0 where it could not be computed
    notes: dict[str, str]  # why a term scored 0 when it could not be computed
    total: float  # weighted by reward.weights
    accuracy: float  # the task term
    attention_on_target: float  # NaN when the sample has no ground-truth region


@dataclass(frozen=True)
class RewardBatch:
    """A reward worker's answer for one RolloutBatch: the scores in trajectory order, and the chunk's accounting."""

    results: list[RewardResult]
    accounting: ChunkAccounting
