"""The learner at real sizes, proved in-process on CPU (one gloo rank, real DeepSpeed): micro-batches and gradient
checkpointing give the whole mini-batch's update, the loss is one mean over the whole mini-batch on all ranks, the
attention term's measuring pass leaves the update untouched, and ZeRO-3 builds, trains and reports like the
other stages.

Trajectories are sampled for real by a tiny Qwen2.5-VL with the learner's seed (the version-0 weights), then cut to
ragged lengths, as EOS makes them.
"""

import dataclasses
import math
import subprocess
import sys

import pytest
import torch
from sampled import REWARDS, sampled_trajectories

from ral_dist.actors.learner import Learner
from ral_dist.algorithms import Denominators, ral_loss
from ral_dist.config import RLJobConfig
from ral_dist.distill.learner import DistillLearner
from ral_dist.distill.pairing import side_fingerprint
from ral_dist.distill.teacher import TeacherActor
from ral_dist.distill_config import DistillJobConfig
from ral_dist.messages.collate import pack_micro_batches, split_groups
from ral_dist.models import build_policy

MODE = "think"
BASE = {"num_ranks": 1, "zero_stage": 0, "lr": 1e-3, "beta": 0.04, "lambda_attn": 1.0, "num_minibatches": 2,
        "ppo_epochs": 1, "old_policy": "recompute", "attn_grad_norm_every": 1000}


@pytest.fixture(scope="module")
def port(gloo_port):
    return gloo_port  # the session's single-rank gloo group (tests/conftest.py)


@pytest.fixture(scope="module")
def sampled():
    trajs, advantages = sampled_trajectories(4, mode=MODE, rewards=REWARDS)
    ragged = []
    for i, t in enumerate(trajs):  # response lengths 8, 7, ..., 1: micro-batches of different shapes
        n, b = 8 - i, t.behaviour
        ragged.append(dataclasses.replace(
            t, response=dataclasses.replace(t.response, ids=t.response.ids[:n]),
            behaviour=dataclasses.replace(b, logprobs=b.logprobs[:n], attention=b.attention[:n, : t.prompt.length + n])))
    return ragged, advantages


def _config(cls=RLJobConfig, model: dict | None = None, **learner) -> dict:
    tree = {"run": {"seed": 0, "steps": 100}, "data": {"prompt": {"mode": MODE}}, "model": model or {},
            "rollout": {"temperature": 1.0, "max_new_tokens": 8, "attention_wire_dtype": "float32"},
            "learner": BASE | learner}
    if cls is DistillJobConfig:
        tree |= {"teacher": {"tiny": {}, "seed": 1, "top_k": 8},  # same shape, other weights
                 "distill": {"mu": 1.0, "gamma_attn": 0.5}}
    return cls.model_validate(tree).model_dump(mode="json")


def _params(learner) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in learner.ds_engine.module.named_parameters()}


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[n] - b[n]).abs().max()) for n in a)


def _at_version(trajs: list, version: int) -> list:
    return [dataclasses.replace(t, behaviour=dataclasses.replace(t.behaviour, version=version)) for t in trajs]


def _recording_gradients(learner) -> list[dict[str, torch.Tensor]]:
    """The accumulated gradient of every update, read as the optimizer step starts (ZeRO-0: on the parameters)."""
    seen, step = [], learner.ds_engine.step

    def recording_step(*args, **kwargs):
        seen.append({n: p.grad.clone() for n, p in learner.ds_engine.module.named_parameters() if p.grad is not None})
        return step(*args, **kwargs)

    learner.ds_engine.step = recording_step
    return seen


def test_packing_fills_the_budget_longest_first_and_splits_to_a_common_count():
    lengths = [30, 10, 50, 20, 40]
    assert pack_micro_batches(lengths, None) == [[0, 1, 2, 3, 4]]  # no budget: the mini-batch in order
    groups = pack_micro_batches(lengths, 100)  # padded to the group's longest: 50 + 40 fit, 3 x 40 does not
    assert groups == [[2, 4], [0, 3, 1]]
    assert all(len(g) * max(lengths[i] for i in g) <= 100 for g in groups)
    assert pack_micro_batches([500, 3], 100) == [[0], [1]]  # a sequence over the budget still gets a forward
    assert split_groups(groups, 4) == [[2], [4], [0], [3, 1]]
    assert split_groups([[0]], 3) == [[0], [], []]  # fewer sequences than forwards: empty ones keep ranks in step


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean"])
def test_parts_of_a_batch_add_up_to_its_mean_over_ranks(mode):
    """Two ranks x two micro-batches: the mean of the ranks' summed micro-batch losses is the whole batch's loss,
    value and gradient (what DeepSpeed's averaging of the ranks' gradients makes of them)."""
    g = torch.Generator().manual_seed(0)
    B, T, K = 8, 6, 10
    logp = (torch.randn(B, T, generator=g) - 2).requires_grad_()
    old, ref = logp.detach() + 0.1 * torch.randn(B, T, generator=g), logp.detach() - 0.1
    mask = (torch.arange(T)[None] < torch.tensor([6, 1, 3, 6, 2, 5, 4, 6])[:, None]).long()
    adv = torch.randn(B, generator=g)
    p_theta = torch.softmax(torch.randn(B, T, K, generator=g), -1).requires_grad_()
    p_old = torch.softmax(torch.randn(B, T, K, generator=g), -1)
    kw = {"clip_eps": 0.2, "beta": 0.04, "lambda_attn": 1.0, "mode": mode}
    whole = ral_loss(logp, old, ref, mask, adv, p_theta, p_old, mask, **kw)
    want = torch.autograd.grad(whole.total, (logp, p_theta))
    ranks = 2
    shares = Denominators(tokens=float(mask.sum()) / ranks, sequences=float(mask.any(-1).sum()) / ranks)
    total = 0.0
    for rows in ([0, 1], [2, 3], [4, 5, 6], [7]):  # ranks 0 and 1, two micro-batches each
        part = ral_loss(logp[rows], old[rows], ref[rows], mask[rows], adv[rows], p_theta[rows], p_old[rows],
                        mask[rows], denominators=shares, **kw)
        total = total + part.total / ranks
    got = torch.autograd.grad(total, (logp, p_theta))
    assert total.item() == pytest.approx(whole.total.item(), rel=1e-6, abs=1e-7)
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(got, want, strict=True))


@pytest.mark.parametrize("checkpointing", [False, True])
def test_micro_batches_give_the_whole_mini_batch_update(port, sampled, checkpointing):
    """Each update's accumulated gradient equals the whole mini-batch's within 1e-6 (fp32: the sums run in another
    order); Adam then turns those last bits of near-zero components into parameter differences of up to ~1e-5
    (its first step is lr * g / (|g| + eps): a component whose |g| is near eps moves by a fraction of lr that
    its last bits decide)."""
    whole = Learner(0, 1, "127.0.0.1", port, _config())
    grads_whole = _recording_gradients(whole)
    stats_whole = whole.train_step(0, *sampled)
    model = {"gradient_checkpointing": checkpointing}
    micro = Learner(0, 1, "127.0.0.1", port, _config(model=model, micro_batch_tokens=2 * 150))
    assert [len(g) for g in micro.prepare_step(0, *sampled)[0].layout[0][0]] != [4]  # really cut
    grads_micro = _recording_gradients(micro)
    stats_micro = micro.train_step(0, *sampled)
    assert len(grads_micro) == len(grads_whole) == 2
    for a, b in zip(grads_whole, grads_micro, strict=True):
        assert a.keys() == b.keys() and _max_diff(a, b) <= 1e-6
    assert _max_diff(_params(whole), _params(micro)) <= 3e-5
    for key in ("loss", "policy_loss", "kl", "attn_loss", "attn_jsd", "clip_fraction"):
        assert getattr(stats_micro, key) == pytest.approx(getattr(stats_whole, key), rel=1e-5, abs=1e-7), key


def test_micro_batches_give_the_whole_distillation_update(port, sampled):
    teacher = TeacherActor(0, _config(DistillJobConfig), side_fingerprint("qwen2_5_vl", None, {}))
    targets = teacher.targets_of(sampled[0])
    runs = []
    for learner in ({}, {"micro_batch_tokens": 2 * 150}):
        d = DistillLearner(0, 1, "127.0.0.1", port, _config(DistillJobConfig, lambda_attn=0.0, **learner))
        grads = _recording_gradients(d)
        runs.append((d.train_step(0, *sampled, teacher=[targets]), grads))
    (whole, g_whole), (micro, g_micro) = runs
    assert all(_max_diff(a, b) <= 1e-6 for a, b in zip(g_whole, g_micro, strict=True))
    for key in ("reverse_kl", "teacher_attn_jsd"):
        assert micro.extra[key] == pytest.approx(whole.extra[key], rel=1e-4)  # fp32 sums in another order


@pytest.mark.parametrize("zero_stage", [0, 2, 3])
def test_measuring_the_attention_term_leaves_the_update_untouched(port, sampled, zero_stage):
    """The measuring pass (a backward of lambda_attn * L_attn alone, discarded) must not leak into the update."""
    runs = []
    for every in (1, 1000):  # step 1: measured, then not measured
        learner = Learner(0, 1, "127.0.0.1", port, _config(zero_stage=zero_stage, attn_grad_norm_every=every))
        learner.train_step(0, *sampled)
        stats = learner.train_step(1, _at_version(sampled[0], 1), sampled[1])  # sampled by the learner's weights
        runs.append((stats, learner.param_digest(), learner.state_dict()))
    (measured, digest_m, state_m), (plain, digest_p, state_p) = runs
    assert digest_m == digest_p and all(torch.equal(state_m[k], state_p[k]) for k in state_m)
    # the first mini-batch's p_old was recomputed at these very weights (a zero gradient); after its update, not
    first, second = measured.attn_grad_norm_by_minibatch
    assert first == pytest.approx(0.0, abs=1e-7) and math.isfinite(second) and second > 1e-5
    assert all(math.isnan(g) for g in plain.attn_grad_norm_by_minibatch)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The learner's version-0 tiny model saved as a checkpoint (what an RL job starts from: the SFT output)."""
    path = tmp_path_factory.mktemp("checkpoint")
    _, model, processor = build_policy("qwen2_5_vl", None, {}, seed=0)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


def test_zero3_loads_sharded_and_trains_like_zero0(port, sampled, checkpoint):
    model = {"checkpoint": checkpoint}
    zero0 = Learner(0, 1, "127.0.0.1", port, _config(model=model, attn_grad_norm_every=1))
    zero3 = Learner(0, 1, "127.0.0.1", port, _config(model=model, zero_stage=3, attn_grad_norm_every=1))
    for built in (zero3.ds_engine.module, zero3.ref_model.module):
        assert all(hasattr(p, "ds_id") for p in built.parameters())  # partitioned as loaded, not after
    tiny3 = Learner(0, 1, "127.0.0.1", port, _config(zero_stage=3))  # a tiny model: built whole, then partitioned
    assert zero3.param_digest() == pytest.approx(zero0.param_digest(), abs=1e-6) == tiny3.param_digest()
    # one sync's bytes: the full parameters in model.dtype, not this rank's shards
    assert zero3.state_nbytes() == zero0.state_nbytes() == 4 * sum(p.numel() for p in zero0.ds_engine.parameters())
    a, b = zero0.train_step(0, *sampled), zero3.train_step(0, *sampled)
    assert b.attn_grad_norm_first == pytest.approx(a.attn_grad_norm_first, abs=1e-7)  # 0: theta == theta_old
    assert b.loss == pytest.approx(a.loss, rel=1e-5) and b.kl == pytest.approx(a.kl, abs=1e-7)
    a, b = zero0.train_step(1, *sampled), zero3.train_step(1, *sampled)
    assert math.isfinite(b.attn_grad_norm) and b.attn_grad_norm == pytest.approx(a.attn_grad_norm, rel=1e-3)
    assert b.kl == pytest.approx(a.kl, rel=1e-3) and b.kl > 0  # the sharded reference scores like the copy
    state = zero3.state_dict()
    for name, p in zero0.ds_engine.module.named_parameters():
        assert torch.allclose(state[name], p.detach(), atol=1e-5), name


def test_the_driver_never_decides_the_learners_accelerator():
    """On KubeRay the driver runs on the GPU-less head: whatever it decided would reach every learner."""
    code = ("import os; os.environ.pop('DS_ACCELERATOR', None); import ral_dist.driver, ral_dist.actors.controller; "
            "from ral_dist.runtime.ray_cluster import worker_env; os.environ['DS_ACCELERATOR'] = 'cpu'; "
            "print('DS_ACCELERATOR' in worker_env())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("False"), out.stderr[-2000:]
    code = "import os, ral_dist.actors.controller; print(os.environ.get('DS_ACCELERATOR'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={k: v for k, v in __import__("os").environ.items() if k != "DS_ACCELERATOR"})
    assert out.stdout.strip().endswith("None"), out.stdout + out.stderr[-2000:]  # importing decided nothing
