"""A dataset sample as the prompt every adapter encodes: its frames, its question and the answer-format instruction."""

from __future__ import annotations

from ral_dist.data import Sample
from ral_dist.data.prompts import SYSTEM_PROMPT, Mode, format_instruction
from ral_dist.models.base import VisualPrompt


def visual_prompt(sample: Sample, mode: Mode) -> VisualPrompt:
    return VisualPrompt(frames=sample.get_images(), question=sample.question, kind=sample.kind,
                        instruction=format_instruction(mode), system=SYSTEM_PROMPT)
