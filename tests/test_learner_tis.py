"""Truncated importance sampling in the learner, in-process on one gloo rank with real DeepSpeed: perturbed rollout
log-probs give exactly the update of the hand-weighted loss, and the step's TIS stats are the hand values.

Trajectories are sampled for real by a tiny Qwen2.5-VL built with the learner's seed (version-0 weights); their
log-probs are then perturbed to stand for a rollout engine whose numerics differ from the learner's.
"""


import dataclasses

import pytest
import torch
from sampled import REWARDS, sampled_trajectories  # noqa: E402

from ral_dist.actors.learner import Learner  # noqa: E402
from ral_dist.actors.step_layout import minibatch_indices  # noqa: E402
from ral_dist.config import ConfigError, DataConfig, RLJobConfig, load_config  # noqa: E402
from ral_dist.messages.collate import learner_batch  # noqa: E402
from ral_dist.models import build_policy  # noqa: E402
from ral_dist.models.generation import forward_responses  # noqa: E402

SEED, G, MODE, CAP = 0, 4, "think", 2.0
LR, WD, CLIP = 1e-3, 0.01, 0.05
# Added to each token's rollout log-prob in turn: w = min(exp(-delta), CAP) is about 2.7 -> 2 (truncated), 0.74,
# 1.22 and 0.61.
DELTAS = (-1.0, 0.3, -0.2, 0.5)


@pytest.fixture(scope="module")
def port(gloo_port):
    return gloo_port  # the session's single-rank gloo group (tests/conftest.py)


@pytest.fixture(scope="module")
def sampled():
    """2 prompts x G responses from the version-0 weights with perturbed rollout log-probs, and mixed-sign
    advantages."""
    trajs, advantages = sampled_trajectories(G, mode=MODE, rewards=REWARDS)
    k, perturbed = 0, []
    for t in trajs:
        deltas = torch.tensor([DELTAS[(k + j) % len(DELTAS)] for j in range(len(t.behaviour.logprobs))])
        behaviour = dataclasses.replace(t.behaviour, logprobs=t.behaviour.logprobs + deltas)
        perturbed.append(dataclasses.replace(t, behaviour=behaviour))
        k += len(deltas)
    return perturbed, advantages


def _learner(port, **learner) -> Learner:
    base = {"num_ranks": 1, "zero_stage": 0, "lr": LR, "weight_decay": WD, "grad_clip": CLIP, "beta": 0.0,
            "lambda_attn": 0.0, "num_minibatches": 2, "ppo_epochs": 1, "old_policy": "recompute"}
    config = RLJobConfig.model_validate({
        "run": {"seed": SEED}, "data": {"prompt": {"mode": MODE}},
        "rollout": {"temperature": 1.0, "max_new_tokens": 8, "attention_wire_dtype": "float32"},
        "learner": base | learner,
    }).model_dump(mode="json")
    return Learner(0, 1, "127.0.0.1", port, config, threads=1)


def test_tis_update_equals_the_hand_weighted_update(port, sampled):
    trajectories, advantages = sampled
    learner = _learner(port, tis_cap=CAP)
    minibatches = minibatch_indices(len(trajectories), 2, [SEED, 0, 0, 0],
                                    [t.prompt_key for t in trajectories])  # the learner's own split (step 0, rank 0)
    stats = learner.train_step(0, trajectories, advantages)
    assert stats.updates == 2 and stats.skipped_updates == 0

    # the same two updates by hand: old log-probs recomputed by the initial weights, w = min(exp(old - rollout), C)
    adapter, model, processor = build_policy("qwen2_5_vl", None, {}, seed=SEED)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD, fused=True)  # as init_engine
    pad = processor.tokenizer.pad_token_id
    batches = [learner_batch(adapter, processor, [trajectories[i] for i in mb], [advantages[i] for i in mb], DataConfig(prompt={"mode": MODE}),
                             share=True)
               for mb in minibatches]
    olds, all_w = [], []
    with torch.no_grad():
        for b in batches:
            olds.append(forward_responses(adapter, model, b.prompts, b.response_ids, b.response_mask, pad,
                                          banned=adapter.banned_token_ids(processor), capture=False,
                                          shared=b.shared).logprobs)
    for b, old in zip(batches, olds, strict=True):
        keep = b.response_mask.bool()
        w = torch.where(keep, torch.exp(old - b.old_logprobs).clamp(max=CAP), torch.zeros_like(old))
        all_w.append(w[keep])
        logp = forward_responses(adapter, model, b.prompts, b.response_ids, b.response_mask, pad,
                                 banned=adapter.banned_token_ids(processor), capture=False, shared=b.shared).logprobs
        ratio = torch.exp(logp - old)
        adv = b.advantages[:, None]
        per_token = -torch.minimum(ratio * adv, ratio.clamp(0.8, 1.2) * adv) * w
        loss = per_token[keep].sum() / keep.sum()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()

    got = dict(learner.ds_engine.module.named_parameters())
    for name, p in model.named_parameters():
        assert torch.allclose(got[name].detach(), p.detach(), atol=1e-6), name

    w = torch.cat(all_w)
    ratio = torch.cat([torch.exp(old - b.old_logprobs)[b.response_mask.bool()] for b, old in zip(batches, olds,
                                                                                                  strict=True)])
    assert stats.extra["tis_weight_mean"] == pytest.approx(float(w.mean()), abs=1e-6)
    assert stats.extra["tis_ratio_max"] == pytest.approx(float(ratio.max()), rel=1e-5)
    assert stats.extra["tis_truncated_fraction"] == pytest.approx(float((ratio > CAP).float().mean()), abs=1e-9)
    assert 0.1 < stats.extra["tis_truncated_fraction"] < 0.5 and stats.extra["tis_ratio_max"] > CAP  # truncation was active

    # without TIS the same data trains differently: the weights are what moved the result
    plain = _learner(port)
    plain_stats = plain.train_step(0, trajectories, advantages)
    assert not any(k.startswith("tis_") for k in plain_stats.extra)
    assert abs(plain.param_digest() - learner.param_digest()) > 1e-3


def test_tis_needs_the_recomputed_old_policy():
    with pytest.raises(ConfigError, match=r"learner: .*tis_cap=2.0 .*learner.old_policy='recompute'"):
        load_config(RLJobConfig, None, ["learner.tis_cap=2.0", "learner.old_policy=rollout"])
    with pytest.raises(ConfigError, match=r"learner.tis_cap: Input should be greater than or equal to 1"):
        load_config(RLJobConfig, None, ["learner.tis_cap=0.5", "learner.old_policy=recompute"])
