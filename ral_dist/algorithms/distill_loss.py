"""On-policy distillation terms (RAL.md §5): reverse KL on tokens, optional attention JSD."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ral_dist.algorithms.aggregation import AggMode, Denominators, aggregate_tokens
from ral_dist.algorithms.ral_loss import LossTerms

# Probabilities are clamped at this floor before log, as in the JSD (RAL.md §3): a teacher log-prob of -inf
# would otherwise make the KL infinite.
_EPS = 1e-8
_LOG_EPS = math.log(_EPS)


def reverse_kl_full(
    student_logits: Tensor,
    teacher_logprobs: Tensor,
    mask: Tensor,
    mode: AggMode = "token_mean",
    denominators: Denominators | None = None,
) -> Tensor:
    """KL(student || teacher) = sum_v p_s (log p_s - log p_t) per token, aggregated.

    student_logits, teacher_logprobs: [B, T, V]; mask: [B, T]. The teacher is detached.
    """
    logp_s = torch.log_softmax(student_logits.float(), dim=-1)
    logp_t = teacher_logprobs.detach().float().clamp(min=_LOG_EPS)
    per_token = (logp_s.exp() * (logp_s - logp_t)).sum(dim=-1)
    return aggregate_tokens(per_token, mask, mode, denominators)


def reverse_kl_topk(
    student_logits: Tensor,
    teacher_topk_ids: Tensor,
    teacher_topk_logprobs: Tensor,
    mask: Tensor,
    mode: AggMode = "token_mean",
    denominators: Denominators | None = None,
) -> Tensor:
    """Reverse KL over k + 1 buckets: the teacher's top-k tokens and one residual bucket for the rest.

    student_logits: [B, T, V]; teacher_topk_ids (distinct per token), teacher_topk_logprobs: [B, T, k];
    mask: [B, T]. Residual masses are 1 - sum of the top-k probabilities, clamped at 0; a residual the
    student gives no mass contributes exactly 0. With k = V this equals reverse_kl_full.
    """
    logp_s_all = torch.log_softmax(student_logits.float(), dim=-1)
    logp_s = logp_s_all.gather(-1, teacher_topk_ids.long())
    logp_t = teacher_topk_logprobs.detach().float().clamp(min=_LOG_EPS)
    p_s = logp_s.exp()
    topk_term = (p_s * (logp_s - logp_t)).sum(dim=-1)

    res_s = (1.0 - p_s.sum(dim=-1)).clamp(min=0.0)
    res_t = (1.0 - logp_t.exp().sum(dim=-1)).clamp(min=0.0)
    res_term = res_s * (torch.log(res_s.clamp(min=_EPS)) - torch.log(res_t.clamp(min=_EPS)))
    return aggregate_tokens(topk_term + res_term, mask, mode, denominators)


@dataclass
class DistillTerms:
    """total = grpo.total + mu * reverse_kl + gamma_attn * attn_jsd (attn part left out if gamma_attn == 0)."""

    total: Tensor
    grpo: LossTerms
    reverse_kl: Tensor
    attn_jsd: Tensor


def distill_loss(
    grpo_terms: LossTerms,
    reverse_kl: Tensor,
    attn_jsd: Tensor | None,
    mu: float = 1.0,
    gamma_attn: float = 0.5,
) -> DistillTerms:
    """Combine the §5 terms. gamma_attn = 0 is the on-policy KD baseline (attn_jsd may then be None).

    mu = 1.0 (paper silent) and gamma_attn = 0.5 (paper: 0.05, 0.5, 1) are project defaults.
    """
    total = grpo_terms.total + mu * reverse_kl
    if gamma_attn != 0:
        if attn_jsd is None:
            raise ValueError("attn_jsd is required when gamma_attn != 0")
        total = total + gamma_attn * attn_jsd
    if attn_jsd is None:
        attn_jsd = torch.zeros((), dtype=torch.float32, device=reverse_kl.device)
    return DistillTerms(total=total, grpo=grpo_terms, reverse_kl=reverse_kl, attn_jsd=attn_jsd)
