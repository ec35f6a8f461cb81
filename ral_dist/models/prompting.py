"""A dataset sample as the prompt every adapter encodes: its frames (decoded here, where the prompt is used, by the
``data.video`` / ``data.image`` budgets), the user turn of the ``data.prompt`` template, and its question."""

from __future__ import annotations

from ral_dist.data.data_config import DataConfig
from ral_dist.data.media import load_frames
from ral_dist.data.prompts import question_span, user_text
from ral_dist.data.sample import Sample
from ral_dist.models.base import VisualPrompt


def visual_prompt(sample: Sample, data: DataConfig) -> VisualPrompt:
    frames = load_frames(sample, data.media)
    return VisualPrompt(frames=frames.images, question=question_span(sample), kind=sample.kind,
                        text=user_text(sample, data.prompt), system=data.prompt.system, fps=frames.fps)
