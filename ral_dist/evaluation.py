"""Greedy evaluation on a split: accuracy, format rate and the attention metrics, overall and per question type.

attention_on_target: for each sample, the mean over its answer tokens of the visual attention mass that falls
inside the ground-truth region (from the captured last-layer policy), divided by the row's visual mass;
`target_fraction` is what uniform attention would score (chance). Samples without regions are left out of it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import torch

from ral_dist.algorithms import consistency, exact_match, format_score, sparsity
from ral_dist.data import Sample, on_target_mass, region_token_mask, target_fraction
from ral_dist.generation import generate
from ral_dist.heatmaps import save_heatmap
from ral_dist.models import VLMAdapter
from ral_dist.models.capture import use_capture_attention
from ral_dist.prompting import visual_prompt
from ral_dist.response_spans import answer_token_mask

METRICS = ("accuracy", "format_rate", "attention_on_target", "target_fraction", "sparsity", "consistency")


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else None


def score_sample(sample: Sample, text: str, ids: torch.Tensor, mask: torch.Tensor, attention: torch.Tensor,
                 question_attention: torch.Tensor, visual_positions: torch.Tensor, grid: tuple[int, int, int],
                 temporal_patch: int, tokenizer, mode: str) -> tuple[dict[str, float], dict[str, str]]:
    """Every metric of one response (NaN where a metric does not apply), and why a term scored 0 if it could not
    be computed. ``attention`` holds the response rows [R, T]; positions index the same sequence."""
    answer_rows = answer_token_mask(tokenizer, ids, mask)
    scores = {
        "accuracy": exact_match(text, sample.answer),
        "format_rate": format_score(text, mode),
        "sparsity": sparsity(attention[mask.bool()], visual_positions),
        "consistency": consistency(attention[answer_rows], question_attention, visual_positions),
    }
    row = {k: v.value for k, v in scores.items()}
    notes = {k: v.reason for k, v in scores.items() if v.reason}
    row["attention_on_target"] = row["target_fraction"] = float("nan")
    if sample.regions:
        region = region_token_mask(sample.regions, sample.n_frames, sample.frame_hw, grid, temporal_patch)
        visual = attention[answer_rows][:, visual_positions]
        row["attention_on_target"] = on_target_mass(visual, region)
        row["target_fraction"] = target_fraction(region)
    return row, notes


@torch.no_grad()
def evaluate(adapter: VLMAdapter, model, processor, samples: list[Sample], mode: str = "think",
             batch_size: int = 32, max_new_tokens: int = 48, heatmap_dir: str | Path | None = None,
             n_heatmaps: int = 4) -> dict:
    """Greedy-decode every sample and aggregate. Returns a JSON-able dict (see METRICS, plus n and per_type)."""
    use_capture_attention(model)
    model.eval()
    temporal_patch = getattr(getattr(processor, "image_processor", None), "temporal_patch_size", 1)
    if adapter.family == "idefics3":
        temporal_patch = 1
    rows: list[tuple[str, dict]] = []
    examples = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        gen = generate(adapter, model, processor, [visual_prompt(s, mode) for s in chunk], greedy=True,
                       max_new_tokens=max_new_tokens, capture=True, capture_question=True)
        for i, s in enumerate(chunk):
            q_valid = gen.question_rows[i] >= 0
            metrics, _ = score_sample(s, gen.texts[i], gen.response_ids[i], gen.response_mask[i], gen.attention[i],
                                   gen.question_attention[i][q_valid], gen.prompts.visual_positions[i],
                                   gen.prompts.visual_grids[i], temporal_patch, processor.tokenizer, mode)
            rows.append((s.qtype, metrics))
            if heatmap_dir is not None and len(examples) < n_heatmaps:
                answer_rows = answer_token_mask(processor.tokenizer, gen.response_ids[i], gen.response_mask[i])
                visual = gen.attention[i][answer_rows][:, gen.prompts.visual_positions[i]].mean(0)
                path = Path(heatmap_dir) / f"{s.id}.png"
                save_heatmap(s.get_images(), visual, gen.prompts.visual_grids[i], temporal_patch, path,
                             title=f"{s.question} -> {gen.texts[i]!r} (gt {s.answer})")
                examples.append({"id": s.id, "question": s.question, "answer": s.answer,
                                 "response": gen.texts[i], "heatmap": str(path)})

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
