"""Trajectories ↔ padded batches: the rollout side unpads what it generated, the learner side re-pads.

Attention rows travel without padding (keys = the unpadded prompt then the response), so the learner can
batch any subset of trajectories in its own layout and still compare p_theta with p_old key by key.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ral_dist.generation import Generation
from ral_dist.messages import Trajectory
from ral_dist.models import PromptBatch, VLMAdapter
from ral_dist.prompting import visual_prompt


def trajectories_from_generation(gen: Generation, samples: list, groups: list[int], version: int,
                                 temporal_patch: int, max_new_tokens: int,
                                 wire_dtype: torch.dtype = torch.float16) -> list[Trajectory]:
    """Split a padded generation (rows prompt-major, G per prompt) into unpadded trajectories."""
    P = gen.prompts.prompt_len
    prompt_mask = gen.prompts.inputs["attention_mask"]
    out = []
    for i in range(gen.response_ids.shape[0]):
        off = int(P - prompt_mask[i].sum())
        n = int(gen.response_mask[i].sum())
        q_pos = gen.prompts.question_positions[i]
        q_valid = gen.question_rows[i] >= 0
        out.append(Trajectory(
            sample=samples[i], group=groups[i], policy_version=version, prompt_len=P - off,
            response_ids=gen.response_ids[i, :n].clone(), old_logprobs=gen.logprobs[i, :n].float().clone(),
            attention=gen.attention[i, :n, off : P + n].to(wire_dtype).clone(),
            question_attention=gen.question_attention[i][q_valid][:, off:P].to(wire_dtype).clone(),
            visual_positions=gen.prompts.visual_positions[i] - off, question_positions=q_pos - off,
            visual_grid=gen.prompts.visual_grids[i], temporal_patch=temporal_patch, text=gen.texts[i],
            truncated=n == max_new_tokens and n == gen.response_ids.shape[1],
        ))
    return out


@dataclass
class LearnerBatch:
    prompts: PromptBatch
    response_ids: torch.Tensor  # [B, R]
    response_mask: torch.Tensor  # [B, R]
    old_logprobs: torch.Tensor  # [B, R]
    p_old: torch.Tensor  # [B, R, P + R] fp32, in this batch's layout
    advantages: torch.Tensor  # [B]


def learner_batch(adapter: VLMAdapter, processor, trajectories: list[Trajectory], mode: str) -> LearnerBatch:
    """Re-encode the prompts and lay the trajectories' responses and p_old rows out in that padding."""
    prompts = adapter.encode(processor, [visual_prompt(t.sample, mode) for t in trajectories])
    P = prompts.prompt_len
    lengths = prompts.inputs["attention_mask"].sum(1).tolist()
    R = max(len(t.response_ids) for t in trajectories)
    B = len(trajectories)
    pad = processor.tokenizer.pad_token_id
    response_ids = torch.full((B, R), pad, dtype=torch.long)
    response_mask = torch.zeros((B, R), dtype=torch.long)
    old_logprobs = torch.zeros((B, R))
    p_old = torch.zeros((B, R, P + R))
    for b, t in enumerate(trajectories):
        if lengths[b] != t.prompt_len:
            raise ValueError(f"prompt of {t.sample.id} re-encodes to {lengths[b]} tokens, rollout had {t.prompt_len}")
        n, off = len(t.response_ids), P - t.prompt_len
        response_ids[b, :n] = t.response_ids
        response_mask[b, :n] = 1
        old_logprobs[b, :n] = t.old_logprobs
        p_old[b, :n, off : P + n] = t.attention.float()
    advantages = torch.tensor([t.advantage for t in trajectories], dtype=torch.float32)
    return LearnerBatch(prompts, response_ids, response_mask, old_logprobs, p_old, advantages)
