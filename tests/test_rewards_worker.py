"""A RewardWorker built in-process (no Ray; its metrics are no-ops) scores a rollout chunk with reward.task=video_r1
and user reward functions: the chunk comes as the rollout worker sends it (accounting, then the learner ranks'
shares) and the results come back in the chunk's order, with the per-type fields the controller groups by."""

import dataclasses
import math

import pytest
import torch
from PIL import Image

from ral_dist.actors.reward_worker import RewardWorker
from ral_dist.config import RLJobConfig
from ral_dist.data import Sample
from ral_dist.messages import (
    BehaviourPolicy,
    ChunkAccounting,
    EncodedPrompt,
    Response,
    Trajectory,
    split_shards,
)
from ral_dist.messages.rewards import per_type_summary

USER_FILE = '''
def mentions_answer(response_text, sample):
    return 1.0 if sample.answer in response_text else 0.0


def picky(response_text, sample):
    if sample.problem_type == "regression":
        raise ZeroDivisionError("my bug")
    return 0.25
'''

PROMPTS = [  # (qtype, problem type, answer, the two responses)
    ("which_car", "multiple choice", "B", ("<think>a</think><answer>(B)</answer>", "<answer>C</answer>")),
    ("speed", "numerical", "3.5", ("<think>a</think><answer>3.50</answer>", "<think>a</think><answer>4</answer>")),
    ("distance", "regression", "10", ("<think>a</think><answer>15</answer>", "<think>a</think><answer>10</answer>")),
]
P = 30  # prompt tokens; the visual tokens sit at 10..25


def _trajectory(worker: RewardWorker, sample: Sample, group: int, text: str) -> Trajectory:
    ids = torch.tensor(worker.tokenizer(text, add_special_tokens=False)["input_ids"])
    attention = torch.softmax(torch.randn(len(ids), P + len(ids)), dim=-1)
    prompt = EncodedPrompt(sample, group, P, torch.arange(10, 26), torch.arange(26, 30), (1, 4, 4), 1, n_frames=1)
    return Trajectory(prompt, Response(ids, text, False),
                      BehaviourPolicy(0, torch.zeros(len(ids)), attention.half(), attention[:4, :P].half()))


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    user_file = tmp_path_factory.mktemp("user") / "scoring.py"
    user_file.write_text(USER_FILE)
    cfg = RLJobConfig.model_validate({
        "rollout": {"num_workers": 1, "prompts_per_step": 4, "group_size": 2},
        "learner": {"num_ranks": 2},
        "reward": {"task": "video_r1", "custom": [
            {"name": "mentions", "path": f"{user_file}:mentions_answer", "weight": 0.5},
            {"name": "picky", "path": f"{user_file}:picky", "weight": 1.0},
        ]},
    })
    worker = RewardWorker(cfg.model_dump(mode="json"))
    torch.manual_seed(0)
    trajectories = []
    for group, (qtype, problem_type, answer, responses) in enumerate(PROMPTS, start=1):  # the chunk's groups 1..3
        sample = Sample(id=f"s{group}", kind="image", images=[Image.new("RGB", (56, 56), "gray")],
                        question="?", answer=answer, problem_type=problem_type, qtype=qtype)
        trajectories += [_trajectory(worker, sample, group, text) for text in responses]
    accounting = ChunkAccounting(groups=[1, 2, 3])
    shares = split_shards(trajectories, 2, 2)  # chunk offset: group 1 * G
    assert [len(s) for s in shares] == [3, 3]
    return worker.reward_batch(accounting, *shares), accounting


def test_a_chunk_is_scored_in_its_order_with_video_r1_and_custom_terms(scored):
    batch, accounting = scored
    assert batch.accounting == accounting
    results = batch.results
    assert [r.qtype for r in results] == ["which_car", "which_car", "speed", "speed", "distance", "distance"]
    assert [r.problem_type for r in results] == ["multiple choice"] * 2 + ["numerical"] * 2 + ["regression"] * 2
    half_off = 1.0 - (5 + 1e-9) / (10 + 1e-9)  # Video-R1's regression reward for 15 against 10
    assert [r.terms["task"] for r in results] == [1.0, 0.0, 1.0, 0.0, half_off, 1.0]
    assert [r.accuracy for r in results] == [r.terms["task"] for r in results]
    assert [r.terms["format"] for r in results] == [1.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    assert [r.terms["mentions"] for r in results] == [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    assert [r.terms["picky"] for r in results] == [0.25, 0.25, 0.25, 0.25, 0.0, 0.0]
    assert list(results[0].terms) == ["task", "format", "sparsity", "consistency", "mentions", "picky"]
    expected = [0.9 * t + 0.1 * f + 0.5 * m + 1.0 * p for t, f, m, p in
                [(1, 1, 1, 0.25), (0, 0, 0, 0.25), (1, 1, 1, 0.25), (0, 1, 0, 0.25), (half_off, 1, 0, 0), (1, 1, 1, 0)]]
    assert [r.total for r in results] == pytest.approx(expected, abs=1e-12)


def test_reasons_are_kept_per_term(scored):
    notes = [r.notes for r in scored[0].results]
    assert notes[1] == {"format": "no_think_tag"}
    assert notes[3] == {"task": "decimal_mismatch"}
    assert notes[4] == notes[5] == {"picky": "error_ZeroDivisionError"}  # the user's bug: 0 and counted
    assert notes[0] == notes[2] == {}


def test_per_type_summary(scored):
    results = scored[0].results
    summary = per_type_summary(results)
    assert list(summary) == ["distance", "speed", "which_car"]
    assert summary["which_car"]["n"] == 2 and summary["which_car"]["accuracy"] == 0.5
    assert summary["speed"]["reward"] == pytest.approx((results[2].total + results[3].total) / 2)
    nan_total = [results[0], dataclasses.replace(results[0], total=math.nan)]
    assert per_type_summary(nan_total)["which_car"]["reward"] == results[0].total


def test_a_custom_function_that_cannot_be_imported_never_stops_the_worker(tmp_path):
    cfg = RLJobConfig.model_validate({"rollout": {"num_workers": 1, "prompts_per_step": 1, "group_size": 1},
                                      "learner": {"num_ranks": 1, "num_minibatches": 1},
                                      "reward": {"custom": [{"name": "gone", "path": f"{tmp_path}/gone.py:f",
                                                             "weight": 1.0}]}})
    worker = RewardWorker(cfg.model_dump(mode="json"))  # the import fails here: logged, not raised
    sample = Sample(id="s", kind="image", images=[Image.new("RGB", (56, 56))], question="?", answer="red")
    trajectory = _trajectory(worker, sample, 0, "<think>a</think><answer>red</answer>")
    (result,) = worker.reward_batch(ChunkAccounting(groups=[0]), [trajectory]).results
    assert result.terms["gone"] == 0.0 and result.notes == {"gone": "import_failed"}
    assert result.terms["task"] == 1.0 and result.total == pytest.approx(1.0)
    assert (result.qtype, result.problem_type) == ("unknown", "free-form")
