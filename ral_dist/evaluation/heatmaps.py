"""Attention heatmaps over the image (PNG), drawn with Pillow only."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageDraw

from ral_dist.rewards import ResponseView


def save_heatmap(frames: list[Image.Image], visual_attention: torch.Tensor, grid: tuple[int, int, int],
                 temporal_patch: int, path: str | Path | BinaryIO, title: str = "") -> None:
    """Overlay the attention over visual tokens ([t*rows*cols]) on each token-frame; one row of panels."""
    t, rows, cols = grid
    attn = visual_attention.detach().float().reshape(t, rows, cols)
    attn = attn / attn.max().clamp_min(1e-12)
    panels = []
    for k in range(t):
        frame = frames[min(k * temporal_patch, len(frames) - 1)].convert("RGB")
        heat = (attn[k].numpy() * 255).astype(np.uint8)
        heat_img = Image.fromarray(heat, mode="L").resize(frame.size, Image.NEAREST)
        red = Image.new("RGB", frame.size, (255, 0, 0))
        panels.append(Image.composite(red, frame, heat_img.point(lambda v: int(v * 0.6))))
    w, h = panels[0].size
    canvas = Image.new("RGB", (w * len(panels), h + 14), "white")
    for k, panel in enumerate(panels):
        canvas.paste(panel, (k * w, 14))
    ImageDraw.Draw(canvas).text((2, 1), title[:120], fill="black")
    if isinstance(path, (str, Path)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG")


def answer_heatmap(view: ResponseView, frames: list[Image.Image], path: str | Path | BinaryIO) -> None:
    """The answer tokens' mean visual attention over the frames the model saw, titled with question, response and
    ground truth."""
    visual = view.attention[view.answer_rows][:, view.visual_positions].mean(0)
    s = view.sample
    save_heatmap(frames, visual, view.visual_grid, view.temporal_patch, path,
                 title=f"{s.question} -> {view.text!r} (gt {s.answer})")
