"""Validation during training (``run.val_every``): greedy answers to the val split scored as `jobs/eval.py` scores
them (`ral_dist.evaluation.greedy`), one row per sample where the answers are decoded, one record per validation.

The rows come from the rollout workers' own models (`greedy_rows`, each worker its shard), or, beside vLLM with
``rollout.attention_on`` learner, from vLLM's greedy answers with the learner's attention rows
(`ral_dist.evaluation.answer_heatmaps.generation_of_answers`, then `generation_rows`). The controller gathers the
rows and writes `val_record` to metrics.jsonl as ``{"kind": "val", "step": ...}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ral_dist.config import DataConfig
from ral_dist.data import Sample
from ral_dist.evaluation.greedy import metric_names, report_row, response_view, summarise
from ral_dist.models import VLMAdapter
from ral_dist.models.generation import Generation, generate
from ral_dist.models.prompting import visual_prompt
from ral_dist.rewards import RewardTerm

BATCH = 32  # prompts per greedy generate call


def generation_rows(gen: Generation, samples: list[Sample], temporal_patch: int, tokenizer, mode: str,
                    terms: Mapping[str, RewardTerm]) -> list[dict]:
    """One row per answer of a generation with attention rows: id, qtype, response_length (tokens) and every
    metric of `report_row` (NaN where it does not apply)."""
    rows = []
    for i, s in enumerate(samples):
        view = response_view(gen, i, s, temporal_patch, tokenizer, mode)
        rows.append({"id": s.id, "qtype": s.qtype, "response_length": int(gen.response_mask[i].sum()),
                     **report_row(view, terms)})
    return rows


@torch.no_grad()
def greedy_rows(adapter: VLMAdapter, model, processor, samples: list[Sample], data: DataConfig, max_new_tokens: int,
                terms: Mapping[str, RewardTerm], layers: Sequence[int]) -> list[dict]:
    """Greedy-decode ``samples`` with ``model`` (the capture on) in batches; `generation_rows` of each."""
    rows: list[dict] = []
    temporal_patch = adapter.temporal_patch(processor)
    for start in range(0, len(samples), BATCH):
        chunk = samples[start : start + BATCH]
        prompts = [visual_prompt(s, data) for s in chunk]
        gen = generate(adapter, model, processor, prompts, greedy=True, max_new_tokens=max_new_tokens, capture=True,
                       capture_question=True, layers=layers)
        rows += generation_rows(gen, chunk, temporal_patch, processor.tokenizer, data.prompt.mode, terms)
    return rows


def val_record(step: int, version: int, rows: list[dict], terms: Mapping[str, RewardTerm], seconds: float) -> dict:
    """The metrics.jsonl record of one validation: the means of every metric over ``rows`` (None where no row has
    it), n, per_type, the seconds it took."""
    names = (*metric_names(terms), "response_length")
    summary = summarise([(r["qtype"], r) for r in rows], names)
    return {"kind": "val", "step": step, "policy_version": version, **summary, "val_s": round(seconds, 3)}
