"""Where a model grounds: attention on the ground-truth region at every decoder layer (``jobs/eval.py
--per-layer``), so that ``attention.layers`` can be set to a layer that looks at the right place.

For greedy answers already decoded, one forward over prompt + answer captures the attention policy of RAL.md §1 at
every layer (one ``q · K^T`` per layer and answer row); each layer's rows then go through the same
`ResponseView.grounding` as the report's ``attention_on_target``, split by sample kind (image / video).
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict

import torch

from ral_dist.data import Sample
from ral_dist.evaluation.greedy import response_view
from ral_dist.models import VLMAdapter
from ral_dist.models.base import append_response
from ral_dist.models.capture import CaptureRequest, armed_layers, response_rows
from ral_dist.models.generation import Generation


@torch.no_grad()
def layer_rows(adapter: VLMAdapter, model, gen: Generation, pad_token_id: int) -> list[torch.Tensor]:
    """[N, R, T] attention policy rows of ``gen``'s responses at each decoder layer, first to last (the rows of
    `generate`'s default "paper" alignment)."""
    device = model.device
    prompts = {k: v.to(device) if torch.is_tensor(v) else v for k, v in gen.prompts.inputs.items()}
    inputs = append_response(prompts, gen.response_ids.to(device), gen.response_mask.to(device), pad_token_id)
    rows = response_rows(gen.prompts.prompt_len, gen.response_mask.to(device))
    with armed_layers(list(adapter.language_layers(model)),
                      lambda: CaptureRequest(rows, inputs["attention_mask"])) as capture:
        model(**inputs, use_cache=False, logits_to_keep=1)
    return [request.policy.float().cpu() * gen.response_mask[..., None] for request in capture.requests]


class LayerGrounding:
    """Accumulates attention_on_target per (layer, sample kind) over batches; `summary` gives the means."""

    def __init__(self):
        self.values: dict[tuple[int, str], list[tuple[float, float]]] = defaultdict(list)

    def add(self, adapter: VLMAdapter, model, processor, gen: Generation, samples: list[Sample], mode: str) -> None:
        temporal_patch = adapter.temporal_patch(processor)
        for layer, rows in enumerate(layer_rows(adapter, model, gen, processor.tokenizer.pad_token_id)):
            at_layer = dataclasses.replace(gen, attention=rows)
            for i, s in enumerate(samples):
                g = response_view(at_layer, i, s, temporal_patch, processor.tokenizer, mode).grounding()
                if not math.isnan(g["attention_on_target"]):
                    self.values[(layer, s.kind)].append((g["attention_on_target"], g["target_fraction"]))

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        """{layer: {kind: {"attention_on_target", "target_fraction", "n"}}} (layers as strings: JSON keys)."""
        out: dict[str, dict] = defaultdict(dict)
        for (layer, kind), pairs in sorted(self.values.items()):
            on, chance = zip(*pairs, strict=True)
            out[str(layer)][kind] = {"attention_on_target": sum(on) / len(on),
                                     "target_fraction": sum(chance) / len(chance), "n": len(on)}
        return dict(out)


def format_table(summary: dict) -> str:
    """The per-layer summary as the table jobs/eval.py prints."""
    kinds = sorted({k for by_kind in summary.values() for k in by_kind})
    lines = ["layer  " + "  ".join(f"{k + ' on-target':>16} {'(chance)':>9}" for k in kinds)]
    for layer, by_kind in summary.items():
        cells = [f"{by_kind[k]['attention_on_target']:>16.3f} {by_kind[k]['target_fraction']:>9.3f}" if k in by_kind
                 else f"{'-':>16} {'':>9}" for k in kinds]
        lines.append(f"{layer:>5}  " + "  ".join(cells))
    return "\n".join(lines)
