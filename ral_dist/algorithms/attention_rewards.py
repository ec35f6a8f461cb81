"""Attention reward terms (RAL.md §4), computed from the attention rows rollout workers emit."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ral_dist.algorithms.jsd import jsd
from ral_dist.algorithms.score import Score, never_raises


def _visual_distributions(
    rows: Tensor | None, visual_positions, row_mask: Tensor | None = None
) -> tuple[Tensor | None, str | None]:
    """q_t = p^t restricted to the visual positions V, renormalised: [R', |V|] for the valid rows that put
    some mass on V. Returns (q, None) or (None, reason)."""
    if rows is None or visual_positions is None:
        return None, "missing_attention"
    rows = torch.as_tensor(rows).detach().float().cpu()
    if rows.dim() != 2:
        return None, "bad_attention_shape"
    vis = torch.as_tensor(visual_positions).detach().long().cpu().reshape(-1).unique()
    if vis.numel() == 0:
        return None, "no_visual_tokens"
    if vis.min() < 0 or vis.max() >= rows.shape[1]:
        return None, "bad_visual_positions"
    if row_mask is not None:
        rows = rows[torch.as_tensor(row_mask).cpu().bool()]
    if rows.shape[0] == 0:
        return None, "no_rows"
    if not torch.isfinite(rows).all():
        return None, "nan_attention"
    visual = rows[:, vis].clamp(min=0.0)
    mass = visual.sum(dim=-1)
    has_mass = mass > 0
    if not has_mass.any():
        return None, "no_visual_mass"
    return visual[has_mass] / mass[has_mass].unsqueeze(-1), None


@never_raises
def sparsity(attn_rows: Tensor, visual_positions: Tensor, row_mask: Tensor | None = None) -> Score:
    """1 - mean_t H(q_t) / ln|V| in [0, 1]; 1 when each row looks at one visual token.

    attn_rows: [R, K] attention rows p^t; visual_positions: [|V|] column indices; row_mask: [R] or None.
    Rows with no visual mass are skipped.
    """
    q, reason = _visual_distributions(attn_rows, visual_positions, row_mask)
    if q is None:
        return Score(0.0, reason)
    if q.shape[1] < 2:
        return Score(0.0, "single_visual_token")
    entropy = -(q * torch.log(q.clamp(min=1e-12))).sum(dim=-1)
    value = 1.0 - entropy.mean().item() / math.log(q.shape[1])
    return Score(min(max(value, 0.0), 1.0), None)


@never_raises
def consistency(
    answer_rows: Tensor,
    question_rows: Tensor,
    visual_positions: Tensor,
    answer_mask: Tensor | None = None,
    question_mask: Tensor | None = None,
) -> Score:
    """1 - JSD(mean_t q_t over answer rows || mean_t q_t over question rows) / ln 2, in [0, 1].

    answer_rows: [Ra, K]; question_rows: [Rq, K] (same K, same layer); visual_positions: [|V|];
    masks: [Ra] / [Rq] or None.
    """
    q_answer, reason = _visual_distributions(answer_rows, visual_positions, answer_mask)
    if q_answer is None:
        return Score(0.0, reason)
    q_question, reason = _visual_distributions(question_rows, visual_positions, question_mask)
    if q_question is None:
        return Score(0.0, reason)
    divergence = jsd(q_answer.mean(dim=0), q_question.mean(dim=0)).item()
    value = 1.0 - divergence / math.log(2.0)
    return Score(min(max(value, 0.0), 1.0), None)
