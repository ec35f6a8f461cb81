"""Evaluation metrics on crafted responses and attention, and the answer-token span."""

import math

import torch

from ral_dist.data import GroundedVQAConfig
from ral_dist.data import generate as generate_samples
from ral_dist.evaluation import score_sample
from ral_dist.models import get_adapter
from ral_dist.response_spans import answer_token_mask


def _tokenizer():
    return get_adapter("qwen2_5_vl").build_processor().tokenizer


def test_answer_token_mask_selects_the_answer_content():
    tok = _tokenizer()
    text = "<think>The object is red.</think><answer>red</answer>"
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id, tok.pad_token_id])
    mask = torch.tensor([1] * (len(ids) - 1) + [0])
    sel = answer_token_mask(tok, ids, mask)
    assert tok.decode(ids[sel]) == "red"
    no_tags = torch.tensor(tok("just red", add_special_tokens=False)["input_ids"])
    assert answer_token_mask(tok, no_tags, torch.ones_like(no_tags)).all()


def test_score_sample_on_crafted_attention():
    tok = _tokenizer()
    sample = generate_samples(GroundedVQAConfig(), "val", 1)[0]  # color_at on a 2x2 grid, 112 px
    text = f"<think>x</think><answer>{sample.answer}</answer>"
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"])
    mask = torch.ones_like(ids)
    grid = (1, 4, 4)
    from ral_dist.data import region_token_mask

    region = region_token_mask(sample.regions, 1, sample.frame_hw, grid)
    visual_positions = torch.arange(10, 26)  # 16 visual tokens at positions 10..25 of a 40-token sequence
    attention = torch.zeros(len(ids), 40)
    attention[:, 10 + int(torch.nonzero(region)[0])] = 1.0  # every row looks at one on-target token
    question_attention = attention[:2].clone()
    out, notes = score_sample(sample, text, ids, mask, attention, question_attention, visual_positions, grid, 1, tok, "think")
    assert out["accuracy"] == 1.0 and out["format_rate"] == 1.0
    assert out["attention_on_target"] == 1.0 and out["sparsity"] == 1.0 and out["consistency"] == 1.0
    assert math.isclose(out["target_fraction"], float(region.float().mean()))
    wrong, wrong_notes = score_sample(sample, "<answer>nothing</answer>", ids, mask, attention, question_attention,
                         visual_positions, grid, 1, tok, "think")
    assert wrong["accuracy"] == 0.0 and wrong["format_rate"] == 0.0
    assert notes == {} and "format_rate" in wrong_notes
