"""One prompt pass per distinct prompt: the G responses of a prompt share its prefix in a forward over given
responses.

A GRPO batch holds each prompt G times. A forward over prompt + response runs the vision tower and every layer over
the prompt's tokens G times, and the prompt is most of the sequence (the tiny job: 86 of 118 tokens; a video prompt:
thousands). `shared_prompt_forward` runs each distinct prompt once (all but its last token), repeats its keys and
values in the batch dimension (an index: differentiable, so the backward sums the G responses' gradients into the one
prompt pass), then runs the last prompt token and the responses of all N rows against that cache. The result equals
the full forward up to float rounding (tests/test_prompt_sharing.py: log-probs, attention rows, gradients), with
positions taken from the full sequence (`VLMAdapter.position_ids`) so multimodal rotary positions stay those of the
full forward.

The last prompt token runs with the responses because its row predicts the first response token and is the first
attention row of the ``sampling`` alignment; rows before it (the question rows of the consistency reward) need the
full forward.

`prefill_shared` does the same for sampling: the distinct prompts' prefill once, its cache repeated for the G
samples, then transformers' ``generate`` goes on from it (its first pass feeds every row's last prompt token).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from ral_dist.models.base import PER_TOKEN_KEYS, PromptBatch, VLMAdapter


@dataclass
class SharedPrompts:
    """The distinct prompts of a batch, encoded once (same left padding as the batch: a batch's longest prompt is one
    of them), and which of them each row's prompt is."""

    prompts: PromptBatch  # [U] rows
    index: torch.Tensor  # [N] row -> its prompt in ``prompts``
    first_row: torch.Tensor  # [U] a row of the batch with each prompt (its positions are the prompt's)

    def to(self, device: torch.device) -> SharedPrompts:
        inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in self.prompts.inputs.items()}
        return SharedPrompts(dataclasses.replace(self.prompts, inputs=inputs), self.index.to(device),
                             self.first_row.to(device))


def distinct(keys: Sequence[Hashable]) -> tuple[list[int], list[int]]:
    """For each key the number of its distinct value in order of first appearance, and the first position of each
    distinct value."""
    number: dict[Hashable, int] = {}
    index = [number.setdefault(k, len(number)) for k in keys]
    first = [0] * len(number)
    for pos in reversed(range(len(keys))):
        first[index[pos]] = pos
    return index, first


def share_prompts(adapter: VLMAdapter, processor, batch: PromptBatch, prompts: list, keys: Sequence[Hashable]
                  ) -> SharedPrompts | None:
    """The `SharedPrompts` of ``batch`` (encoded from ``prompts``, row by row, whose ``keys`` name equal prompts), or
    None when no two rows share a prompt."""
    index, first = distinct(keys)
    if len(first) == len(keys):
        return None
    unique = adapter.encode(processor, [prompts[i] for i in first])
    index_t = torch.tensor(index)
    # equal keys must mean equal prompts, and the distinct ones must pad as the batch does: every position relies on it
    if unique.prompt_len != batch.prompt_len or not torch.equal(unique.inputs["input_ids"][index_t],
                                                                batch.inputs["input_ids"]):
        raise ValueError("rows named the same prompt encode differently; cannot share their prompt pass")
    return SharedPrompts(unique, index_t, torch.tensor(first))


def shared_prompt_forward(adapter: VLMAdapter, model, full_inputs: dict[str, torch.Tensor], shared: SharedPrompts,
                          prompt_len: int, capture):
    """The forward of ``full_inputs`` (N rows of prompt + response, `append_response`) in two passes: the distinct
    prompts but their last token, then every row's last prompt token and response against the repeated cache.
    ``capture``: a context manager armed around the second pass only (the attention rows it captures are of its
    queries); returns what it yields. The caller reads the hidden states of the second pass: [N, 1 + R, H], position
    0 the prompt's last token.
    """
    core = getattr(model, "module", model)
    P = prompt_len
    positions = adapter.position_ids(core, full_inputs)
    prefix = {k: v[:, : P - 1] if k in PER_TOKEN_KEYS else v for k, v in shared.prompts.inputs.items()}
    if positions is not None:
        prefix["position_ids"] = positions[..., shared.first_row, : P - 1]
    cache = model(**prefix, use_cache=True, logits_to_keep=1).past_key_values
    cache.batch_select_indices(shared.index)  # [U] -> [N]: the backward sums each prompt's rows
    rest = {"input_ids": full_inputs["input_ids"][:, P - 1 :], "attention_mask": full_inputs["attention_mask"]}
    if positions is not None:
        rest["position_ids"] = positions[..., P - 1 :]
    with capture as request:
        model(**rest, past_key_values=cache, use_cache=True, logits_to_keep=1)
    return request


def prefill_shared(model, unique_inputs: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor], copies: int):
    """The cache of ``inputs`` (N = U x ``copies`` rows, each distinct prompt's copies together) but their last token,
    from one pass over the U ``unique_inputs``; and the position ids ``generate`` computes for ``inputs`` (to be given
    to it, with the cache, for the rest). Called under the caller's grad mode (``generate`` is no-grad)."""
    # transformers' own positions for a generation from these inputs (Qwen: mrope's, with its text row; others: the
    # attention mask's running count), so the passes before and after the cache use the one convention
    positions = model._prepare_position_ids_for_generation(inputs["input_ids"], dict(inputs))
    P = inputs["input_ids"].shape[1]
    prefix = {k: v[:, : P - 1] if k in PER_TOKEN_KEYS else v for k, v in unique_inputs.items()}
    prefix["position_ids"] = positions[..., ::copies, : P - 1]
    cache = model(**prefix, use_cache=True, logits_to_keep=1).past_key_values
    cache.batch_repeat_interleave(copies)
    return cache, positions
