"""Capture of the last-layer attention policy (RAL.md §1) against HF eager ``output_attentions=True``."""

import pytest
import torch
from PIL import Image, ImageDraw

from ral_dist.models import VisualPrompt, append_response, get_adapter
from ral_dist.models.capture import (
    ATTN_IMPLEMENTATION,
    capture_attention,
    layer_indices,
    reference_attention_policy,
    response_rows,
    use_capture_attention,
)
from ral_dist.models.generation import forward_responses, generate

FAMILIES = ["qwen2_5_vl", "qwen2_vl", "idefics3"]


def _frame(color: str, box: tuple[int, int, int, int], size=(112, 112)) -> Image.Image:
    img = Image.new("RGB", size, "white")
    ImageDraw.Draw(img).rectangle(box, fill=color)
    return img


def _prompts(kind: str) -> list[VisualPrompt]:
    if kind == "image":
        return [
            VisualPrompt([_frame("red", (8, 8, 40, 40))], "What colour is the square?"),
            VisualPrompt([_frame("blue", (60, 60, 100, 100))], "Is there a blue square in the bottom right cell?",
                         text="Is there a blue square in the bottom right cell? Answer inside tags."),
        ]
    frames = [_frame("green", (8 + 20 * i, 30, 30 + 20 * i, 52)) for i in range(4)]
    return [
        VisualPrompt(frames, "Which way does the green square move?", kind="video"),
        VisualPrompt(frames[:3], "In which frame is it on the right?", kind="video",
                     text="In which frame is it on the right? Be brief."),
    ]


def _batch(family: str, kind: str, seed: int = 0):
    adapter = get_adapter(family)
    model, processor = adapter.build_tiny(seed=seed)
    batch = adapter.encode(processor, _prompts(kind))
    gen = torch.Generator().manual_seed(seed)
    resp = torch.randint(20, len(processor.tokenizer), (2, 7), generator=gen)
    resp_mask = torch.ones_like(resp)
    resp_mask[1, 4:] = 0  # second response ended early: rows after its EOS are masked
    inputs = append_response(batch.inputs, resp, resp_mask, processor.tokenizer.pad_token_id)
    return adapter, model, processor, batch, inputs, resp_mask


def _eager_reference(model, inputs, rows):
    model.set_attn_implementation("eager")
    with torch.no_grad():
        out = model(**inputs, output_attentions=True)
    return reference_attention_policy(out.attentions[-1], rows, inputs["attention_mask"]), out.logits


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ["image", "video"])
@pytest.mark.parametrize("alignment", ["paper", "sampling"])
def test_capture_matches_eager_output_attentions(family, kind, alignment):
    adapter, model, _, batch, inputs, resp_mask = _batch(family, kind)
    assert (batch.inputs["attention_mask"] == 0).any(), "the batch must contain left padding"
    rows = response_rows(batch.prompt_len, resp_mask, alignment)
    use_capture_attention(model)
    attn = adapter.language_layers(model)[-1].self_attn
    with torch.no_grad(), capture_attention(attn, rows, inputs["attention_mask"], chunk_rows=3) as req:
        logits = model(**inputs).logits
    reference, eager_logits = _eager_reference(model, inputs, rows)

    assert req.policy.shape == (2, 7, inputs["input_ids"].shape[1])
    assert (req.policy - reference).abs().max().item() <= 1e-5
    # the capture does not change what the model computes (padding positions are undefined in both)
    real = inputs["attention_mask"].bool()
    assert (logits - eager_logits)[real].abs().max().item() <= 1e-4
    # rows sum to one over earlier non-padding keys; masked rows are zero; no mass on self, future or padding
    valid = rows >= 0
    assert torch.allclose(req.policy.sum(-1)[valid], torch.ones(int(valid.sum())), atol=1e-5)
    assert req.policy[~valid].abs().max() == 0
    for b in range(2):
        for r in range(7):
            t = int(rows[b, r])
            if t >= 0:
                assert req.policy[b, r, t:].abs().max() == 0
                assert req.policy[b, r, inputs["attention_mask"][b] == 0].abs().sum() == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_capture_with_grad_matches_and_backpropagates(family):
    adapter, model, _, batch, inputs, resp_mask = _batch(family, "image", seed=1)
    rows = response_rows(batch.prompt_len, resp_mask)
    use_capture_attention(model)
    layers = adapter.language_layers(model)
    with capture_attention(layers[-1].self_attn, rows, inputs["attention_mask"]) as req:
        model(**inputs)
    assert req.policy.requires_grad
    target = torch.softmax(torch.randn(req.policy.shape), -1)
    (req.policy * target).sum().backward()
    # gradient reaches the captured layer's q/k and earlier layers, not its value/output projections
    assert layers[-1].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert layers[-1].self_attn.k_proj.weight.grad.abs().sum() > 0
    assert layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert layers[-1].self_attn.v_proj.weight.grad is None or layers[-1].self_attn.v_proj.weight.grad.abs().sum() == 0
    reference, _ = _eager_reference(model, inputs, rows)
    assert (req.policy.detach() - reference).abs().max().item() <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_only_the_armed_layer_computes_probabilities(family, monkeypatch):
    adapter, model, _, batch, inputs, resp_mask = _batch(family, "image")
    use_capture_attention(model)
    assert model.config.get_text_config()._attn_implementation == ATTN_IMPLEMENTATION
    calls = []
    import ral_dist.models.capture as capture_module

    real = capture_module.CaptureRequest.record
    monkeypatch.setattr(capture_module.CaptureRequest, "record", lambda *a, **k: calls.append(1) or real(*a, **k))
    rows = response_rows(batch.prompt_len, resp_mask)
    with torch.no_grad(), capture_attention(adapter.language_layers(model)[-1].self_attn, rows,
                                            inputs["attention_mask"]) as request:
        model(**inputs)
    assert len(calls) == 1  # one layer, one forward: the other layers stayed on plain SDPA
    assert request.policy.shape[:2] == rows.shape
    with torch.no_grad():
        model(**inputs)
    assert len(calls) == 1  # disarmed after the block


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_layers_average_the_chosen_layers_as_eager_gives_them(family):
    """attention.layers: each chosen layer's rows as eager attention gives that layer, then their mean; the same in
    a scoring forward and across a cached generation."""
    adapter, model, processor, batch, inputs, resp_mask = _batch(family, "image")
    n_layers = len(adapter.language_layers(model))
    assert n_layers >= 2
    rows = response_rows(batch.prompt_len, resp_mask)
    use_capture_attention(model)
    pad = processor.tokenizer.pad_token_id
    resp = inputs["input_ids"][:, batch.prompt_len :]
    banned = adapter.banned_token_ids(processor)
    with torch.no_grad():
        first = forward_responses(adapter, model, batch, resp, resp_mask, pad, banned=banned, layers=[0]).attention
        both = forward_responses(adapter, model, batch, resp, resp_mask, pad, banned=banned, layers=[0, -1]).attention
        last = forward_responses(adapter, model, batch, resp, resp_mask, pad, banned=banned).attention
    model.set_attn_implementation("eager")
    with torch.no_grad():
        eager = model(**inputs, output_attentions=True).attentions
    use_capture_attention(model)
    reference = [reference_attention_policy(a, rows, inputs["attention_mask"]) for a in (eager[0], eager[-1])]
    assert (first - reference[0]).abs().max() <= 1e-5 and (last - reference[1]).abs().max() <= 1e-5
    assert (both - (reference[0] + reference[1]) / 2).abs().max() <= 1e-5
    assert (first - last).abs().max() > 1e-3  # the layers differ: the choice matters
    # generation: the decoded rows of the mean are the mean of each layer's decoded rows
    prompts = _prompts("image")
    gens = {key: generate(adapter, model, processor, prompts, greedy=True, max_new_tokens=5, capture_question=True,
                          layers=key) for key in ((0,), (-1,), (0, n_layers - 1))}
    mean = (gens[(0,)].attention + gens[(-1,)].attention) / 2
    assert (gens[(0, n_layers - 1)].attention - mean).abs().max() <= 1e-6
    with torch.no_grad():
        scored = forward_responses(adapter, model, gens[(0,)].prompts, gens[(0,)].response_ids,
                                   gens[(0,)].response_mask, pad, banned=banned, layers=[0]).attention
    assert (scored - gens[(0,)].attention).abs().max() <= 1e-5


def test_a_layer_the_model_does_not_have_is_refused_naming_the_setting():
    assert layer_indices([-1, 0, 2], 4) == [3, 0, 2] and layer_indices([3, -1], 4) == [3]
    with pytest.raises(ValueError, match=r"attention.layers: 4 is not a layer .* 4 layers"):
        layer_indices([4], 4)
    with pytest.raises(ValueError, match=r"attention.layers: -5"):
        layer_indices([-5], 4)
