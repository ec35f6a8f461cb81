"""Trajectories <-> padded batches: the rollout side unpads what it generated, the learner and teacher re-pad.

Attention rows travel without padding (keys = the unpadded prompt then the response), so a learner can batch any
subset of trajectories in its own layout and still compare p_theta with p_old key by key. In a padded batch the
prompts are left-padded to P and the responses right-padded to R: sequence b's response rows are ``[:n_b]`` and
its keys ``[P - P_b : P + n_b]``. `unpad_rows` and `pad_rows` are that idiom, once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ral_dist.data.data_config import DataConfig
from ral_dist.messages.trajectory import BehaviourPolicy, EncodedPrompt, Response, Trajectory
from ral_dist.models import PromptBatch, VLMAdapter
from ral_dist.models.generation import Generation
from ral_dist.models.prompt_sharing import SharedPrompts, share_prompts
from ral_dist.models.prompting import visual_prompt


def unpad_rows(padded: torch.Tensor, prompt_len: int, prompt_lens: Sequence[int], response_lens: Sequence[int],
               keys: bool = False) -> list[torch.Tensor]:
    """Each sequence's rows of a padded [B, R, ...] tensor: [n_b, ...]. With ``keys`` the last dim indexes the
    padded sequence (attention rows [B, R, P + R]) and is cut to that sequence's own keys: [n_b, P_b + n_b]."""
    out = []
    for b, (p, n) in enumerate(zip(prompt_lens, response_lens, strict=True)):
        rows = padded[b, :n]
        out.append(rows[..., prompt_len - p : prompt_len + n] if keys else rows)
    return out


def pad_rows(rows: Sequence[torch.Tensor], like: torch.Tensor, prompt_len: int, prompt_lens: Sequence[int],
             keys: bool = False) -> torch.Tensor:
    """The inverse of `unpad_rows`: per-sequence rows laid out in a zero tensor shaped like ``like`` [B, R, ...]
    (zeros in the padding, values cast to its dtype and device)."""
    out = torch.zeros_like(like)
    for b, (r, p) in enumerate(zip(rows, prompt_lens, strict=True)):
        n = r.shape[0]
        if keys:
            out[b, :n, prompt_len - p : prompt_len + n] = r.to(out.device)
        else:
            out[b, :n] = r.to(out.device)
    return out


def trajectories_from_generation(gen: Generation, samples: list, groups: list[int], version: int,
                                 temporal_patch: int, max_new_tokens: int,
                                 wire_dtype: torch.dtype = torch.float16) -> list[Trajectory]:
    """Split a padded generation (rows prompt-major, G per prompt) into unpadded trajectories."""
    P = gen.prompts.prompt_len
    prompt_lens = gen.prompts.inputs["attention_mask"].sum(1).tolist()
    lengths = gen.response_mask.sum(1).tolist()
    logprobs = unpad_rows(gen.logprobs, P, prompt_lens, lengths)
    attention = unpad_rows(gen.attention, P, prompt_lens, lengths, keys=True) if gen.attention is not None else None
    out = []
    for i, (p, n) in enumerate(zip(prompt_lens, lengths, strict=True)):
        off = P - p
        q_rows = gen.question_attention[i][gen.question_rows[i] >= 0] if attention is not None else None
        prompt = EncodedPrompt(sample=samples[i], group=groups[i], length=p,
                               visual_positions=gen.prompts.visual_positions[i] - off,
                               question_positions=gen.prompts.question_positions[i] - off,
                               visual_grid=gen.prompts.visual_grids[i], temporal_patch=temporal_patch,
                               n_frames=gen.prompts.frame_counts[i])
        response = Response(ids=gen.response_ids[i, :n].clone(), text=gen.texts[i],
                            truncated=n == max_new_tokens and n == gen.response_ids.shape[1])
        behaviour = BehaviourPolicy(version=version, logprobs=logprobs[i].float().clone(),
                                    attention=attention[i].to(wire_dtype).clone() if attention is not None else None,
                                    question_attention=q_rows[:, off:P].to(wire_dtype).clone()
                                    if q_rows is not None else None)
        out.append(Trajectory(prompt, response, behaviour))
    return out


def pack_micro_batches(lengths: Sequence[int], budget: int | None) -> list[list[int]]:
    """Positions of a mini-batch's sequences grouped into micro-batches: longest first, each group as many as fit
    ``budget`` tokens once padded to its longest (one sequence at least, whatever its length); None: one group, in
    order (the whole mini-batch in one forward)."""
    if budget is None:
        return [list(range(len(lengths)))]
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= budget:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def split_groups(groups: list[list[int]], count: int) -> list[list[int]]:
    """``groups`` split into ``count`` by halving the largest (learner ranks must run the same number of forwards:
    ZeRO-3 gathers parameters in each); groups stay empty when there are fewer items than ``count``."""
    groups = [list(g) for g in groups]
    while len(groups) < count:
        largest = max(range(len(groups)), key=lambda k: len(groups[k]))
        group = groups[largest]
        if len(group) < 2:
            groups.append([])
            continue
        groups[largest : largest + 1] = [group[: len(group) // 2], group[len(group) // 2 :]]
    return groups


@dataclass
class ResponseBatch:
    """Trajectories' prompts re-encoded (left-padded to P) and their responses right-padded to R."""

    prompts: PromptBatch
    response_ids: torch.Tensor  # [B, R]
    response_mask: torch.Tensor  # [B, R]
    prompt_lens: list[int]  # unpadded prompt lengths
    shared: SharedPrompts | None = field(default=None, kw_only=True)  # the distinct prompts, when rows repeat one

    @property
    def response_lens(self) -> list[int]:
        return self.response_mask.sum(1).tolist()

    def unpad(self, padded: torch.Tensor, keys: bool = False) -> list[torch.Tensor]:
        """`unpad_rows` in this batch's layout."""
        return unpad_rows(padded, self.prompts.prompt_len, self.prompt_lens, self.response_lens, keys)

    def pad(self, rows: Sequence[torch.Tensor], like: torch.Tensor, keys: bool = False) -> torch.Tensor:
        """`pad_rows` in this batch's layout."""
        return pad_rows(rows, like, self.prompts.prompt_len, self.prompt_lens, keys)

    def to(self, device: torch.device) -> ResponseBatch:
        """A copy on ``device`` (tensors only)."""
        if device.type == "cpu":
            return self
        inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in self.prompts.inputs.items()}
        moved = {f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)
                 if torch.is_tensor(getattr(self, f.name))}
        shared = self.shared.to(device) if self.shared is not None else None
        return dataclasses.replace(self, prompts=dataclasses.replace(self.prompts, inputs=inputs), shared=shared,
                                   **moved)


@dataclass
class LearnerBatch(ResponseBatch):
    """A mini-batch as the learner's loss reads it."""

    old_logprobs: torch.Tensor  # [B, R]
    p_old: torch.Tensor | None  # [B, R, P + R] fp32; None when the trajectories carry no rows (plain GRPO)
    advantages: torch.Tensor  # [B]


def response_batch(adapter: VLMAdapter, processor, trajectories: list[Trajectory], data: DataConfig,
                   share: bool = False) -> ResponseBatch:
    """Re-encode the prompts (their media decoded here) and lay the responses out in that padding (a prompt that
    re-encodes to another length than the rollout's fails: every position would be off). ``share``: also encode the
    distinct prompts once (a group's trajectories share theirs), for a forward that runs each once."""
    visual = [visual_prompt(t.sample, data) for t in trajectories]
    prompts = adapter.encode(processor, visual)
    lengths = prompts.inputs["attention_mask"].sum(1).tolist()
    for t, n in zip(trajectories, lengths, strict=True):
        if n != t.prompt.length:
            raise ValueError(f"prompt of {t.sample.id} re-encodes to {n} tokens, rollout had {t.prompt.length}")
    ids = [t.response.ids for t in trajectories]
    R = max(len(i) for i in ids)
    response_ids = torch.full((len(ids), R), processor.tokenizer.pad_token_id, dtype=torch.long)
    response_mask = torch.zeros((len(ids), R), dtype=torch.long)
    for b, row in enumerate(ids):
        response_ids[b, : len(row)] = row
        response_mask[b, : len(row)] = 1
    shared = (share_prompts(adapter, processor, prompts, visual, [t.prompt_key for t in trajectories])
              if share else None)
    return ResponseBatch(prompts, response_ids, response_mask, lengths, shared=shared)


def learner_batch(adapter: VLMAdapter, processor, trajectories: list[Trajectory], advantages: Sequence[float],
                  data: DataConfig, share: bool = False) -> LearnerBatch:
    """`response_batch` plus the behaviour policy's log-probs and p_old rows in that padding, and the advantages."""
    rb = response_batch(adapter, processor, trajectories, data, share)
    B, R = rb.response_ids.shape
    old_logprobs = rb.pad([t.behaviour.logprobs for t in trajectories], torch.zeros((B, R)))
    p_old = (rb.pad([t.behaviour.attention for t in trajectories], torch.zeros((B, R, rb.prompts.prompt_len + R)),
                    keys=True) if all(t.behaviour.attention is not None for t in trajectories) else None)
    return LearnerBatch(**{f.name: getattr(rb, f.name) for f in dataclasses.fields(rb)}, old_logprobs=old_logprobs,
                        p_old=p_old, advantages=torch.tensor(list(advantages), dtype=torch.float32))
