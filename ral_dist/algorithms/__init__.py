"""Pure-torch RAL algorithms: advantages, losses, attention terms, rewards (see shared/spec/RAL.md)."""

from ral_dist.algorithms.advantages import group_advantages
from ral_dist.algorithms.aggregation import aggregate_tokens, masked_mean
from ral_dist.algorithms.attention_loss import attention_jsd, ral_attention_loss, row_jsd
from ral_dist.algorithms.distill_loss import DistillTerms, distill_loss, reverse_kl_full, reverse_kl_topk
from ral_dist.algorithms.jsd import jsd
from ral_dist.algorithms.policy_loss import clipped_surrogate, k3_kl, tis_weights
from ral_dist.algorithms.ral_loss import LossTerms, ral_loss
from ral_dist.algorithms.rewards import (
    PAPER_REWARD_WEIGHTS,
    REWARD_TERMS,
    Score,
    consistency,
    exact_match,
    extract_answer,
    format_score,
    normalize_answer,
    sparsity,
    total_reward,
)

__all__ = [
    "PAPER_REWARD_WEIGHTS",
    "REWARD_TERMS",
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
    "ral_attention_loss",
    "ral_loss",
    "reverse_kl_full",
    "reverse_kl_topk",
    "row_jsd",
    "sparsity",
    "tis_weights",
    "total_reward",
]
