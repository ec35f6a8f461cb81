"""Reward terms and their weighted sum (RAL.md §4)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType

from ral_dist.algorithms.answer_rewards import exact_match, extract_answer, format_score, normalize_answer
from ral_dist.algorithms.attention_rewards import consistency, sparsity
from ral_dist.algorithms.score import Score

__all__ = [
    "PAPER_REWARD_WEIGHTS",
    "REWARD_TERMS",
    "Score",
    "consistency",
    "exact_match",
    "extract_answer",
    "format_score",
    "normalize_answer",
    "sparsity",
    "total_reward",
]

# Name -> term. Signatures differ: task(response, ground_truth), format(response, mode),
# sparsity(attn_rows, visual_positions, row_mask), consistency(answer_rows, question_rows, visual_positions).
REWARD_TERMS: Mapping[str, Callable[..., Score]] = MappingProxyType(
    {"task": exact_match, "format": format_score, "sparsity": sparsity, "consistency": consistency}
)

# The paper's reward: 0.9 * exact match + 0.1 * format. Read-only; copy with dict(...) to change.
PAPER_REWARD_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {"task": 0.9, "format": 0.1, "sparsity": 0.0, "consistency": 0.0}
)


def total_reward(
    terms: Mapping[str, float | Score], weights: Mapping[str, float] = PAPER_REWARD_WEIGHTS
) -> float:
    """sum_name weights[name] * terms[name]; a missing or non-finite term counts as 0."""
    total = 0.0
    for name, weight in weights.items():
        value = terms.get(name, 0.0)
        value = float(value.value if isinstance(value, Score) else value)
        if weight != 0 and math.isfinite(value):
            total += weight * value
    return total
