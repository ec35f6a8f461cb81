"""Token-level GRPO terms: PPO clipped surrogate, k3 KL (RAL.md §2), and truncated importance sampling (TIS)."""

from __future__ import annotations

import torch
from torch import Tensor

from ral_dist.algorithms.aggregation import (
    AggMode,
    Denominators,
    aggregate_tokens,
    broadcast_advantages,
    masked_mean,
)

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
    token_weights: Tensor | None = None,
    denominators: Denominators | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """PPO clipped policy loss (to minimise): -min(ratio*A, clip(ratio, 1-eps, 1+eps)*A), aggregated.

    logp, old_logp, mask: [B, T]; advantages: [B] (one per sequence) or [B, T]. old_logp is detached.
    token_weights [B, T], optional: each token's term is multiplied by it (detached), e.g. `tis_weights`.
    Returns (loss scalar, stats) with stats clip_fraction (share of valid tokens where the clipped branch is
    the active one) and ratio_mean (mean ratio over valid tokens), both over ``denominators.tokens`` when given.
    """
    log_ratio = (logp.float() - old_logp.detach().float()).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)
    adv = broadcast_advantages(advantages, ratio)
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * adv
    per_token = -torch.minimum(unclipped, clipped)
    if token_weights is not None:
        per_token = per_token * token_weights.detach().float()
    loss = aggregate_tokens(per_token, mask, mode, denominators)
    with torch.no_grad():
        stats = {
            "clip_fraction": aggregate_tokens((clipped < unclipped).float(), mask, "token_mean", denominators).item(),
            "ratio_mean": aggregate_tokens(ratio, mask, "token_mean", denominators).item(),
        }
    return loss, stats


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 ("low variance") estimate of KL(pi_theta || pi_ref): exp(d) - d - 1, d = ref - logp.

    logp, ref_logp: same shape; returns that shape, fp32, >= 0. d is clamped to +-20 (see _MAX_LOG_RATIO).
    """
    d = (ref_logp.float() - logp.float()).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    return torch.exp(d) - d - 1.0


def tis_weights(old_logp: Tensor, rollout_logp: Tensor, mask: Tensor, cap: float) -> tuple[Tensor, dict[str, float]]:
    """Truncated importance-sampling weights w = min(pi_learner_old / pi_rollout, cap) of the sampled tokens.

    Yao et al. 2025 ("Your efficient RL framework secretly brings you off-policy RL training"), as veRL's
    ``tis_imp_ratio_cap`` / ``rollout_is_mode: truncate`` at token level: the PPO ratio keeps the learner's own old
    log-probs, and each token's clipped-surrogate term is multiplied by w, which corrects for the rollout engine
    sampling from a (numerically) different distribution. Upper truncation only, no lower bound, no masking.

    old_logp (the learner's recomputation), rollout_logp (the engine's), mask: [B, T]. Returns (w [B, T] fp32,
    detached, 1 on invalid entries; stats over valid tokens: tis_weight_mean (of w), tis_ratio_max (of the
    untruncated ratio) and tis_truncated_fraction (share with ratio > cap)).
    """
    keep = mask.bool()
    log_ratio = (old_logp.detach().float() - rollout_logp.detach().float()).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    ratio = torch.where(keep, torch.exp(log_ratio), torch.ones_like(log_ratio))
    w = ratio.clamp(max=cap)
    stats = {
        "tis_weight_mean": masked_mean(w, keep).item(),
        "tis_ratio_max": float(ratio[keep].max()) if keep.any() else 1.0,
        "tis_truncated_fraction": masked_mean((ratio > cap).float(), keep).item(),
    }
    return w, stats
