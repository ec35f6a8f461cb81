"""Greedy evaluation on a split: the registered reward terms (accuracy, format rate, sparsity, consistency) and
grounding, overall and per question type.

attention_on_target: for each sample, the mean over its answer tokens of the visual attention mass that falls
inside the ground-truth region (from the captured last-layer policy), divided by the row's visual mass;
`target_fraction` is what uniform attention would score (chance). Samples without regions are left out of it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import torch

from ral_dist.config import DataConfig, SFTJobConfig, load_config
from ral_dist.data import Sample, read_dataset
from ral_dist.data.cache import ensure_dataset
from ral_dist.evaluation.heatmaps import answer_heatmap
from ral_dist.models import VLMAdapter, adapter_for_checkpoint
from ral_dist.models.capture import use_capture_attention
from ral_dist.models.generation import Generation, generate
from ral_dist.models.prompting import visual_prompt
from ral_dist.rewards import REWARD_TERMS, ResponseView, score_terms

METRICS = (*(t.report_name for t in REWARD_TERMS.values()), "attention_on_target", "target_fraction")


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else None


def response_view(gen: Generation, i: int, sample: Sample, temporal_patch: int, tokenizer, mode: str) -> ResponseView:
    """Row i of a generation as the reward terms read it (positions in the generation's padded coordinates)."""
    n = int(gen.response_mask[i].sum())
    return ResponseView(sample, gen.texts[i], gen.response_ids[i, :n], gen.attention[i, :n],
                        gen.question_attention[i][gen.question_rows[i] >= 0], gen.prompts.visual_positions[i],
                        gen.prompts.visual_grids[i], temporal_patch, tokenizer, mode)


def report_row(view: ResponseView) -> dict[str, float]:
    """Every metric of one response (NaN where a metric does not apply)."""
    values, _ = score_terms(view)
    return {REWARD_TERMS[k].report_name: v for k, v in values.items()} | view.grounding()


@torch.no_grad()
def evaluate(adapter: VLMAdapter, model, processor, samples: list[Sample], mode: str = "think",
             batch_size: int = 32, max_new_tokens: int = 48, heatmap_dir: str | Path | None = None,
             n_heatmaps: int = 4) -> dict:
    """Greedy-decode every sample and aggregate. Returns a JSON-able dict (see METRICS, plus n and per_type)."""
    use_capture_attention(model)
    model.eval()
    temporal_patch = adapter.temporal_patch(processor)
    rows: list[tuple[str, dict]] = []
    examples = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        gen = generate(adapter, model, processor, [visual_prompt(s, mode) for s in chunk], greedy=True,
                       max_new_tokens=max_new_tokens, capture=True, capture_question=True)
        for i, s in enumerate(chunk):
            view = response_view(gen, i, s, temporal_patch, processor.tokenizer, mode)
            rows.append((s.qtype, report_row(view)))
            if heatmap_dir is not None and len(examples) < n_heatmaps:
                path = Path(heatmap_dir) / f"{s.id}.png"
                answer_heatmap(view, path)
                examples.append({"id": s.id, "question": s.question, "answer": s.answer,
                                 "response": view.text, "heatmap": str(path)})

    def aggregate(selected: list[dict]) -> dict:
        out = {k: _mean([r[k] for r in selected]) for k in METRICS}
        out["n"] = len(selected)
        return out

    result = aggregate([r for _, r in rows])
    by_type: dict[str, list[dict]] = defaultdict(list)
    for qtype, r in rows:
        by_type[qtype].append(r)
    result["per_type"] = {q: aggregate(rs) for q, rs in sorted(by_type.items())}
    result["examples"] = examples
    return result


def training_data(checkpoint: Path, data_dir: str | None) -> tuple[Path, str]:
    """The dataset directory and prompt mode to evaluate ``checkpoint`` on: ``data_dir`` if given, else the data the
    checkpoint was trained on (its sft_config.yaml), else the default generated task."""
    if data_dir:
        return Path(data_dir), "think"
    sft_cfg = checkpoint / "sft_config.yaml"
    data = load_config(SFTJobConfig, sft_cfg).data if sft_cfg.exists() else DataConfig()
    return (Path(data.dir) if data.dir else ensure_dataset(data.task, data.sizes)), data.prompt_mode


def evaluate_checkpoint(checkpoint: str | Path, split: str, data_dir: str | None = None, mode: str | None = None,
                        limit: int | None = None, **kwargs) -> dict:
    """`evaluate` a saved checkpoint on a split; the report also names the checkpoint, split, data and skips."""
    checkpoint = Path(checkpoint)
    adapter = adapter_for_checkpoint(checkpoint)
    model, processor = adapter.load(checkpoint)
    directory, trained_mode = training_data(checkpoint, data_dir)
    samples, skipped = read_dataset(directory, split)
    report = evaluate(adapter, model, processor, samples[:limit] if limit else samples, mode=mode or trained_mode,
                      **kwargs)
    return report | {"checkpoint": str(checkpoint), "split": split, "data_dir": str(directory),
                     "skipped": len(skipped)}
