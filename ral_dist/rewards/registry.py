"""The one registry of reward terms (RAL.md §4): what each term reads, how it scores, and the weighted total.

Every reader of reward terms goes through `REWARD_TERMS`: the reward workers score the registered terms, the
evaluation reports them, the config refuses weights of unknown terms, the vLLM config check refuses terms that
need attention rows the rollout will not have, and the Prometheus series get one label value per term. A new term
is one `RewardTerm` here (its function, pure, lives in `ral_dist.algorithms`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ral_dist.algorithms import Score, consistency, exact_match, format_score, sparsity
from ral_dist.rewards.response import ResponseView


@dataclass(frozen=True)
class RewardTerm:
    name: str  # the key of reward.weights and the Prometheus label value
    score: Callable[[ResponseView], Score]  # 0 with a reason when it cannot be computed, never raises
    needs_attention: bool  # reads the behaviour policy's attention rows (absent with rollout.attention_on=learner)
    report_name: str  # its key in evaluation reports
    description: str


REWARD_TERMS: Mapping[str, RewardTerm] = MappingProxyType({term.name: term for term in (
    RewardTerm("task", lambda r: exact_match(r.text, r.sample.answer), False, "accuracy",
               "exact match of the last <answer> content with the ground truth, both normalised"),
    RewardTerm("format", lambda r: format_score(r.text, r.mode), False, "format_rate",
               "the response is exactly <think>..</think><answer>..</answer> (answer_only mode: <answer> alone)"),
    RewardTerm("sparsity", lambda r: sparsity(r.attention, r.visual_positions), True, "sparsity",
               "1 - mean entropy of each response row's visual attention / ln |V|"),
    RewardTerm("consistency",
               lambda r: consistency(r.attention[r.answer_rows], r.question_attention, r.visual_positions), True,
               "consistency", "1 - JSD(answer rows' visual attention || question rows') / ln 2"),
)})

# The paper's reward: 0.9 * exact match + 0.1 * format. Read-only; copy with dict(...) to change.
PAPER_REWARD_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {"task": 0.9, "format": 0.1, "sparsity": 0.0, "consistency": 0.0}
)


def total_reward(terms: Mapping[str, float | Score], weights: Mapping[str, float] = PAPER_REWARD_WEIGHTS) -> float:
    """sum_name weights[name] * terms[name]; a missing or non-finite term counts as 0."""
    total = 0.0
    for name, weight in weights.items():
        value = terms.get(name, 0.0)
        value = float(value.value if isinstance(value, Score) else value)
        if weight != 0 and math.isfinite(value):
            total += weight * value
    return total


def score_terms(response: ResponseView) -> tuple[dict[str, float], dict[str, str]]:
    """Every registered term of one response, and why a term scored 0 where it could not be computed."""
    values, notes = {}, {}
    for name, term in REWARD_TERMS.items():
        try:
            score = term.score(response)
        except Exception as exc:  # noqa: BLE001 — what the view could not provide (a malformed sample) scores 0
            score = Score(0.0, f"error: {type(exc).__name__}: {exc}"[:200])
        values[name] = score.value if math.isfinite(score.value) else 0.0
        if score.reason:
            notes[name] = score.reason
    return values, notes
