"""Attention-policy losses: the RAL term (RAL.md §3) and attention distillation (§5)."""

from __future__ import annotations

from torch import Tensor

from ral_dist.algorithms.aggregation import AggMode, Denominators, aggregate_tokens, broadcast_advantages
from ral_dist.algorithms.jsd import jsd


def row_jsd(p: Tensor, target: Tensor) -> Tensor:
    """Per-row JSD(p || stopgrad(target)). p, target: [B, R, K] -> [B, R]."""
    return jsd(p, target.detach(), dim=-1)


def ral_attention_loss(
    p_theta: Tensor,
    p_old: Tensor,
    row_mask: Tensor,
    advantages: Tensor,
    mode: AggMode = "token_mean",
    denominators: Denominators | None = None,
) -> Tensor:
    """L_attn = aggregate over valid rows of A * JSD(p_theta || stopgrad(p_old)).

    p_theta, p_old: [B, R, K] attention rows (zeros outside each row's support); row_mask: [B, R];
    advantages: [B] or [B, R]. Minimising it pulls p_theta toward p_old where A > 0, away where A < 0.
    """
    d = row_jsd(p_theta, p_old)
    return aggregate_tokens(broadcast_advantages(advantages, d) * d, row_mask, mode, denominators)


def attention_jsd(
    p_student: Tensor,
    p_target: Tensor,
    row_mask: Tensor,
    mode: AggMode = "token_mean",
    denominators: Denominators | None = None,
) -> Tensor:
    """Mean over valid rows of JSD(p_student || stopgrad(p_target)), no advantage. Shapes as above."""
    return aggregate_tokens(row_jsd(p_student, p_target), row_mask, mode, denominators)
