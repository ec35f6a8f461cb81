"""Token-level GRPO terms: PPO clipped surrogate and k3 KL (RAL.md §2)."""

from __future__ import annotations

import torch
from torch import Tensor

from ral_dist.algorithms.aggregation import AggMode, aggregate_tokens, broadcast_advantages, masked_mean

# Bound on |log-ratio| before exp: masked padding may hold garbage log-probs, and exp(huge) = inf would turn
# the zero gradient that torch.where sends to masked entries into 0 * inf = NaN.
_MAX_LOG_RATIO = 20.0


def clipped_surrogate(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    mode: AggMode = "token_mean",
) -> tuple[Tensor, dict[str, float]]:
    """PPO clipped policy loss (to minimise): -min(ratio*A, clip(ratio, 1-eps, 1+eps)*A), aggregated.

    logp, old_logp, mask: [B, T]; advantages: [B] (one per sequence) or [B, T]. old_logp is detached.
    Returns (loss scalar, stats) with stats clip_fraction (share of valid tokens where the clipped branch is
    the active one) and ratio_mean (mean ratio over valid tokens).
    """
    log_ratio = (logp.float() - old_logp.detach().float()).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)
    adv = broadcast_advantages(advantages, ratio)
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * adv
    loss = aggregate_tokens(-torch.minimum(unclipped, clipped), mask, mode)
    with torch.no_grad():
        stats = {
            "clip_fraction": masked_mean((clipped < unclipped).float(), mask).item(),
            "ratio_mean": masked_mean(ratio, mask).item(),
        }
    return loss, stats


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 ("low variance") estimate of KL(pi_theta || pi_ref): exp(d) - d - 1, d = ref - logp.

    logp, ref_logp: same shape; returns that shape, fp32, >= 0. d is clamped to +-20 (see _MAX_LOG_RATIO).
    """
    d = (ref_logp.float() - logp.float()).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    return torch.exp(d) - d - 1.0
