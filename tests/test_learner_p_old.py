"""Which weights p_old comes from with learner.old_policy=recompute (RAL.md §3; README 'Which weights p_old comes
from'): the old log-probs are always the learner's at the step's start; the attention rows are the behaviour
policy's whenever they exist. In sync mode the learner holds the weights that sampled, so its recomputed rows are
the behaviour's; a stale trajectory (one_step_off) keeps the rows its rollout captured; only with
rollout.attention_on=learner (no rows sent) does a stale trajectory get the learner's rows, with a warning.

One gloo rank, real DeepSpeed; trajectories sampled by the tiny model's version-0 weights.
"""

import dataclasses

import pytest
import torch
from sampled import REWARDS, sampled_trajectories

from ral_dist.actors.learner import STALE_P_OLD_WARNING, Learner
from ral_dist.config import RLJobConfig

ROLLOUT_ROWS = {}  # the hf engine: the rollout captures p_old as it samples
NO_ROWS = {"engine": "vllm", "attention_on": "learner"}  # vLLM without the replica: the learner scores p_old


@pytest.fixture(scope="module")
def port(gloo_port):
    return gloo_port


@pytest.fixture(scope="module")
def sampled():
    return sampled_trajectories(4, rewards=REWARDS)


def _learner(port, rollout: dict) -> Learner:
    cfg = RLJobConfig.model_validate({
        "run": {"seed": 0, "mode": "one_step_off"}, "data": {"prompt": {"mode": "think"}},
        "rollout": {"temperature": 1.0, "max_new_tokens": 8, "attention_wire_dtype": "float32"} | rollout,
        "learner": {"num_ranks": 1, "lr": 1e-3, "num_minibatches": 2, "old_policy": "recompute",
                    "attn_grad_norm_every": 1}})
    return Learner(0, 1, "127.0.0.1", port, cfg.model_dump(mode="json"))


def _versions(trajs, version: int) -> list:
    return [dataclasses.replace(t, behaviour=dataclasses.replace(t.behaviour, version=version)) for t in trajs]


@pytest.mark.parametrize("rollout", [ROLLOUT_ROWS, NO_ROWS], ids=["rows_sent", "no_rows"])
def test_p_old_is_the_behaviour_policys_whenever_it_exists(port, sampled, rollout):
    trajs, advantages = sampled
    learner = _learner(port, rollout)
    learner.train_step(0, trajs, advantages)  # the learner is now at version 1; the trajectories are version 0
    # half of them fresh (sampled by version 1, as in sync mode), half stale (one step behind, one_step_off)
    mixed = _versions(trajs[:4], 1) + trajs[4:]
    shard, _ = learner.prepare_step(1, mixed, advantages)
    fresh, stale = shard.trajectories[:4], shard.trajectories[4:]
    # the recomputed rows of the fresh half, and what version 1 gives for the stale half
    recomputed, _ = learner.prepare_step(1, _versions(trajs, 1), advantages)
    for got, now in zip(fresh, recomputed.trajectories[:4], strict=True):
        assert torch.equal(got.behaviour.attention, now.behaviour.attention)
    for got, sent, now in zip(stale, trajs[4:], recomputed.trajectories[4:], strict=True):
        assert torch.equal(got.behaviour.logprobs, now.behaviour.logprobs)  # old log-probs: always the learner's
        assert not torch.equal(got.behaviour.logprobs, sent.behaviour.logprobs)
        if rollout is ROLLOUT_ROWS:
            assert torch.equal(got.behaviour.attention, sent.behaviour.attention)  # behaviour rows kept
            assert (got.behaviour.attention - now.behaviour.attention).abs().max() > 1e-4
        else:
            assert torch.equal(got.behaviour.attention, now.behaviour.attention)
    assert (STALE_P_OLD_WARNING in learner.warnings) == (rollout is NO_ROWS)


def test_in_sync_mode_the_first_update_sees_p_old_exactly(port, sampled):
    trajs, advantages = sampled
    learner = _learner(port, ROLLOUT_ROWS)
    learner.train_step(0, trajs, advantages)
    stats = learner.train_step(1, _versions(trajs, 1), advantages)  # sampled by the weights the learner holds
    assert stats.attn_grad_norm_first == 0.0 and STALE_P_OLD_WARNING not in stats.warnings
