"""What a reward worker sends back: per trajectory its terms and total (small: never the attention maps)."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from ral_dist.messages.trajectory import ChunkAccounting


@dataclass(frozen=True)
class RewardResult:
    terms: dict[str, float]  # every term of the job's registry (ral_dist.rewards), 0 where it could not be computed
    notes: dict[str, str]  # why a term scored 0 when it could not be computed
    total: float  # weighted by reward.weights (and each reward.custom entry's weight)
    accuracy: float  # the task term
    attention_on_target: float  # NaN when the sample has no ground-truth region
    qtype: str  # the sample's question type: the key of the per-type accounting
    problem_type: str  # the sample's: which reward.task=video_r1 rule scored the task term


@dataclass(frozen=True)
class RewardBatch:
    """A reward worker's answer for one rollout chunk: the scores in trajectory order, and the chunk's accounting."""

    results: list[RewardResult]
    accounting: ChunkAccounting


def per_type_summary(results: list[RewardResult]) -> dict[str, dict[str, float]]:
    """Per question type (`RewardResult.qtype`, sorted): trajectories ``n``, mean ``accuracy`` and mean total
    ``reward`` (non-finite totals left out; NaN when none is finite)."""
    by_type: dict[str, list[RewardResult]] = defaultdict(list)
    for r in results:
        by_type[r.qtype].append(r)
    summary = {}
    for qtype, group in sorted(by_type.items()):
        totals = [r.total for r in group if math.isfinite(r.total)]
        summary[qtype] = {"n": len(group), "accuracy": sum(r.accuracy for r in group) / len(group),
                          "reward": sum(totals) / len(totals) if totals else math.nan}
    return summary
