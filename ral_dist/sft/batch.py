"""SFT batches: prompt + reference response, with labels that score only the response tokens."""

from __future__ import annotations

import torch

from ral_dist.data import Sample
from ral_dist.data.data_config import DataConfig
from ral_dist.data.prompts import target_text
from ral_dist.models import VLMAdapter, append_response
from ral_dist.models.prompting import visual_prompt

IGNORE_INDEX = -100


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


def sft_batch(adapter: VLMAdapter, processor, samples: list[Sample], data: DataConfig):
    """(model inputs over prompt + reference response, labels, the prompts' PromptBatch)."""
    prompts = adapter.encode(processor, [visual_prompt(s, data) for s in samples])
    resp, resp_mask = tokenize_responses(processor, [target_text(s, data.prompt.mode) for s in samples])
    inputs = append_response(prompts.inputs, resp, resp_mask, processor.tokenizer.pad_token_id)
    labels = torch.full_like(inputs["input_ids"], IGNORE_INDEX)
    labels[:, prompts.prompt_len:] = torch.where(resp_mask.bool(), resp, torch.full_like(resp, IGNORE_INDEX))
    return inputs, labels, prompts
