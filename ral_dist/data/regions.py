"""Ground-truth regions → visual-token masks, and the "attention on target" metric."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def _edges(length: int, n: int) -> list[int]:
    """Split ``length`` pixels evenly into ``n`` spans: span i is [e[i], e[i+1])."""
    return [i * length // n for i in range(n + 1)]


def region_token_mask(
    regions: Sequence[Sequence[int]],
    n_frames: int,
    frame_hw: tuple[int, int],
    grid_thw: tuple[int, int, int],
    temporal_patch: int = 1,
) -> torch.Tensor:
    """Boolean mask over the model's visual tokens, ``True`` where a token overlaps a ground-truth region.

    ``regions``: boxes ``[frame, x0, y0, x1, y1]`` in pixels of the original frame (x1/y1 exclusive).
    ``frame_hw``: (height, width) of the original frames; a uniform resize by the processor does not matter,
    since each token covers a fixed fraction of the frame. ``grid_thw = (t, rows, cols)``: the grid of visual
    tokens after any patch merge, ordered row-major (t, row, col). Token (k, r, c) covers frames
    ``k*tp .. k*tp+tp-1`` (indices past the last frame repeat the last frame, as Qwen pads) and the rectangle
    row r / col c of the frame divided evenly. A token is on target when its rectangle overlaps any box of any
    of its frames by at least one pixel. Returns ``BoolTensor[t * rows * cols]``.
    """
    t, rows, cols = (int(v) for v in grid_thw)
    tp = int(temporal_patch)
    if tp < 1 or n_frames < 1 or rows < 1 or cols < 1:
        raise ValueError("temporal_patch, n_frames, rows and cols must be >= 1")
    if t != math.ceil(n_frames / tp):
        raise ValueError(f"grid t={t} does not match ceil(n_frames={n_frames} / temporal_patch={tp})")
    h, w = (int(v) for v in frame_hw)
    ye, xe = _edges(h, rows), _edges(w, cols)
    mask = torch.zeros(t, rows, cols, dtype=torch.bool)
    for reg in regions:
        if len(reg) != 5:
            raise ValueError(f"region must be [frame, x0, y0, x1, y1], got {reg}")
        f, x0, y0, x1, y1 = (int(v) for v in reg)
        if not 0 <= f < n_frames:
            raise ValueError(f"region frame {f} outside 0..{n_frames - 1}")
        if x1 <= x0 or y1 <= y0:
            continue
        r_hit = [r for r in range(rows) if max(y0, ye[r]) < min(y1, ye[r + 1])]
        c_hit = [c for c in range(cols) if max(x0, xe[c]) < min(x1, xe[c + 1])]
        if not r_hit or not c_hit:
            continue
        # token-frames that see frame f: those covering index f, plus (for the last frame) padded indices
        ks = {f // tp}
        if f == n_frames - 1:
            ks.update(range(f // tp, t))
        for k in ks:
            mask[k, r_hit[0]:r_hit[-1] + 1, c_hit[0]:c_hit[-1] + 1] = True
    return mask.reshape(-1)


def on_target_mass(visual_attn: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean over rows of (attention mass on masked visual tokens) / (row's total visual mass).

    ``visual_attn``: ``[R, n_visual]`` (or ``[n_visual]``) non-negative attention restricted to the visual
    tokens; ``mask``: ``BoolTensor[n_visual]``. Rows with zero visual mass are skipped; returns NaN when every
    row is skipped. Compare with :func:`target_fraction` (the value for uniform attention).
    """
    a = visual_attn.detach().to(torch.float64)
    if a.dim() == 1:
        a = a.unsqueeze(0)
    m = mask.to(torch.bool).reshape(-1)
    if a.shape[-1] != m.numel():
        raise ValueError(f"attention has {a.shape[-1]} visual columns but the mask has {m.numel()}")
    total = a.sum(-1)
    inside = a[:, m].sum(-1)
    keep = total > 0
    if not bool(keep.any()):
        return float("nan")
    return float((inside[keep] / total[keep]).mean())


def target_fraction(mask: torch.Tensor) -> float:
    """Fraction of visual tokens on target: the on-target mass of uniform attention (the chance level)."""
    m = mask.reshape(-1)
    return float(m.float().mean()) if m.numel() else float("nan")
