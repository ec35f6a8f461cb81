"""The learner's loss: GRPO + lambda_attn * L_attn (RAL.md §3). lambda_attn = 0 is plain GRPO."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ral_dist.algorithms.aggregation import AggMode, Denominators, aggregate_tokens
from ral_dist.algorithms.attention_loss import attention_jsd, ral_attention_loss
from ral_dist.algorithms.policy_loss import clipped_surrogate, k3_kl


@dataclass
class LossTerms:
    """Scalar loss tensors (each back-propagable on its own) plus float stats for logging.

    total = policy + beta * kl + lambda_attn * attn (the attn part is left out when lambda_attn == 0).
    attn_jsd_mean is the unweighted mean JSD(p_theta || p_old); 0.0 when no attention was given.
    """

    total: Tensor
    policy: Tensor
    kl: Tensor
    attn: Tensor
    clip_fraction: float
    ratio_mean: float
    kl_mean: float
    attn_jsd_mean: float


def ral_loss(
    logp: Tensor,
    old_logp: Tensor,
    ref_logp: Tensor | None,
    token_mask: Tensor,
    advantages: Tensor,
    p_theta: Tensor | None,
    p_old: Tensor | None,
    row_mask: Tensor | None,
    *,
    clip_eps: float = 0.2,
    beta: float = 0.04,
    lambda_attn: float = 1.0,
    mode: AggMode = "token_mean",
    token_weights: Tensor | None = None,
    denominators: Denominators | None = None,
) -> LossTerms:
    """Compute every term of the RAL loss.

    logp, old_logp, ref_logp, token_mask: [B, T]; advantages: [B] (broadcast to tokens and rows) or [B, T];
    p_theta, p_old: [B, R, K]; row_mask: [B, R]. ref_logp may be None when beta == 0; p_theta / p_old /
    row_mask may be None when lambda_attn == 0 (attn is then a 0 tensor). When the attention rows are
    given with lambda_attn == 0, attn is still computed for logging but never enters total, so total is
    exactly the GRPO loss. token_weights [B, T] (e.g. TIS weights) scale the policy-gradient term only, not
    the KL or attention terms. ``denominators``: this batch is a part of the one every mean is over (micro-batches
    and learner ranks; `Denominators`).
    """
    policy, stats = clipped_surrogate(logp, old_logp, advantages, token_mask, clip_eps, mode, token_weights,
                                      denominators)
    zero = torch.zeros((), dtype=torch.float32, device=logp.device)

    if ref_logp is not None:
        kl = aggregate_tokens(k3_kl(logp, ref_logp.detach()), token_mask, mode, denominators)
    elif beta == 0:
        kl = zero
    else:
        raise ValueError("ref_logp is required when beta != 0")

    have_attn = p_theta is not None and p_old is not None and row_mask is not None
    if have_attn:
        attn = ral_attention_loss(p_theta, p_old, row_mask, advantages, mode, denominators)
        with torch.no_grad():
            attn_jsd_mean = attention_jsd(p_theta, p_old, row_mask, mode, denominators).item()
    elif lambda_attn == 0:
        attn, attn_jsd_mean = zero, 0.0
    else:
        raise ValueError("p_theta, p_old and row_mask are required when lambda_attn != 0")

    total = policy + beta * kl
    if lambda_attn != 0:
        total = total + lambda_attn * attn
    return LossTerms(
        total=total,
        policy=policy,
        kl=kl,
        attn=attn,
        clip_fraction=stats["clip_fraction"],
        ratio_mean=stats["ratio_mean"],
        kl_mean=float(kl.detach().item()),
        attn_jsd_mean=attn_jsd_mean,
    )
