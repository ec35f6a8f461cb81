"""Jensen-Shannon divergence between distributions with explicit zeros (RAL.md §3)."""

from __future__ import annotations

import torch
from torch import Tensor


def _kl_to(p: Tensor, m: Tensor, eps: float, dim: int) -> Tensor:
    """sum p * (log p - log m) with both logs clamped at eps; entries with p = 0 contribute exactly 0."""
    return (p * (torch.log(p.clamp(min=eps)) - torch.log(m.clamp(min=eps)))).sum(dim=dim)


def jsd(p: Tensor, q: Tensor, eps: float = 1e-8, dim: int = -1) -> Tensor:
    """JSD(p || q) = ½ KL(p || m) + ½ KL(q || m), m = (p + q) / 2, natural log, fp32.

    p, q: same shape, probabilities along dim (zeros allowed, e.g. outside a row's support).
    Returns the shape with dim reduced; values in [0, ln 2].
    """
    p = p.float()
    q = q.float()
    m = 0.5 * (p + q)
    return 0.5 * _kl_to(p, m, eps, dim) + 0.5 * _kl_to(q, m, eps, dim)
