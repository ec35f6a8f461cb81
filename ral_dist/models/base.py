"""The adapter interface every VLM family implements, and the batch it produces.

An adapter knows one family's quirks: how to build a tiny random model, load a checkpoint, turn
(image or video frames, question) into model inputs with its chat template, and where the visual and question
tokens sit. Everything downstream (rollout, learner, rewards, capture) works on `PromptBatch` and never on
family details.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from PIL import Image
from torch import nn


@dataclass
class VisualPrompt:
    """One prompt: an image (one frame) or a video (several frames), and the question asked about it."""

    frames: list[Image.Image]
    question: str  # the question's text: its tokens are the question tokens (the consistency reward's rows)
    kind: Literal["image", "video"] = "image"
    text: str | None = None  # the whole user turn, containing the question (a template's output); None: the question
    system: str | None = None
    fps: float | None = None  # frames per second a video was sampled at (Qwen's mrope times its frames); None: unknown

    @property
    def user_text(self) -> str:
        return self.question if self.text is None else self.text


@dataclass
class PromptBatch:
    """Left-padded prompts ready for `generate` or a forward pass.

    ``inputs`` are the model's keyword arguments. Positions are indices into ``inputs["input_ids"]`` (after
    padding): ``visual_positions[b]`` the visual tokens of sample b in order (t, row, col), and
    ``question_positions[b]`` the question's text tokens. ``visual_grids[b]`` is the (t, rows, cols) grid of
    those visual tokens, used to map ground-truth regions onto them.
    """

    inputs: dict[str, torch.Tensor]
    visual_positions: list[torch.Tensor]
    question_positions: list[torch.Tensor]
    visual_grids: list[tuple[int, int, int]]
    prompt_texts: list[str] = field(default_factory=list)
    frame_counts: list[int] = field(default_factory=list)  # frames of each prompt as the model saw them

    @property
    def prompt_len(self) -> int:
        return int(self.inputs["input_ids"].shape[1])


# Keys of model inputs that carry one value per token and so grow when a response is appended.
PER_TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")


def append_response(inputs: dict[str, torch.Tensor], response_ids: torch.Tensor, response_mask: torch.Tensor,
                    pad_token_id: int) -> dict[str, torch.Tensor]:
    """Inputs for a forward pass over prompt + response (responses right-padded after left-padded prompts)."""
    out = dict(inputs)
    ids = torch.where(response_mask.bool(), response_ids, torch.full_like(response_ids, pad_token_id))
    out["input_ids"] = torch.cat([inputs["input_ids"], ids], dim=1)
    out["attention_mask"] = torch.cat([inputs["attention_mask"], response_mask.to(inputs["attention_mask"].dtype)], 1)
    if "mm_token_type_ids" in inputs:
        zeros = torch.zeros_like(response_ids, dtype=inputs["mm_token_type_ids"].dtype)
        out["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], zeros], dim=1)
    return out


class VLMAdapter(ABC):
    """One VLM family."""

    family: str

    @abstractmethod
    def tiny_config(self, processor, **overrides):
        """A small config of this family (head_dim >= 32 so that vLLM accepts it)."""

    @abstractmethod
    def build_processor(self, **overrides):
        """The family's processor built locally (tokenizer trained here, image processor without torchvision)."""

    @abstractmethod
    def load_processor(self, path: str | Path):
        """The processor saved beside a checkpoint."""

    @abstractmethod
    def model_class(self) -> type[nn.Module]:
        """The transformers class of this family's conditional-generation model."""

    @abstractmethod
    def encode(self, processor, prompts: list[VisualPrompt]) -> PromptBatch:
        """Tokenise prompts with the chat template, process pixels, left-pad, locate visual/question tokens."""

    @abstractmethod
    def language_layers(self, model: nn.Module) -> nn.ModuleList:
        """The decoder layers of the language model (the capture uses the last one's ``self_attn``)."""

    def build_tiny(self, seed: int = 0, attn_implementation: str = "sdpa", **overrides):
        """A random tiny model and its processor, for tests and the embedded default."""
        processor = self.build_processor()
        config = self.tiny_config(processor, **overrides)
        config._attn_implementation = attn_implementation
        torch.manual_seed(seed)
        model = self.model_class()(config)
        model.eval()
        return model, processor

    def load(self, path: str | Path, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa"):
        """A checkpoint saved with ``save_pretrained`` (safetensors only) and its processor."""
        model, info = self.model_class().from_pretrained(
            str(path), dtype=dtype, attn_implementation=attn_implementation, use_safetensors=True,
            output_loading_info=True,
        )
        # transformers only notes a mismatch and re-initialises those weights; a checkpoint must fit exactly.
        problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        if problems:
            detail = "; ".join(f"{k}: {sorted(map(str, v))[:5]}" for k, v in problems.items())
            raise ValueError(f"checkpoint {path} does not match its {self.family} model ({detail})")
        model.eval()
        return model, self.load_processor(path)

    def position_ids(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The position ids a forward over ``inputs`` (from position 0, no cache) uses, for a forward split into
        passes (`ral_dist.models.prompt_sharing`); None: the model's default in every pass (0, 1, 2, ... counted
        on from the cache's length), as for a Llama text tower."""
        return None

    def temporal_patch(self, processor) -> int:
        """Frames per visual token-frame (Qwen-VL merges frame pairs; a family that encodes frames one by one: 1)."""
        return getattr(processor.image_processor, "temporal_patch_size", 1)

    def eos_token_ids(self, processor) -> list[int]:
        return [processor.tokenizer.eos_token_id]

    # Tokens that only the processor may place (image/video placeholders and their brackets): a sampled one
    # would make the next forward's visual-token count disagree with the pixels.
    visual_special_tokens: tuple[str, ...] = ()

    def banned_token_ids(self, processor) -> list[int]:
        return [processor.tokenizer.convert_tokens_to_ids(t) for t in self.visual_special_tokens]
