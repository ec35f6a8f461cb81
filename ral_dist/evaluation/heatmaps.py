"""Attention heatmaps a person can read (PNG, matplotlib): the frames the model saw at a readable size, the answer
tokens' attention over the visual tokens as a colour-mapped overlay with a colour bar, the ground-truth regions
outlined, and the question, the model's answer and the ground truth in full under them. A video is a row of its
token-frames (the first frame of each temporal patch, at most ``MAX_PANELS``).

Drawn on a bare `Figure` with the Agg canvas: no pyplot state, so rollout workers, learners and the report can draw
in any thread.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from ral_dist.rewards import ResponseView

PANEL_IN = 3.0  # inches per frame panel
DPI = 100
MAX_PANELS = 8
CMAP = "inferno"
TEXT_PT = 9


def _boxes(regions: Sequence[Sequence[int]], frames: range, scale: tuple[float, float]) -> list[tuple[float, ...]]:
    """(x, y, w, h) of the ground-truth boxes on any frame of ``frames``, in the shown frame's pixels."""
    sx, sy = scale
    return [(x0 * sx, y0 * sy, (x1 - x0) * sx, (y1 - y0) * sy)
            for f, x0, y0, x1, y1 in (tuple(int(v) for v in r) for r in regions) if f in frames and x1 > x0]


def _caption(question: str, response: str, truth: str, width_in: float) -> str:
    chars = max(40, int(width_in * 72 / (TEXT_PT * 0.55)))  # a 9 pt glyph is about 5 pt wide
    lines = []
    for label, text in (("Question", question), ("Model", response), ("Ground truth", truth)):
        lines += textwrap.wrap(f"{label}: {' '.join(text.split()) or '(empty)'}", chars) or [f"{label}:"]
    return "\n".join(lines)


def _layout(t: int) -> tuple[int, int]:
    """(rows, columns) of panels: an image beside its overlay; a video's frames above their overlays."""
    return (1, 2) if t == 1 else (2, min(t, MAX_PANELS))


def heatmap_figure(frames: list[Image.Image], visual_attention: torch.Tensor, grid: tuple[int, int, int],
                   temporal_patch: int, question: str, response: str, truth: str,
                   regions: Sequence[Sequence[int]] = (), frame_hw: tuple[int, int] | None = None) -> Figure:
    """The figure of one answer: ``visual_attention`` [t*rows*cols] over the visual tokens (any scale; shown as each
    token's share of the answer's visual attention) overlaid on a grey copy of each frame beside (video: under) the
    frame as the model saw it; ``regions`` boxes [frame, x0, y0, x1, y1] in pixels of frames of size ``frame_hw``
    (height, width; default: the frames' own)."""
    t, rows, cols = (int(v) for v in grid)
    attn = visual_attention.detach().double().reshape(t, rows, cols).numpy()
    attn = attn / max(float(attn.sum()), 1e-12)
    n_rows, n_cols = _layout(t)
    width = PANEL_IN * n_cols + 1.6
    caption = _caption(question, response, truth, width - 0.4)
    text_h = (caption.count("\n") + 1) * TEXT_PT * 1.45 / 72 + 0.3
    height = PANEL_IN * n_rows + 0.6 + text_h
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    top, bottom = 1 - 0.45 / height, (text_h + 0.1) / height
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    fig.subplots_adjust(left=0.2 / width, right=1 - 1.4 / width, top=top, bottom=bottom, wspace=0.05, hspace=0.12)
    vmax = float(attn.max()) or 1.0
    for j in range(n_cols):
        k = 0 if t == 1 else j
        frame = frames[min(k * temporal_patch, len(frames) - 1)].convert("RGB")
        w, h = frame.size
        raw_ax, heat_ax = (axes[0, 0], axes[0, 1]) if t == 1 else (axes[0, j], axes[1, j])
        raw_ax.imshow(np.asarray(frame), extent=(0, w, h, 0), interpolation="nearest")
        heat_ax.imshow(np.asarray(frame.convert("L")), extent=(0, w, h, 0), cmap="gray", interpolation="nearest")
        image = heat_ax.imshow(attn[k], extent=(0, w, h, 0), cmap=CMAP, alpha=0.6, vmin=0, vmax=vmax,
                               interpolation="nearest")
        fh, fw = frame_hw or (h, w)
        for ax in (raw_ax, heat_ax):
            for x, y, bw, bh in _boxes(regions, range(k * temporal_patch, (k + 1) * temporal_patch), (w / fw, h / fh)):
                ax.add_patch(Rectangle((x, y), bw, bh, fill=False, edgecolor="#00e676", linewidth=2.5))
            ax.set_xticks([])
            ax.set_yticks([])
        first, last = k * temporal_patch + 1, min((k + 1) * temporal_patch, len(frames))
        span = f"frame {first}" if first == last else f"frames {first}-{last}"
        raw_ax.set_title("what the model saw" if t == 1 else f"{span} of {len(frames)}", fontsize=9)
        if t == 1:
            heat_ax.set_title("answer tokens' attention", fontsize=9)
        if t == 1:
            break
    if t > 1:
        axes[1, 0].set_ylabel("answer tokens' attention", fontsize=9)
    cax = fig.add_axes((1 - 1.15 / width, bottom, 0.15 / width, top - bottom))
    fig.colorbar(image, cax=cax).set_label("share of the answer's visual attention", fontsize=8)
    if regions:
        fig.text(0.2 / width, 1 - 0.06 / height, "green box: ground-truth region", fontsize=8, va="top",
                 color="#00a152")
    fig.text(0.2 / width, (text_h - 0.05) / height, caption, fontsize=TEXT_PT, va="top")
    return fig


def save_figure(fig: Figure, path: str | Path | BinaryIO) -> None:
    if isinstance(path, (str, Path)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI)


def answer_heatmap(view: ResponseView, frames: list[Image.Image], path: str | Path | BinaryIO) -> None:
    """The answer tokens' mean visual attention over the frames the model saw, with question, response, ground
    truth and the sample's regions."""
    visual = view.attention[view.answer_rows][:, view.visual_positions].mean(0)
    s = view.sample
    fig = heatmap_figure(frames, visual, view.visual_grid, view.temporal_patch, s.question, view.text, s.answer,
                         s.regions, s.frame_hw)
    save_figure(fig, path)


def answer_heatmap_png(view: ResponseView, frames: list[Image.Image]) -> bytes:
    buf = io.BytesIO()
    answer_heatmap(view, frames, buf)
    return buf.getvalue()
