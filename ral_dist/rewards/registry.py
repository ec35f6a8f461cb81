"""The one registry of reward terms (RAL.md §4): what each term reads, how it scores, and the weighted total.

Every reader of reward terms goes through `reward_terms(reward_cfg)`: the built-in terms (`REWARD_TERMS`, the
`task` term's rule chosen by ``reward.task``) and the user's ``reward.custom`` functions. The reward workers score
them, the evaluation reports them, the config refuses weights of unknown terms, the vLLM config check refuses
terms that need attention rows the rollout will not have, and the Prometheus series get one label value per term.
A new built-in term is one `RewardTerm` here (its function, pure, lives in `ral_dist.algorithms`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ral_dist.algorithms import (
    Score,
    consistency,
    exact_match,
    format_score,
    problem_type_accuracy,
    sparsity,
)
from ral_dist.rewards.custom import custom_score
from ral_dist.rewards.response import ResponseView


@dataclass(frozen=True)
class RewardTerm:
    name: str  # the key of reward.weights and the Prometheus label value
    score: Callable[[ResponseView], Score]  # 0 with a reason when it cannot be computed, never raises
    needs_attention: bool  # reads the behaviour policy's attention rows (absent with rollout.attention_on=learner)
    report_name: str  # its key in evaluation reports
    description: str


def _exact_task(r: ResponseView) -> Score:
    return exact_match(r.text, r.sample.answer)  # the sample's answer has its tags stripped when it is read


def _video_r1_task(r: ResponseView) -> Score:
    return problem_type_accuracy(r.text, r.sample.answer, r.problem_type)


# The rules of the task term, by reward.task.
TASK_TERMS: Mapping[str, RewardTerm] = MappingProxyType({
    "exact": RewardTerm("task", _exact_task, False, "accuracy",
                        "exact match of the last <answer> content with the ground truth, both normalised"),
    "video_r1": RewardTerm("task", _video_r1_task, False, "accuracy",
                           "Video-R1's accuracy by the sample's problem_type: option letter, number to 2 decimals, "
                           "1 - word error rate, mean ROUGE-1/2/L F, 1 - relative error"),
})

# The built-in terms with the default task rule (exact): their names are the keys reward.weights accepts.
REWARD_TERMS: Mapping[str, RewardTerm] = MappingProxyType({term.name: term for term in (
    TASK_TERMS["exact"],
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


# Names a reward.custom term cannot take: its value would overwrite another figure where terms are written by name
# (metrics.jsonl's reward_<name> beside reward_mean / reward_notes; the Prometheus term label beside "total"; the
# evaluation report's keys).
RESERVED_TERM_NAMES = frozenset({*REWARD_TERMS, *(t.report_name for t in REWARD_TERMS.values()), "mean", "notes",
                                 "total", "attention_on_target", "target_fraction", "n", "per_type", "examples"})


def _custom_term(spec: Any) -> RewardTerm:
    def score(r: ResponseView) -> Score:
        return custom_score(spec.path, r.text, r.sample)

    return RewardTerm(spec.name, score, False, spec.name, f"user function {spec.path}")


def reward_terms(reward_cfg: Any = None) -> Mapping[str, RewardTerm]:
    """The terms a job scores, in order: the built-ins with ``reward_cfg.task``'s rule, then ``reward_cfg.custom``.
    ``reward_cfg`` is a `ral_dist.config.RewardConfig` (None: the defaults, `REWARD_TERMS`)."""
    if reward_cfg is None:
        return REWARD_TERMS
    terms = dict(REWARD_TERMS) | {"task": TASK_TERMS[reward_cfg.task]}
    terms |= {spec.name: _custom_term(spec) for spec in reward_cfg.custom}
    return MappingProxyType(terms)


def reward_weights(reward_cfg: Any = None) -> dict[str, float]:
    """Weight of every term of `reward_terms`: ``reward.weights`` for the built-ins, each custom spec's own."""
    if reward_cfg is None:
        return dict(PAPER_REWARD_WEIGHTS)
    return dict(reward_cfg.weights) | {spec.name: spec.weight for spec in reward_cfg.custom}


def total_reward(terms: Mapping[str, float | Score], weights: Mapping[str, float] = PAPER_REWARD_WEIGHTS) -> float:
    """sum_name weights[name] * terms[name]; a missing or non-finite term counts as 0."""
    total = 0.0
    for name, weight in weights.items():
        value = terms.get(name, 0.0)
        value = float(value.value if isinstance(value, Score) else value)
        if weight != 0 and math.isfinite(value):
            total += weight * value
    return total


def score_terms(response: ResponseView, terms: Mapping[str, RewardTerm] = REWARD_TERMS
                ) -> tuple[dict[str, float], dict[str, str]]:
    """Every term of one response, and why a term scored 0 where it could not be computed."""
    values, notes = {}, {}
    for name, term in terms.items():
        if term.needs_attention and response.attention is None:  # weighted 0 (the config captures otherwise)
            values[name], notes[name] = 0.0, "not_captured"
            continue
        try:
            score = term.score(response)
        except Exception as exc:  # noqa: BLE001 — what the view could not provide (a malformed sample) scores 0
            score = Score(0.0, f"error: {type(exc).__name__}: {exc}"[:200])
        values[name] = score.value if math.isfinite(score.value) else 0.0
        if score.reason:
            notes[name] = score.reason
    return values, notes
