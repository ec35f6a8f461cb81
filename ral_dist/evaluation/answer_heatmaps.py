"""The training run's heatmaps (``run.heatmap_every``): PNGs of fixed prompts' greedy answers, their answer tokens'
visual attention over the frames.

Drawn where the attention is: by the rollout worker's transformers model from its own greedy generation, or,
beside vLLM with ``rollout.attention_on`` learner (no transformers copy in the rollout worker), by the learner from
one forward over vLLM's greedy answers (`heatmaps_of_answers`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from ral_dist.config import DataConfig
from ral_dist.data import Sample
from ral_dist.evaluation.greedy import response_view
from ral_dist.evaluation.heatmaps import answer_heatmap_png
from ral_dist.models import VisualPrompt, VLMAdapter
from ral_dist.models.generation import Generation, forward_responses
from ral_dist.models.prompting import visual_prompt


def render(gen: Generation, samples: list[Sample], prompts: list[VisualPrompt], temporal_patch: int, tokenizer,
           mode: str) -> list[tuple[str, bytes]]:
    """(sample id, PNG) of each row of a generation with attention rows."""
    return [(s.id, answer_heatmap_png(response_view(gen, i, s, temporal_patch, tokenizer, mode), prompts[i].frames))
            for i, s in enumerate(samples)]


@torch.no_grad()
def generation_of_answers(adapter: VLMAdapter, model, processor, data: DataConfig, samples: list[Sample],
                          response_ids: torch.Tensor, response_mask: torch.Tensor,
                          device: torch.device, layers: Sequence[int] = (-1,)) -> tuple[Generation, list[VisualPrompt]]:
    """Given answers ([N, R] ids and mask, e.g. vLLM's greedy ones) as a `Generation` with ``model``'s attention
    rows: one forward with the capture (a sharded model gathers its parameters in it: every rank must call)."""
    prompts = [visual_prompt(s, data) for s in samples]
    batch = adapter.encode(processor, prompts)
    on_device = dataclasses.replace(batch, inputs={k: v.to(device) if torch.is_tensor(v) else v
                                                   for k, v in batch.inputs.items()})
    fwd = forward_responses(adapter, model, on_device, response_ids.to(device), response_mask.to(device),
                            processor.tokenizer.pad_token_id, banned=adapter.banned_token_ids(processor), capture=True,
                            capture_question=True, layers=layers)
    texts = processor.tokenizer.batch_decode(
        torch.where(response_mask.bool(), response_ids, processor.tokenizer.pad_token_id), skip_special_tokens=True)
    gen = Generation(batch, response_ids, response_mask, fwd.logprobs.cpu(), texts, fwd.attention.float().cpu(),
                     fwd.question_attention.float().cpu(), fwd.question_rows.cpu())
    return gen, prompts


def heatmaps_of_answers(adapter: VLMAdapter, model, processor, data: DataConfig, samples: list[Sample],
                        response_ids: torch.Tensor, response_mask: torch.Tensor,
                        device: torch.device, layers: Sequence[int] = (-1,)) -> list[tuple[str, bytes]]:
    """The heatmaps of given answers under ``model``'s attention (`generation_of_answers`: every rank must call)."""
    gen, prompts = generation_of_answers(adapter, model, processor, data, samples, response_ids, response_mask, device,
                                         layers)
    return render(gen, samples, prompts, adapter.temporal_patch(processor), processor.tokenizer, data.prompt.mode)
