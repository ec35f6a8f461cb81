"""The RL learner, in-process on one gloo rank: plain GRPO at lambda_attn = 0, the attention term's zero first
gradient, the one-update warning, non-finite skips, weight sync and checkpoints.

Trajectories are generated for real by a tiny Qwen2.5-VL built with the learner's seed, so the rollout weights
are the learner's version-0 weights.
"""

import copy
import dataclasses
import math

import pytest
import torch
from sampled import REWARDS, sampled_trajectories  # noqa: E402

from ral_dist.actors.learner import ONE_UPDATE_WARNING, Learner  # noqa: E402
from ral_dist.algorithms import aggregate_tokens, clipped_surrogate, k3_kl  # noqa: E402
from ral_dist.config import (
    DataConfig,
    RLJobConfig,  # noqa: E402
)
from ral_dist.messages.collate import learner_batch, response_batch  # noqa: E402
from ral_dist.models import adapter_for_checkpoint, build_policy  # noqa: E402
from ral_dist.models.generation import forward_responses  # noqa: E402

SEED = 0
G = 4
MODE = "think"


@pytest.fixture(scope="module")
def port(gloo_port):
    return gloo_port  # the session's single-rank gloo group (tests/conftest.py)


def _config(steps: int = 100, **learner) -> dict:
    base = {"num_ranks": 1, "zero_stage": 0, "lr": 1e-3, "beta": 0.0, "lambda_attn": 0.0, "num_minibatches": 1,
            "ppo_epochs": 1}
    base.update(learner)
    return RLJobConfig.model_validate({
        "run": {"seed": SEED, "steps": steps}, "data": {"prompt": {"mode": MODE}},
        "rollout": {"temperature": 1.0, "max_new_tokens": 8, "attention_wire_dtype": "float32"},
        "learner": base,
    }).model_dump(mode="json")


def _learner(port, steps: int = 100, **learner) -> Learner:
    return Learner(0, 1, "127.0.0.1", port, _config(steps, **learner), threads=1)


@pytest.fixture(scope="module")
def sampled():
    """2 prompts x G=4 responses sampled by the version-0 weights, and their mixed-sign advantages."""
    trajs, advantages = sampled_trajectories(G, mode=MODE, rewards=REWARDS)
    assert {a > 0 for a in advantages} == {True, False}
    return trajs, advantages


@pytest.fixture(scope="module")
def trajectories(sampled):
    return sampled[0]


@pytest.fixture(scope="module")
def advantages(sampled):
    return sampled[1]


def _params(learner: Learner) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in learner.ds_engine.module.named_parameters()}


SOME = ("model.language_model.layers.3.self_attn.q_proj.weight", "model.language_model.layers.0.mlp.up_proj.weight",
        "lm_head.weight", "model.visual.blocks.0.attn.qkv.weight")


def test_lambda_zero_is_plain_grpo(port, trajectories, advantages):
    lr, wd, clip, beta = 1e-3, 0.01, 0.05, 0.04
    learner = _learner(port, lr=lr, weight_decay=wd, grad_clip=clip, beta=beta, lambda_attn=0.0)
    for step in range(2):  # the 2nd step has policy != reference, so the KL term carries gradient
        stats = learner.train_step(step, trajectories, advantages)
    assert stats.skipped_updates == 0 and stats.version == 2 and stats.warnings == []
    assert stats.attn_grad_norm_by_minibatch == [0.0] and stats.kl > 0

    # the same two updates written out with plain torch
    adapter, model, processor = build_policy("qwen2_5_vl", None, {}, seed=SEED)
    model.train()
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd, fused=True)  # as init_engine
    batch = learner_batch(adapter, processor, trajectories, advantages, DataConfig(prompt={"mode": MODE}))
    pad = processor.tokenizer.pad_token_id
    norms = []
    for _ in range(2):
        args = (batch.prompts, batch.response_ids, batch.response_mask, pad)
        with torch.no_grad():
            ref_logp = forward_responses(adapter, ref, *args, banned=adapter.banned_token_ids(processor), capture=False).logprobs
        logp = forward_responses(adapter, model, *args, banned=adapter.banned_token_ids(processor), capture=False).logprobs
        policy, _ = clipped_surrogate(logp, batch.old_logprobs, batch.advantages, batch.response_mask, 0.2)
        loss = policy + beta * aggregate_tokens(k3_kl(logp, ref_logp), batch.response_mask)
        opt.zero_grad()
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip)))
        opt.step()
    assert min(norms) > clip  # clipping was active, so it is part of what is compared

    got, want = _params(learner), dict(model.named_parameters())
    assert learner.param_digest() == pytest.approx(sum(float(p.detach().double().sum()) for p in model.parameters()),
                                                   abs=1e-4)
    for name in SOME:
        assert torch.allclose(got[name], want[name].detach(), atol=1e-6), name


@pytest.mark.parametrize("old_policy", ["rollout", "recompute"])
def test_attention_gradient_is_zero_on_the_first_minibatch_only(port, trajectories, advantages, old_policy):
    if old_policy == "recompute":
        # fp16 rows on the wire differ from p_theta by rounding; recomputing p_old here must remove that
        trajectories = [dataclasses.replace(t, behaviour=dataclasses.replace(
            t.behaviour, attention=t.behaviour.attention.half())) for t in trajectories]
    learner = _learner(port, lambda_attn=1.0, num_minibatches=2, old_policy=old_policy)
    stats = learner.train_step(0, trajectories, advantages)
    by_mb = stats.attn_grad_norm_by_minibatch
    assert len(by_mb) == 2
    assert by_mb[0] == stats.attn_grad_norm_first
    if old_policy == "recompute":  # theta == theta_old and p_old from this very forward: the JSD gradient vanishes
        assert by_mb[0] == 0.0
    else:  # p_old from the sampling passes, equal to this forward up to float rounding
        assert by_mb[0] < 1e-7
    assert by_mb[1] > 1e-4  # after one update the attention term acts
    assert stats.warnings == [] and stats.attn_jsd > 0 and stats.skipped_updates == 0


def test_attention_gradient_share_grows_with_lambda(port, trajectories, advantages):
    """The term's share of the whole update's gradient (RAL.md §3): the first update is the same for every lambda
    (theta == theta_old: the term has no gradient), so on the second the term's gradient is exactly lambda times
    larger, and its share of the update grows with it."""
    small, large = (_learner(port, lambda_attn=lam, num_minibatches=2, old_policy="recompute").train_step(
        0, trajectories, advantages) for lam in (1.0, 10.0))
    assert small.attn_grad_norm_by_minibatch[0] == large.attn_grad_norm_by_minibatch[0] == 0.0
    assert large.attn_grad_norm_by_minibatch[1] == pytest.approx(10 * small.attn_grad_norm_by_minibatch[1], rel=1e-4)
    assert 0 < small.attn_grad_share < large.attn_grad_share


def test_attention_gradient_norm_is_measured_every_nth_step_only(port, trajectories, advantages):
    learner = _learner(port, lambda_attn=1.0, num_minibatches=2, attn_grad_norm_every=2)
    norms = [learner.train_step(step, trajectories, advantages).attn_grad_norm_by_minibatch for step in range(3)]
    assert norms[0][0] < 1e-7 and norms[0][1] > 1e-4 and norms[2][1] > 1e-4  # steps 0 and 2: measured
    assert all(math.isnan(g) for g in norms[1])  # step 1: not measured, said by NaN (never a made-up 0)


def test_lr_warmup_scales_the_first_steps(port, trajectories, advantages):
    """Adam's first update moves a weight by the full lr whatever its gradient; warm-up makes that lr / warmup_steps."""
    learner = _learner(port, lr=1e-3, warmup_steps=4)
    before = _params(learner)
    stats = learner.train_step(0, trajectories, advantages)
    moved = max(float((p - before[n]).abs().max()) for n, p in _params(learner).items())
    assert stats.lr == pytest.approx(2.5e-4) and moved == pytest.approx(2.5e-4, rel=1e-3)
    assert [learner.train_step(s, trajectories, advantages).lr for s in (1, 3, 7)] == pytest.approx([5e-4, 1e-3, 1e-3])


def test_lr_cosine_decay_reaches_the_floor_at_the_last_step(port, trajectories, advantages):
    learner = _learner(port, steps=14, lr=1e-3, warmup_steps=4, min_lr_ratio=0.1)
    lrs = [learner.train_step(s, trajectories, advantages).lr for s in (3, 9, 14)]
    assert lrs == pytest.approx([1e-3, 5.5e-4, 1e-4])  # end of warm-up, half-way (0.1 + 0.9 / 2), the floor


def test_one_update_per_batch_warns_and_equals_grpo(port, trajectories, advantages):
    ral = _learner(port, lambda_attn=1.0, old_policy="recompute")
    assert ral.warnings == [ONE_UPDATE_WARNING]
    stats = ral.train_step(0, trajectories, advantages)
    assert ONE_UPDATE_WARNING in stats.warnings and stats.attn_grad_norm_first == 0.0
    grpo = _learner(port, lambda_attn=0.0, old_policy="recompute")
    assert grpo.warnings == []
    grpo.train_step(0, trajectories, advantages)
    assert ral.param_digest() != pytest.approx(_learner_initial_digest(), abs=1e-6)  # it did move
    assert ral.param_digest() == grpo.param_digest()
    a, b = _params(ral), _params(grpo)
    assert all(torch.equal(a[n], b[n]) for n in a)


_INITIAL: dict[str, float] = {}


def _learner_initial_digest() -> float:
    if "digest" not in _INITIAL:
        _, model, _ = build_policy("qwen2_5_vl", None, {}, seed=SEED)
        _INITIAL["digest"] = float(sum(p.detach().double().sum() for p in model.parameters()))
    return _INITIAL["digest"]


def test_non_finite_inputs_skip_the_update(port, trajectories, advantages):
    learner = _learner(port, lambda_attn=1.0, beta=0.04, num_minibatches=1)
    before = learner.param_digest()
    assert before == pytest.approx(_learner_initial_digest(), abs=1e-9)

    bad_adv = list(advantages)
    bad_adv[3] = float("nan")
    bad_lp = list(trajectories)
    nan_first = bad_lp[5].behaviour.logprobs.clone()
    nan_first[0] = float("nan")
    bad_lp[5] = dataclasses.replace(bad_lp[5], behaviour=dataclasses.replace(bad_lp[5].behaviour, logprobs=nan_first))
    for step, (trajs, adv) in enumerate(((trajectories, bad_adv), (bad_lp, advantages))):
        stats = learner.train_step(step, trajs, adv)
        assert stats.skipped_updates == 1 and stats.updates == 0
        assert any("non-finite" in w for w in stats.warnings)
        assert learner.param_digest() == before
        assert all(torch.isfinite(p).all() for p in learner.ds_engine.module.parameters())

    stats = learner.train_step(2, trajectories, advantages)  # clean data trains again
    assert stats.skipped_updates == 0 and learner.param_digest() != before
    assert stats.version == 3


def _logits(adapter, model, processor, trajectories):
    batch = response_batch(adapter, processor, trajectories[:3], DataConfig(prompt={"mode": MODE}))
    with torch.no_grad():
        return model(**batch.prompts.inputs).logits


def test_state_dict_loads_strictly_into_a_fresh_model_zero2(port, trajectories, advantages):
    learner = _learner(port, zero_stage=2, lambda_attn=1.0, num_minibatches=2)
    stats = learner.train_step(0, trajectories, advantages)
    assert stats.skipped_updates == 0 and stats.attn_grad_norm_by_minibatch[1] > 0
    state = learner.state_dict()
    fresh = learner.adapter.model_class()(learner.ds_engine.module.config)
    fresh.load_state_dict(state, strict=True)
    fresh.eval()
    learner.ds_engine.module.eval()
    want = _logits(learner.adapter, learner.ds_engine.module, learner.processor, trajectories)
    got = _logits(learner.adapter, fresh, learner.processor, trajectories)
    assert torch.equal(got, want)
    assert learner.param_digest() != pytest.approx(_learner_initial_digest(), abs=1e-6)


def test_checkpoint_round_trip_restores_version_weights_and_optimizer(port, trajectories, advantages, tmp_path):
    cfg = {"zero_stage": 2, "lambda_attn": 1.0, "num_minibatches": 2}
    a = _learner(port, **cfg)
    a.train_step(0, trajectories, advantages)
    a.save_checkpoint(str(tmp_path))
    b = _learner(port, **cfg)
    assert b.load_checkpoint(str(tmp_path)) == 1 and b.version == 1
    assert b.param_digest() == a.param_digest()
    pa, pb = _params(a), _params(b)
    assert all(torch.equal(pa[n], pb[n]) for n in pa)
    # Adam moments came back too: the next update is the same on both
    a.train_step(1, trajectories, advantages)
    b.train_step(1, trajectories, advantages)
    assert b.param_digest() == a.param_digest()

    adapter = adapter_for_checkpoint(tmp_path)
    model, processor = adapter.load(tmp_path)
    for name, p in model.named_parameters():
        assert torch.equal(p, pa[name]), name


def test_plain_grpo_computes_no_attention_anywhere(port, trajectories, advantages, monkeypatch):
    """lambda_attn 0 and no attention reward term: neither the rollout nor the learner computes a single q·K^T row
    (`RLJobConfig.rollout_captures` / `learner_captures`), and the update is exactly the one whose rows were
    computed and unused."""
    from ral_dist.models import capture

    grpo = RLJobConfig.model_validate(_config(lambda_attn=0.0))
    assert not grpo.rollout_captures and not grpo.learner_captures
    ral = RLJobConfig.model_validate(_config(lambda_attn=1.0))
    assert ral.rollout_captures and ral.learner_captures
    rewarded = RLJobConfig.model_validate(_config(lambda_attn=0.0) | {"reward": {"weights": {"sparsity": 0.1}}})
    assert rewarded.rollout_captures and not rewarded.learner_captures  # the reward reads the rollout's rows

    calls = []
    rows_attention_policy = capture.rows_attention_policy
    monkeypatch.setattr(capture, "rows_attention_policy", lambda *a, **k: calls.append(1) or rows_attention_policy(*a, **k))
    bare, _ = sampled_trajectories(G, mode=MODE, rewards=REWARDS, capture=grpo.rollout_captures)
    assert calls == [] and all(t.behaviour.attention is None and t.behaviour.question_attention is None for t in bare)
    for t, full in zip(bare, trajectories, strict=True):  # the same responses and log-probs as with the capture
        assert torch.equal(t.response.ids, full.response.ids)
        assert torch.allclose(t.behaviour.logprobs, full.behaviour.logprobs, rtol=0, atol=1e-6)
    # the learner's comparison on identical inputs: the captured trajectories, their rows dropped
    bare = [dataclasses.replace(t, behaviour=dataclasses.replace(t.behaviour, attention=None, question_attention=None))
            for t in trajectories]
    learner = _learner(port, lambda_attn=0.0, beta=0.04)
    stats = learner.train_step(0, bare, advantages)
    assert calls == [] and math.isnan(stats.attn_jsd) and stats.attn_loss == 0.0

    monkeypatch.setattr(RLJobConfig, "learner_captures", property(lambda self: True))  # rows computed, unused
    unused = _learner(port, lambda_attn=0.0, beta=0.04)
    unused_stats = unused.train_step(0, trajectories, advantages)
    assert calls and math.isfinite(unused_stats.attn_jsd)  # ~0: the first update, p_theta = p_old
    assert (stats.loss, stats.policy_loss, stats.kl) == (unused_stats.loss, unused_stats.policy_loss, unused_stats.kl)
    after, reference = _params(learner), _params(unused)
    assert all(torch.equal(after[n], reference[n]) for n in after)
