"""The student learner of the distillation job, in-process on one gloo rank (no Ray): the loss is GRPO +
mu * reverse KL + gamma_attn * attention JSD, gamma_attn = 0 is exactly on-policy KD, a teacher equal to the
student gives zero divergences.

Teachers are random tiny Qwen2.5-VLs (no SFT: these are identities of the loss, not of what a teacher knows).
"""

import dataclasses

import pytest
import torch
from sampled import REWARDS, sampled_trajectories  # noqa: E402

from ral_dist.distill.learner import DistillLearner  # noqa: E402
from ral_dist.distill.pairing import side_fingerprint  # noqa: E402
from ral_dist.distill.teacher import TeacherActor  # noqa: E402
from ral_dist.distill_config import DistillJobConfig  # noqa: E402

MODE = "think"
G = 4
LARGER = {"text": {"hidden_size": 192, "intermediate_size": 384, "num_hidden_layers": 6, "num_attention_heads": 6,
                   "num_key_value_heads": 2}}


@pytest.fixture(scope="module")
def port(gloo_port):
    return gloo_port  # the session's single-rank gloo group (tests/conftest.py)


def _config(gamma_attn=0.5, mu=1.0, teacher_tiny=LARGER, teacher_seed=1, top_k=None) -> dict:
    return DistillJobConfig.model_validate({
        "run": {"seed": 0}, "data": {"prompt": {"mode": MODE}},
        "rollout": {"temperature": 1.0, "max_new_tokens": 8, "attention_wire_dtype": "float32"},
        "learner": {"num_ranks": 1, "zero_stage": 0, "lr": 1e-3, "beta": 0.0, "num_minibatches": 1},
        "teacher": {"tiny": teacher_tiny, "seed": teacher_seed, "top_k": top_k},
        "distill": {"mu": mu, "gamma_attn": gamma_attn},
    }).model_dump(mode="json")


@pytest.fixture(scope="module")
def sampled():
    """2 prompts x G responses of the student's version-0 weights, and their group advantages."""
    return sampled_trajectories(G, mode=MODE, rewards=REWARDS)


@pytest.fixture(scope="module")
def trajectories(sampled):
    return sampled[0]


def _targets(trajectories, **config):
    teacher = TeacherActor(0, _config(**config), side_fingerprint("qwen2_5_vl", None, {}))
    return teacher.targets_of(trajectories)


def _step(port, sampled, targets, **config):
    learner = DistillLearner(0, 1, "127.0.0.1", port, _config(**config))
    stats = learner.train_step(0, *sampled, teacher=[targets])
    params = {n: p.detach().clone() for n, p in learner.ds_engine.module.named_parameters()}
    return stats, params


def test_the_loss_is_grpo_plus_the_distillation_terms(port, sampled, trajectories):
    targets = _targets(trajectories)
    stats, _ = _step(port, sampled, targets, gamma_attn=0.7, mu=2.0)
    assert stats.extra["reverse_kl"] > 0.01 and stats.extra["teacher_attn_jsd"] > 1e-6 and stats.extra["teacher_wait_s"] >= 0
    # one update on the version-0 weights: ratio 1, KL 0, so the total is exactly the sum of its terms
    assert stats.loss == pytest.approx(stats.policy_loss + 2.0 * stats.extra["reverse_kl"]
                                          + 0.7 * stats.extra["teacher_attn_jsd"], rel=1e-6)


def test_gamma_zero_is_on_policy_kd_whatever_the_teacher_attends_to(port, sampled, trajectories):
    targets = _targets(trajectories)
    # the same teacher tokens, but attention rows that put every row's mass on its first key
    first_key = [torch.zeros_like(t.attention) for t in targets]
    for rows in first_key:
        rows[:, 0] = 1.0
    shifted = [dataclasses.replace(t, attention=rows) for t, rows in zip(targets, first_key, strict=True)]
    kd, kd_params = _step(port, sampled, targets, gamma_attn=0.0)
    kd2, kd2_params = _step(port, sampled, shifted, gamma_attn=0.0)
    assert kd.loss == pytest.approx(kd.policy_loss + kd.extra["reverse_kl"], rel=1e-6)
    assert kd2.extra["teacher_attn_jsd"] > kd.extra["teacher_attn_jsd"] + 0.1  # logged, but no part of the loss
    assert all(torch.equal(kd_params[n], kd2_params[n]) for n in kd_params)  # bit-identical updates
    # the same switch on: now the attention rows move the weights
    _, on_params = _step(port, sampled, targets, gamma_attn=1.0)
    _, on2_params = _step(port, sampled, shifted, gamma_attn=1.0)
    assert not all(torch.equal(on_params[n], on2_params[n]) for n in on_params)


def test_a_teacher_equal_to_the_student_gives_zero_divergence(port, sampled, trajectories):
    # the student's own architecture and initial weights (seed 0) as the teacher, top-k targets
    targets = _targets(trajectories, teacher_tiny={}, teacher_seed=0, top_k=16)
    stats, _ = _step(port, sampled, targets, gamma_attn=1.0)
    assert abs(stats.extra["reverse_kl"]) < 1e-5 and stats.extra["teacher_attn_jsd"] < 1e-6
    assert stats.loss == pytest.approx(stats.policy_loss, abs=1e-5)


def test_targets_must_cover_every_trajectory(port, sampled, trajectories):
    targets = _targets(trajectories[:2])
    learner = DistillLearner(0, 1, "127.0.0.1", port, _config())
    with pytest.raises(ValueError, match="2 teacher targets for 8 trajectories"):
        learner.train_step(0, *sampled, teacher=[targets])
    with pytest.raises(ValueError, match="needs the teacher's targets"):
        learner.train_step(0, *sampled)
