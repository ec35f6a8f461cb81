"""Qwen2.5-VL (the paper's family; Qwen2-VL goes through the same adapter).

transformers' Qwen-VL processors need torchvision, which cannot be installed beside the CPU torch used here, so
`QwenVLProcessor` does the same job with `Qwen2VLImageProcessorPil` for pixels and its own video patchify:
``<|image_pad|>`` / ``<|video_pad|>`` expand to ``grid_thw.prod() // merge_size**2`` tokens, pixels are flattened
in the official (t, h/m, w/m, m, m, C, tp, p, p) order, and ``mm_token_type_ids`` mark image (1) and video (2)
tokens for the 3-D RoPE.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil, smart_resize

from ral_dist.models.base import PromptBatch, VisualPrompt, VLMAdapter
from ral_dist.models.processing import left_pad, tokenize_with_question
from ral_dist.models.tokenizer import build_tokenizer

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|image_pad|>", "<|video_pad|>",
]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
DEFAULT_SYSTEM = "You are a helpful assistant."

# Qwen's mrope gives the t / h / w sections of a head contiguous blocks of rotary frequencies, w the lowest. With a
# tiny head (32 dims) and the usual theta 1e4 the w section turns by < 0.006 rad per position, so a 4 x 4 token grid
# is position-blind: the model can name the colours in a picture but not say which cell holds which (val accuracy
# 0.465, that chance). At theta 3 the slowest pair still turns 0.36 rad per position: 0.835 after the same SFT.
TINY_ROPE_THETA = 3.0


class QwenVLProcessor:
    """Tokenizer + PIL image processor + video patchify, producing what the official Qwen2.5-VL processor does."""

    image_token = "<|image_pad|>"
    video_token = "<|video_pad|>"

    def __init__(self, tokenizer: PreTrainedTokenizerFast, image_processor: Qwen2VLImageProcessorPil, fps: float = 1.0):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.fps = fps
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)

    @property
    def merge_size(self) -> int:
        return self.image_processor.merge_size

    def save_pretrained(self, path: str | Path) -> None:
        self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)
        (Path(path) / "ral_processor.json").write_text(json.dumps({"family": "qwen2_5_vl", "fps": self.fps}))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> QwenVLProcessor:
        meta_file = Path(path) / "ral_processor.json"
        fps = json.loads(meta_file.read_text()).get("fps", 1.0) if meta_file.exists() else 1.0
        return cls(PreTrainedTokenizerFast.from_pretrained(path), Qwen2VLImageProcessorPil.from_pretrained(path), fps)

    def _resized_hw(self, height: int, width: int) -> tuple[int, int]:
        ip = self.image_processor
        return smart_resize(height, width, factor=ip.patch_size * ip.merge_size,
                            min_pixels=ip.size["shortest_edge"], max_pixels=ip.size["longest_edge"])

    def process_video(self, frames: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames → (pixel_values_videos [t*h*w, C*tp*p*p], video_grid_thw [1, 3]) in the official layout."""
        ip = self.image_processor
        h, w = self._resized_hw(frames[0].height, frames[0].width)
        arrays = []
        for frame in frames:
            frame = frame.convert("RGB")
            if (frame.height, frame.width) != (h, w):
                frame = frame.resize((w, h), Image.BICUBIC)
            x = np.asarray(frame, dtype=np.float32).transpose(2, 0, 1) * ip.rescale_factor
            mean = np.asarray(ip.image_mean, dtype=np.float32)[:, None, None]
            std = np.asarray(ip.image_std, dtype=np.float32)[:, None, None]
            arrays.append((x - mean) / std)
        video = torch.from_numpy(np.stack(arrays))  # [T, C, H, W]
        tp, p, m = ip.temporal_patch_size, ip.patch_size, ip.merge_size
        if pad := -video.shape[0] % tp:  # repeat the last frame, as the official processor does
            video = torch.cat([video, video[-1:].expand(pad, -1, -1, -1)])
        t, c = video.shape[0] // tp, video.shape[1]
        gh, gw = h // p, w // p
        patches = video.view(t, tp, c, gh // m, m, p, gw // m, m, p).permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
        return patches.reshape(t * gh * gw, c * tp * p * p), torch.tensor([[t, gh, gw]])


class QwenVLAdapter(VLMAdapter):
    family = "qwen2_5_vl"
    visual_special_tokens = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")

    def __init__(self, version: str = "2.5"):
        self.version = version
        self.family = "qwen2_5_vl" if version == "2.5" else "qwen2_vl"

    def model_class(self):
        return Qwen2_5_VLForConditionalGeneration if self.version == "2.5" else Qwen2VLForConditionalGeneration

    def build_processor(self, patch_size: int = 14, merge_size: int = 2, temporal_patch_size: int = 2,
                        max_pixels: int = 448 * 448) -> QwenVLProcessor:
        tok = build_tokenizer(SPECIAL_TOKENS, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                              chat_template=CHAT_TEMPLATE)
        ip = Qwen2VLImageProcessorPil(
            patch_size=patch_size, merge_size=merge_size, temporal_patch_size=temporal_patch_size,
            size={"shortest_edge": (patch_size * merge_size) ** 2, "longest_edge": max_pixels},
        )
        return QwenVLProcessor(tok, ip)

    def load_processor(self, path):
        return QwenVLProcessor.from_pretrained(path)

    def tiny_config(self, processor: QwenVLProcessor, **overrides):
        tok_ids = {t: processor.tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
        text = dict(vocab_size=len(processor.tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                    rope_parameters={"rope_type": "default", "rope_theta": TINY_ROPE_THETA, "mrope_section": [4, 6, 6]},
                    bos_token_id=tok_ids["<|endoftext|>"], eos_token_id=tok_ids["<|im_end|>"],
                    pad_token_id=tok_ids["<|endoftext|>"], tie_word_embeddings=False)
        text.update(overrides.pop("text", {}))
        if self.version == "2.5":
            vision = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, patch_size=14,
                          spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1])
            vision.update(overrides.pop("vision", {}))
            vision["out_hidden_size"] = text["hidden_size"]
        else:  # Qwen2-VL's vision config names its width embed_dim and its output width hidden_size
            vision = dict(depth=2, embed_dim=64, mlp_ratio=2, num_heads=2, patch_size=14, spatial_merge_size=2,
                          temporal_patch_size=2)
            vision.update(overrides.pop("vision", {}))
            vision["hidden_size"] = text["hidden_size"]
        config_class = Qwen2_5_VLConfig if self.version == "2.5" else Qwen2VLConfig
        return config_class(
            text_config=text, vision_config=vision,
            image_token_id=tok_ids["<|image_pad|>"], video_token_id=tok_ids["<|video_pad|>"],
            vision_start_token_id=tok_ids["<|vision_start|>"], vision_end_token_id=tok_ids["<|vision_end|>"],
            **overrides,
        )

    def language_layers(self, model):
        return model.model.language_model.layers

    def position_ids(self, model, inputs):
        """mrope's [3, B, T] positions of the whole sequence (visual tokens by time / row / column), as the model's
        forward computes them when given no cache."""
        keys = ("image_grid_thw", "video_grid_thw", "second_per_grid_ts", "attention_mask")
        positions, _ = model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                                  **{k: inputs[k] for k in keys if k in inputs})
        return positions

    def encode(self, processor: QwenVLProcessor, prompts: list[VisualPrompt]) -> PromptBatch:
        tok, m2 = processor.tokenizer, processor.merge_size**2
        id_lists, q_lists, pixel_values, image_grids, video_values, video_grids, grids = [], [], [], [], [], [], []
        texts = []
        for pr in prompts:
            if pr.kind == "video":
                values, grid = processor.process_video(pr.frames)
                video_values.append(values)
                video_grids.append(grid)
                pad_token = processor.video_token
            else:
                out = processor.image_processor([f.convert("RGB") for f in pr.frames[:1]], return_tensors="pt")
                values, grid = out["pixel_values"], out["image_grid_thw"]
                pixel_values.append(values)
                image_grids.append(grid)
                pad_token = processor.image_token
            t, gh, gw = (int(v) for v in grid[0])
            grids.append((t, gh // processor.merge_size, gw // processor.merge_size))
            messages = [
                {"role": "system", "content": pr.system or DEFAULT_SYSTEM},
                {"role": "user", "content": [{"type": pr.kind}, {"type": "text", "text": pr.user_text}]},
            ]
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            text = text.replace(pad_token, pad_token * (int(grid.prod()) // m2), 1)
            texts.append(text)
            ids, q_pos = tokenize_with_question(tok, text, pr.question)
            id_lists.append(ids)
            q_lists.append(q_pos)

        input_ids, attention_mask, offsets = left_pad(id_lists, tok.pad_token_id)
        is_image = input_ids == processor.image_token_id
        is_video = input_ids == processor.video_token_id
        inputs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "mm_token_type_ids": is_image.long() + 2 * is_video.long(),
        }
        if pixel_values:
            inputs["pixel_values"] = torch.cat(pixel_values)
            inputs["image_grid_thw"] = torch.cat(image_grids)
        if video_values:
            inputs["pixel_values_videos"] = torch.cat(video_values)
            inputs["video_grid_thw"] = torch.cat(video_grids)
            # seconds per temporal patch of each video, from the rate its frames were sampled at
            tp = processor.image_processor.temporal_patch_size
            inputs["second_per_grid_ts"] = torch.tensor([tp / (pr.fps or processor.fps) for pr in prompts
                                                         if pr.kind == "video"])
        visual = [torch.nonzero(is_image[b] | is_video[b]).flatten() for b in range(len(prompts))]
        question = [torch.tensor(q, dtype=torch.long) + off for q, off in zip(q_lists, offsets, strict=True)]
        return PromptBatch(inputs, visual, question, grids, texts, [len(pr.frames) for pr in prompts])
