"""Pure-torch RAL algorithms: advantages, losses, attention terms, reward terms (see shared/spec/RAL.md).

Plain functions on tensors and strings: no Ray, no models, no config. The registry that names the reward terms
and weighs them is `ral_dist.rewards`."""

from ral_dist.algorithms.advantages import group_advantages
from ral_dist.algorithms.aggregation import Denominators, aggregate_tokens, masked_mean
from ral_dist.algorithms.answer_rewards import exact_match, extract_answer, format_score, normalize_answer
from ral_dist.algorithms.attention_loss import attention_jsd, ral_attention_loss, row_jsd
from ral_dist.algorithms.attention_rewards import consistency, sparsity
from ral_dist.algorithms.distill_loss import DistillTerms, distill_loss, reverse_kl_full, reverse_kl_topk
from ral_dist.algorithms.jsd import jsd
from ral_dist.algorithms.policy_loss import clipped_surrogate, k3_kl, tis_weights
from ral_dist.algorithms.problem_type_rewards import (
    PROBLEM_TYPES,
    ProblemType,
    option_letter,
    parse_number,
    problem_type_accuracy,
    strip_answer_tags,
)
from ral_dist.algorithms.ral_loss import LossTerms, ral_loss
from ral_dist.algorithms.score import Score

__all__ = [
    "Denominators",
    "PROBLEM_TYPES",
    "ProblemType",
    "DistillTerms",
    "LossTerms",
    "Score",
    "aggregate_tokens",
    "attention_jsd",
    "clipped_surrogate",
    "consistency",
    "distill_loss",
    "exact_match",
    "extract_answer",
    "format_score",
    "group_advantages",
    "jsd",
    "k3_kl",
    "masked_mean",
    "normalize_answer",
    "option_letter",
    "parse_number",
    "problem_type_accuracy",
    "ral_attention_loss",
    "ral_loss",
    "reverse_kl_full",
    "reverse_kl_topk",
    "row_jsd",
    "sparsity",
    "strip_answer_tags",
    "tis_weights",
]
