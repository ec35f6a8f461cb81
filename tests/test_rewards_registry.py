"""The registry of reward terms (ral_dist.rewards): what every reader sees, the weighted total, and one response
scored through it, on crafted text and attention where each value is known exactly."""

import math

import pytest
import torch

from ral_dist.algorithms import Score, exact_match
from ral_dist.config import ConfigError, RLJobConfig, load_config
from ral_dist.data import GroundedVQAConfig, region_token_mask
from ral_dist.data import generate as generate_samples
from ral_dist.evaluation.greedy import METRICS, report_row
from ral_dist.models import get_adapter
from ral_dist.rewards import (
    PAPER_REWARD_WEIGHTS,
    REWARD_TERMS,
    ResponseView,
    answer_token_mask,
    score_terms,
    total_reward,
)
from ral_dist.runtime import metrics


def _tokenizer():
    return get_adapter("qwen2_5_vl").build_processor().tokenizer


def test_the_registry_is_what_every_reader_sees():
    assert list(REWARD_TERMS) == ["task", "format", "sparsity", "consistency"]
    assert {n for n, t in REWARD_TERMS.items() if t.needs_attention} == {"sparsity", "consistency"}
    assert metrics.REWARD_TERMS == tuple(REWARD_TERMS)  # the Prometheus label values
    assert set(RLJobConfig().reward.weights) == set(REWARD_TERMS)
    assert METRICS[:4] == ("accuracy", "format_rate", "sparsity", "consistency")  # the evaluation report
    with pytest.raises(ConfigError, match=r"reward.weights: .*unknown reward terms \['taks'\]"):
        load_config(RLJobConfig, None, ["reward.weights={taks: 1.0}"])


def test_total_reward_weighs_the_terms():
    assert dict(PAPER_REWARD_WEIGHTS) == {"task": 0.9, "format": 0.1, "sparsity": 0.0, "consistency": 0.0}
    assert total_reward({"task": 1.0, "format": 1.0}, PAPER_REWARD_WEIGHTS) == pytest.approx(1.0)
    assert total_reward({"task": 0.0, "format": 1.0}) == pytest.approx(0.1)
    assert total_reward({"format": Score(1.0, None)}) == pytest.approx(0.1)
    assert total_reward({"task": float("nan"), "format": 1.0, "sparsity": 0.7}) == pytest.approx(0.1)
    weights = {"task": 0.5, "format": 0.1, "sparsity": 0.2, "consistency": 0.2}
    terms = {"task": 1.0, "format": 0.0, "sparsity": 0.5, "consistency": 0.25}
    assert total_reward(terms, weights) == pytest.approx(0.5 + 0.1 + 0.05)
    with pytest.raises(TypeError):
        PAPER_REWARD_WEIGHTS["task"] = 1.0  # type: ignore[index]


def _view(text: str, sample=None, attention=None, regions=True) -> ResponseView:
    tok = _tokenizer()
    sample = sample or generate_samples(GroundedVQAConfig(), "val", 1)[0]  # color_at on a 2x2 grid, 112 px
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"])
    grid = (1, 4, 4)
    visual_positions = torch.arange(10, 26)  # 16 visual tokens at positions 10..25 of a 40-token sequence
    if attention is None:
        region = region_token_mask(sample.regions, 1, sample.frame_hw, grid)
        attention = torch.zeros(len(ids), 40)
        attention[:, 10 + int(torch.nonzero(region)[0])] = 1.0  # every row looks at one on-target token
    return ResponseView(sample, text, ids, attention, attention[:2].clone(), visual_positions, grid, 1, 1, tok, "think")


def test_a_response_scored_through_the_registry():
    sample = generate_samples(GroundedVQAConfig(), "val", 1)[0]
    view = _view(f"<think>x</think><answer>{sample.answer}</answer>", sample)
    values, notes = score_terms(view)
    assert values == {"task": 1.0, "format": 1.0, "sparsity": 1.0, "consistency": 1.0} and notes == {}
    assert REWARD_TERMS["task"].score(view) == exact_match(view.text, sample.answer)
    row = report_row(view)
    region = region_token_mask(sample.regions, 1, sample.frame_hw, (1, 4, 4))
    assert row["accuracy"] == 1.0 and row["format_rate"] == 1.0 and row["attention_on_target"] == 1.0
    assert math.isclose(row["target_fraction"], float(region.float().mean()))

    wrong = score_terms(_view("<answer>nothing</answer>", sample))
    assert wrong[0]["task"] == 0.0 and wrong[0]["format"] == 0.0 and wrong[1]["format"] == "no_think_tag"


def test_a_term_that_cannot_be_computed_scores_zero_with_its_reason():
    sample = generate_samples(GroundedVQAConfig(), "val", 1)[0]
    view = _view(f"<think>x</think><answer>{sample.answer}</answer>", sample, attention=torch.full((9, 40), math.nan))
    values, notes = score_terms(view)
    assert values["task"] == 1.0 and values["sparsity"] == 0.0 and notes["sparsity"] == "nan_attention"

    class Broken:  # a tokenizer that fails: the view cannot find the answer rows, consistency scores 0 with why
        def decode(self, ids):
            raise RuntimeError("no vocabulary")

    broken = ResponseView(sample, view.text, view.response_ids, view.attention, view.question_attention,
                          view.visual_positions, view.visual_grid, 1, 1, Broken(), "think")
    values, notes = score_terms(broken)
    assert values["consistency"] == 0.0 and notes["consistency"] == "error: RuntimeError: no vocabulary"
    assert values["task"] == 1.0 and "task" not in notes


def test_answer_token_mask_selects_the_answer_content():
    tok = _tokenizer()
    text = "<think>The object is red.</think><answer>red</answer>"
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id, tok.pad_token_id])
    mask = torch.tensor([1] * (len(ids) - 1) + [0])
    sel = answer_token_mask(tok, ids, mask)
    assert tok.decode(ids[sel]) == "red"
    no_tags = torch.tensor(tok("just red", add_special_tokens=False)["input_ids"])
    assert answer_token_mask(tok, no_tags, torch.ones_like(no_tags)).all()


def test_reward_task_picks_the_rule_of_the_task_term():
    from typing import get_args

    from ral_dist.algorithms.problem_type_rewards import PROBLEM_TYPES, TYPE_RULES
    from ral_dist.config import RewardConfig
    from ral_dist.data.sample import PROBLEM_TYPES as SAMPLE_PROBLEM_TYPES
    from ral_dist.rewards import TASK_TERMS, reward_terms

    assert set(TASK_TERMS) == set(get_args(RewardConfig.model_fields["task"].annotation))
    assert set(TYPE_RULES) == set(PROBLEM_TYPES) == set(SAMPLE_PROBLEM_TYPES)  # a rule for every problem type
    assert reward_terms(RewardConfig())["task"] is TASK_TERMS["exact"] is REWARD_TERMS["task"]
    video_r1 = reward_terms(RewardConfig(task="video_r1"))
    assert video_r1["task"] is TASK_TERMS["video_r1"] and list(video_r1) == list(REWARD_TERMS)
    assert metrics.REWARD_TERMS == ("task", "format", "sparsity", "consistency")
