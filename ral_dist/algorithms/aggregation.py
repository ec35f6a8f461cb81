"""Masked reductions shared by every loss term."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

AggMode = Literal["token_mean", "seq_mean"]


@dataclass(frozen=True)
class Denominators:
    """What a part of a batch divides its sums by, so that the parts' values add up to the whole batch's mean:
    the batch's valid tokens (token_mean) and sequences with a valid token (seq_mean). A learner that splits a
    mini-batch over micro-batches and ranks passes the mini-batch's counts over all ranks divided by the number of
    ranks (DeepSpeed averages the ranks' gradients)."""

    tokens: float
    sequences: float


def _masked(values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Zero the invalid entries with where (not multiply), so NaN/inf padding cannot leak in."""
    keep = mask.bool()
    values = values.float()
    return torch.where(keep, values, torch.zeros_like(values)), keep.float()


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """num / den, 0 where den == 0 (num is 0 there too); no NaN in forward or backward."""
    return num / torch.where(den > 0, den, torch.ones_like(den))


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of values where mask is true, over all entries (dim=None) or along dim.

    values, mask: same (broadcastable) shape; mask is read as boolean. An empty selection gives 0.
    """
    v, m = _masked(values, mask)
    v, m = torch.broadcast_tensors(v, m)
    if dim is None:
        return _safe_div(v.sum(), m.sum())
    return _safe_div(v.sum(dim=dim), m.sum(dim=dim))


def aggregate_tokens(values: Tensor, mask: Tensor, mode: AggMode = "token_mean",
                     denominators: Denominators | None = None) -> Tensor:
    """Reduce per-token values [B, T] to a scalar.

    token_mean: sum over valid tokens / number of valid tokens in the batch.
    seq_mean: mean over sequences of each sequence's token mean; sequences with no valid token are excluded.
    No valid token at all gives 0. With ``denominators`` the sums are divided by those counts instead of this
    batch's own (this batch is a part of the one the mean is over).
    """
    if mode == "token_mean":
        if denominators is None:
            return masked_mean(values, mask)
        return _masked(values, mask)[0].sum() / denominators.tokens
    if mode == "seq_mean":
        per_seq = masked_mean(values, mask, dim=-1)
        has_tokens = mask.bool().any(dim=-1)
        if denominators is None:
            return masked_mean(per_seq, has_tokens)
        return _masked(per_seq, has_tokens)[0].sum() / denominators.sequences
    raise ValueError(f"unknown aggregation mode {mode!r}")


def broadcast_advantages(advantages: Tensor, like: Tensor) -> Tensor:
    """Detached fp32 advantages [B] (one per sequence) or [B, T] broadcast to like's shape [B, T]."""
    adv = advantages.detach().float()
    if adv.dim() == 1:
        adv = adv.unsqueeze(-1)
    return adv.expand_as(like)
