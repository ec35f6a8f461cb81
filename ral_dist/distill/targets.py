"""What a TeacherActor returns per student trajectory, and the same targets in a learner mini-batch's padding."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ral_dist.messages.collate import ResponseBatch


@dataclass(frozen=True)
class TeacherTargets:
    """The teacher's view of one student trajectory (RAL.md §5), unpadded like `BehaviourPolicy.attention`."""

    attention: torch.Tensor  # [R, P + R] the teacher's attention policy rows (its last layer, heads averaged)
    token_logprobs: torch.Tensor  # [R] fp32, the teacher's log-prob of each of the student's tokens
    logprobs: torch.Tensor | None = None  # [R, V] fp32, full distribution (teacher.top_k None)
    topk_ids: torch.Tensor | None = None  # [R, k] its top-k token ids (teacher.top_k = k) ...
    topk_logprobs: torch.Tensor | None = None  # [R, k] ... and their log-probs; residual mass = 1 - sum(exp)


@dataclass
class TeacherBatch:
    """Teacher targets in a learner batch's padding (zeros in the padding, masked out of the loss)."""

    attention: torch.Tensor  # [B, R, P + R]
    logprobs: torch.Tensor | None  # [B, R, V] (full)
    topk_ids: torch.Tensor | None  # [B, R, k] (top-k)
    topk_logprobs: torch.Tensor | None  # [B, R, k]


def teacher_batch(batch: ResponseBatch, targets: list[TeacherTargets]) -> TeacherBatch:
    B, R = batch.response_ids.shape
    device = batch.response_ids.device
    attention = batch.pad([t.attention for t in targets], torch.zeros((B, R, batch.prompts.prompt_len + R),
                                                                      device=device), keys=True)
    if targets[0].logprobs is not None:
        width = targets[0].logprobs.shape[-1]
        full = batch.pad([t.logprobs for t in targets], torch.zeros((B, R, width), device=device))
        return TeacherBatch(attention, full, None, None)
    k = targets[0].topk_ids.shape[-1]
    ids = batch.pad([t.topk_ids for t in targets], torch.zeros((B, R, k), dtype=torch.long, device=device))
    values = batch.pad([t.topk_logprobs for t in targets], torch.zeros((B, R, k), device=device))
    return TeacherBatch(attention, None, ids, values)
