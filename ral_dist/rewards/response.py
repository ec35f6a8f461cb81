"""What a reward term reads of one response: its text, the behaviour policy's attention rows, and where the visual,
question and answer tokens sit. Positions index the columns of the attention rows."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from ral_dist.data import Sample, on_target_mass, region_token_mask, target_fraction
from ral_dist.rewards.answer_span import answer_token_mask


@dataclass
class ResponseView:
    sample: Sample  # the prompt's sample: ground-truth answer and regions
    text: str  # the decoded response
    response_ids: torch.Tensor  # [R] the response tokens, up to and including EOS (no padding)
    attention: torch.Tensor | None  # [R, K] fp32 attention policy rows of the response tokens (RAL.md §1); None:
    # not captured (nothing in the run consumes them)
    question_attention: torch.Tensor | None  # [Q, K'] rows of the question's tokens, same layers (K' <= K)
    visual_positions: torch.Tensor  # [V] columns of the visual tokens, order (t, row, col)
    visual_grid: tuple[int, int, int]  # (t, rows, cols) of those visual tokens
    temporal_patch: int  # frames per visual token-frame
    n_frames: int  # frames the model saw (the regions' frame indices index them)
    tokenizer: Any
    mode: str  # prompt mode: think | answer_only

    @property
    def problem_type(self) -> str:
        """The sample's problem type: which `reward.task: video_r1` rule scores it."""
        return self.sample.problem_type

    @cached_property
    def answer_rows(self) -> torch.Tensor:
        """[R] bool: the tokens of the last <answer> content (the whole response when there is none)."""
        return answer_token_mask(self.tokenizer, self.response_ids, torch.ones_like(self.response_ids))

    def grounding(self) -> dict[str, float]:
        """attention_on_target: the answer rows' visual attention mass inside the ground-truth regions (over the
        rows' visual mass); target_fraction: its value under uniform attention (chance). NaN without regions (or
        rows)."""
        if not self.sample.regions or self.attention is None:
            return {"attention_on_target": math.nan, "target_fraction": math.nan}
        region = region_token_mask(self.sample.regions, self.n_frames, self.sample.frame_hw, self.visual_grid,
                                   self.temporal_patch)
        visual = self.attention[self.answer_rows][:, self.visual_positions]
        return {"attention_on_target": on_target_mass(visual, region), "target_fraction": target_fraction(region)}
