"""Greedy evaluation on a split: the job's reward terms (accuracy, format rate, sparsity, consistency, and any
reward.custom term under its name) and grounding, overall and per question type.

attention_on_target: for each sample, the mean over its answer tokens of the visual attention mass that falls
inside the ground-truth region (from the captured last-layer policy), divided by the row's visual mass;
`target_fraction` is what uniform attention would score (chance). Samples without regions are left out of it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ral_dist.config import DataConfig, RewardConfig, SFTJobConfig, load_config
from ral_dist.data import Sample
from ral_dist.data.readers import read_split
from ral_dist.evaluation.heatmaps import answer_heatmap
from ral_dist.models import VLMAdapter, adapter_for_checkpoint
from ral_dist.models.capture import use_capture_attention
from ral_dist.models.generation import Generation, generate
from ral_dist.models.prompting import visual_prompt
from ral_dist.rewards import REWARD_TERMS, ResponseView, RewardTerm, reward_terms, score_terms

GROUNDING = ("attention_on_target", "target_fraction")
METRICS = (*(t.report_name for t in REWARD_TERMS.values()), *GROUNDING)  # with the default terms


def metric_names(terms: Mapping[str, RewardTerm] = REWARD_TERMS) -> tuple[str, ...]:
    """The report's metrics with these reward terms."""
    return (*(t.report_name for t in terms.values()), *GROUNDING)


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else None


def response_view(gen: Generation, i: int, sample: Sample, temporal_patch: int, tokenizer, mode: str) -> ResponseView:
    """Row i of a generation as the reward terms read it (positions in the generation's padded coordinates)."""
    n = int(gen.response_mask[i].sum())
    return ResponseView(sample, gen.texts[i], gen.response_ids[i, :n], gen.attention[i, :n],
                        gen.question_attention[i][gen.question_rows[i] >= 0], gen.prompts.visual_positions[i],
                        gen.prompts.visual_grids[i], temporal_patch, gen.prompts.frame_counts[i], tokenizer, mode)


def report_row(view: ResponseView, terms: Mapping[str, RewardTerm] = REWARD_TERMS) -> dict[str, float]:
    """Every metric of one response (NaN where a metric does not apply)."""
    values, _ = score_terms(view, terms)
    return {terms[k].report_name: v for k, v in values.items()} | view.grounding()


@torch.no_grad()
def evaluate(adapter: VLMAdapter, model, processor, samples: list[Sample], data: DataConfig | None = None,
             batch_size: int = 32, max_new_tokens: int = 48, heatmap_dir: str | Path | None = None,
             n_heatmaps: int = 4, terms: Mapping[str, RewardTerm] = REWARD_TERMS,
             layers: Sequence[int] = (-1,), per_layer=None) -> dict:
    """Greedy-decode every sample and aggregate. Returns a JSON-able dict (see `metric_names(terms)`, plus
    response_length in tokens, n and per_type). ``data``: the prompt and media settings (default: `DataConfig()`); ``terms``: the job's reward terms
    (`reward_terms(reward_cfg)`); ``layers``: the attention policy's (``attention.layers``); ``per_layer``: a
    `ral_dist.evaluation.per_layer.LayerGrounding` that also gets every batch (attention on target at every
    decoder layer); the report's ``per_layer`` is its summary."""
    data = data or DataConfig()
    use_capture_attention(model)
    model.eval()
    temporal_patch = adapter.temporal_patch(processor)
    rows: list[tuple[str, dict]] = []
    examples = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        prompts = [visual_prompt(s, data) for s in chunk]
        gen = generate(adapter, model, processor, prompts, greedy=True, max_new_tokens=max_new_tokens, capture=True,
                       capture_question=True, layers=layers)
        if per_layer is not None:
            per_layer.add(adapter, model, processor, gen, chunk, data.prompt.mode)
        for i, s in enumerate(chunk):
            view = response_view(gen, i, s, temporal_patch, processor.tokenizer, data.prompt.mode)
            rows.append((s.qtype, report_row(view, terms) | {"response_length": int(gen.response_mask[i].sum())}))
            if heatmap_dir is not None and len(examples) < n_heatmaps:
                path = Path(heatmap_dir) / f"{s.id}.png"
                answer_heatmap(view, prompts[i].frames, path)
                examples.append({"id": s.id, "question": s.question, "answer": s.answer,
                                 "response": view.text, "heatmap": str(path)})

    report = summarise(rows, (*metric_names(terms), "response_length")) | {"examples": examples}
    return report | ({"per_layer": per_layer.summary()} if per_layer is not None else {})


def summarise(rows: list[tuple[str, dict]], names: tuple[str, ...]) -> dict:
    """(question type, `report_row`) of each response → the mean of each of ``names`` (NaNs left out; None when
    none is left) and n, overall and in ``per_type``."""

    def aggregate(selected: list[dict]) -> dict:
        out = {k: _mean([r[k] for r in selected]) for k in names}
        out["n"] = len(selected)
        return out

    result = aggregate([r for _, r in rows])
    by_type: dict[str, list[dict]] = defaultdict(list)
    for qtype, r in rows:
        by_type[qtype].append(r)
    result["per_type"] = {q: aggregate(rs) for q, rs in sorted(by_type.items())}
    return result


def training_data(checkpoint: Path) -> DataConfig:
    """The data a checkpoint was trained on (its sft_config.yaml), else the default generated task."""
    sft_cfg = checkpoint / "sft_config.yaml"
    return load_config(SFTJobConfig, sft_cfg).data if sft_cfg.exists() else DataConfig()


def evaluate_checkpoint(checkpoint: str | Path, split: str, data: DataConfig | None = None, limit: int | None = None,
                        reward: RewardConfig | None = None, **kwargs) -> dict:
    """`evaluate` a saved checkpoint on a split of ``data`` (None: the data it was trained on), scored with the terms
    of ``reward`` (a job's reward config; None: the defaults); the report also names the checkpoint, split, data and
    skips."""
    checkpoint = Path(checkpoint)
    adapter = adapter_for_checkpoint(checkpoint)
    model, processor = adapter.load(checkpoint)
    data = data or training_data(checkpoint)
    samples, skipped = read_split(data, split)
    report = evaluate(adapter, model, processor, samples[:limit] if limit else samples, data,
                      terms=reward_terms(reward), **kwargs)
    return report | {"checkpoint": str(checkpoint), "split": split, "data": data.model_dump(mode="json"),
                     "skipped": len(skipped)}
