"""From dataset samples to model inputs: prompts for generation and (prompt + target) batches for SFT."""

from __future__ import annotations

import torch

from ral_dist.data import Sample
from ral_dist.data.prompts import SYSTEM_PROMPT, Mode, format_instruction, target_text
from ral_dist.models import PromptBatch, VisualPrompt, VLMAdapter, append_response

IGNORE_INDEX = -100


def visual_prompt(sample: Sample, mode: Mode) -> VisualPrompt:
    return VisualPrompt(frames=sample.get_images(), question=sample.question, kind=sample.kind,
                        instruction=format_instruction(mode), system=SYSTEM_PROMPT)


def encode_prompts(adapter: VLMAdapter, processor, samples: list[Sample], mode: Mode) -> PromptBatch:
    return adapter.encode(processor, [visual_prompt(s, mode) for s in samples])


def tokenize_responses(processor, texts: list[str], add_eos: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded response ids (each ending with EOS) and their mask."""
    tok = processor.tokenizer
    ids = [tok(t, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if add_eos else []) for t in texts]
    width = max(len(i) for i in ids)
    out = torch.full((len(ids), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for b, seq in enumerate(ids):
        out[b, : len(seq)] = torch.tensor(seq)
        mask[b, : len(seq)] = 1
    return out, mask


def sft_batch(adapter: VLMAdapter, processor, samples: list[Sample], mode: Mode
              ) -> tuple[dict[str, torch.Tensor], torch.Tensor, PromptBatch]:
    """Model inputs over prompt + reference response, and labels that score only the response tokens."""
    prompts = encode_prompts(adapter, processor, samples, mode)
    resp, resp_mask = tokenize_responses(processor, [target_text(s, mode) for s in samples])
    inputs = append_response(prompts.inputs, resp, resp_mask, processor.tokenizer.pad_token_id)
    labels = torch.full_like(inputs["input_ids"], IGNORE_INDEX)
    labels[:, prompts.prompt_len:] = torch.where(resp_mask.bool(), resp, torch.full_like(resp, IGNORE_INDEX))
    return inputs, labels, prompts
