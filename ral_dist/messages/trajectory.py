"""What a rollout worker sends: trajectories (one sampled response each), cut into the learner ranks' shares, and
the accounting of its chunk.

Plain frozen dataclasses of CPU tensors, pickled through Ray's object store; a record that crossed the store is
never changed in place (the learner replaces a whole part with `dataclasses.replace`). Everything is stored
without padding: positions index the unpadded sequence (prompt, then response), so any batch layout can be
rebuilt from it (`ral_dist.messages.collate`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ral_dist.data import Sample


@dataclass(frozen=True)
class EncodedPrompt:
    """The prompt a response answers, as the rollout worker's adapter encoded it."""

    sample: Sample  # the dataset sample (frames, question, answer, regions)
    group: int  # index of the prompt within the step; the G responses of a prompt share it
    length: int  # P, tokens of the unpadded prompt
    visual_positions: torch.Tensor  # [V] the visual tokens, order (t, row, col)
    question_positions: torch.Tensor  # [Q] the question's text tokens
    visual_grid: tuple[int, int, int]  # (t, rows, cols) of the visual tokens
    temporal_patch: int  # frames per visual token-frame
    n_frames: int  # frames the model saw (a video file's: as decoded)


@dataclass(frozen=True)
class Response:
    ids: torch.Tensor  # [R] sampled tokens up to and including EOS
    text: str  # decoded, special tokens dropped
    truncated: bool  # hit max_new_tokens without EOS


@dataclass(frozen=True)
class BehaviourPolicy:
    """What the weights that sampled the response computed for it (RAL.md §1, §3: p_old and the old log-probs)."""

    version: int  # policy version of those weights
    logprobs: torch.Tensor  # [R] fp32, of logits / temperature
    # None when nothing consumes them (`RLJobConfig.rollout_captures`: plain GRPO without attention rewards)
    attention: torch.Tensor | None  # [R, P + R] attention policy rows of the response tokens (attention_wire_dtype)
    question_attention: torch.Tensor | None  # [Q, P] rows of the question tokens (the consistency reward)


@dataclass(frozen=True)
class Trajectory:
    prompt: EncodedPrompt
    response: Response
    behaviour: BehaviourPolicy

    @property
    def sample(self) -> Sample:
        return self.prompt.sample

    @property
    def prompt_key(self) -> tuple[str, int]:
        """Names the prompt: the G responses of one prompt share it (its sample and its group in the step)."""
        return self.sample.id, self.prompt.group


@dataclass(frozen=True)
class SkippedPrompt:
    group: int
    sample_id: str
    reason: str


@dataclass(frozen=True)
class ChunkAccounting:
    """What became of the prompts one rollout call was given; passed on with the chunk's rewards."""

    groups: list[int]  # the prompt groups of the chunk
    skipped: list[SkippedPrompt] = field(default_factory=list)  # prompts that could not be processed, with why
    worker_restarted: bool = False  # the worker had been restarted by Ray before this call ran
    engine_stats: dict[str, float] = field(default_factory=dict)  # vllm engine: log-prob mismatch sums


def chunk_offset(accounting: ChunkAccounting, group_size: int) -> int:
    """Where a chunk's trajectories start in its step, as scheduled (the G responses of each earlier prompt)."""
    return accounting.groups[0] * group_size if accounting.groups else 0


def split_shards(items: list, offset: int, ranks: int) -> list[list]:
    """A chunk's items (trajectories, advantages, teacher targets) cut into the learner ranks' shares: item i of a
    chunk starting at ``offset`` goes to rank (offset + i) % ranks. Every producer and consumer of a chunk cuts it
    the same way, so each learner rank fetches only its own share of a step; with no prompt skipped, rank r's share
    of the whole step is the step's items r, r + ranks, r + 2 ranks, ..."""
    shards: list[list] = [[] for _ in range(ranks)]
    for i, item in enumerate(items):
        shards[(offset + i) % ranks].append(item)
    return shards


def join_shards(shards: list[list], offset: int) -> list:
    """The inverse of `split_shards`: the chunk's items in order."""
    ranks, n = len(shards), sum(len(s) for s in shards)
    taken = [0] * ranks
    out = []
    for i in range(n):
        r = (offset + i) % ranks
        out.append(shards[r][taken[r]])
        taken[r] += 1
    return out
