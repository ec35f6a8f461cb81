"""The tiny Idefics3 job with ``rollout.engine: vllm`` through `ray job submit` to a real head (token auth on)."""

import json
import math
import re
import time
from pathlib import Path

from ral_dist.models import build_policy

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "jobs" / "configs" / "tiny_cpu_vllm.yaml"
DIGEST = re.compile(r"\[vllm\] v(\d+) weights digest (ok|MISMATCH): ([^\n]*) against the learner's (\d+) tensors "
                    r"\(sum ([-+.e\d]+); ([\d.]+)s here, ([\d.]+)s in vLLM\)")


def digest_lines(log: str) -> dict[int, tuple]:
    """version -> (ok, holders, tensors, sum of the reference, (seconds in the rollout worker, in vLLM's worker))
    of each sync check the worker logged."""
    return {int(v): (ok, holders.split(", "), int(n), float(total), (float(here), float(vllm)))
            for v, ok, holders, n, total, here, vllm in DIGEST.findall(log)}


def submit_when_ready(ray_head, *args):
    """`ray job submit`, again while the fresh head's dashboard agent is not up yet."""
    for _ in range(30):
        proc = ray_head.submit(*args)
        if "No available agent" not in proc.stdout + proc.stderr:
            return proc
        time.sleep(2)
    return proc


def test_vllm_job_syncs_into_the_running_engine_every_step(ray_head, tmp_path):
    run_dir = tmp_path / "run"
    proc = submit_when_ready(ray_head, "--config", str(CONFIG), "--run-dir", str(run_dir))
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "succeeded" in log, log[-4000:]
    assert "[ral] step 3/3" in log

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2] and [r["policy_version"] for r in records] == [1, 2, 3]
    # weights_in_sync: the replica and vLLM hold what the learner published (digests, `weight_digest`)
    assert all(r["weights_in_sync"] for r in records)
    for r in records:
        assert r["n_trajectories"] == 2 * 4
        for key in ("reward_mean", "kl", "attn_loss", "rollout_s", "sync_s"):
            assert math.isfinite(r[key]), (key, r[key])
        # vLLM vs transformers log-probs of the sampled tokens, fp32: numerics only
        assert 0 <= r["logprob_mismatch"] < 1e-4 and r["logprob_mismatch_max"] < 1e-3, r
        # TIS (learner.tis_cap 2): trajectories carry vLLM's log-probs; the learner's recomputation is of the same
        # distribution (banned visual placeholders removed, README "One token distribution"): every ratio is 1 up to
        # numerics (it was 1 - the banned tokens' mass, ~0.996, while the learner kept them)
        assert abs(r["tis_weight_mean"] - 1) < 1e-4 and r["tis_ratio_max"] < 1 + 1e-3, r
        assert r["tis_truncated_fraction"] == 0, r

    # one sync check per sync (versions 1..3) of the replica and vLLM's worker, each against the state dict the
    # learner published (every tensor); the learner's updates changed it. Its cost: about 25-70 us per tensor here,
    # ~1 % of this 1M-parameter model's sub-second step (0.2 % of tiny_cpu.yaml's); bandwidth-bound at scale
    _, model, _ = build_policy("idefics3", None, {}, seed=0)
    checks = digest_lines(log)
    assert sorted(checks) == [1, 2, 3], log[-4000:]
    assert all(ok == "ok" and holders == ["replica", "vLLM worker 0"] and n == len(model.state_dict())
               for ok, holders, n, _, _ in checks.values()), checks
    assert len({total for _, _, _, total, _ in checks.values()}) == 3
    for r in records:
        here, in_vllm = checks[r["policy_version"]][4]
        print(f"v{r['policy_version']}: sync check {here:.4f}s in the rollout worker + {in_vllm:.4f}s in vLLM of a "
              f"{r['step_s']:.2f}s step")
        assert here + in_vllm < 0.02 * r["step_s"]
    assert list((run_dir / "heatmaps").glob("step_*/*.png"))
    assert (run_dir / "checkpoints" / "step_000002" / "model.safetensors").exists()


BROADCAST = re.compile(r"\[vllm\] v(\d+) gloo broadcast from learner rank 0: (\d+) tensors")


def test_gloo_broadcast_from_learner_rank_0_feeds_the_running_engine(ray_head, tmp_path):
    """``weight_sync: gloo``: vLLM's weight-transfer handshake (the nccl path's, communicator swapped) between the
    learner (ZeRO-3: every parameter gathered as it is sent) and the engine; the engine gets no bytes load."""
    run_dir = tmp_path / "run"
    proc = submit_when_ready(ray_head, "--config", str(CONFIG), "--run-dir", str(run_dir), "--steps", "2",
                             "--set", "rollout.vllm.weight_sync=gloo")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "succeeded" in log, log[-4000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["policy_version"] for r in records] == [1, 2] and all(r["weights_in_sync"] for r in records)
    sent = {int(v): int(n) for v, n in BROADCAST.findall(log)}
    _, model, _ = build_policy("idefics3", None, {}, seed=0)
    assert sent == {1: len(list(model.named_parameters())), 2: len(list(model.named_parameters()))}, log[-4000:]
    # the reference is what learner rank 0 sent (its parameters, digested on the way out)
    checks = digest_lines(log)
    assert sorted(checks) == [1, 2], log[-4000:]
    assert all(ok == "ok" and holders == ["replica", "vLLM worker 0"] and n == len(list(model.named_parameters()))
               for ok, holders, n, _, _ in checks.values()), checks


def test_the_gpu_recipe_shape_learner_scores_and_draws_no_replica_anywhere(ray_head, tmp_path):
    """The 7B recipe's layout at tiny size: vLLM fed by broadcast, ``attention_on: learner`` (the learner
    recomputes p_old and the old log-probs), so the rollout worker holds no transformers copy of the weights, the
    controller gathers no state dict, and the heatmaps of vLLM's greedy answers are drawn by the learner."""
    run_dir = tmp_path / "run"
    proc = submit_when_ready(ray_head, "--config", str(CONFIG), "--run-dir", str(run_dir), "--steps", "2",
                             "--set", "rollout.vllm.weight_sync=gloo", "--set", "rollout.attention_on=learner",
                             "--set", "reward.weights.sparsity=0", "--set", "reward.weights.consistency=0",
                             "--set", "run.heatmap_every=1", "--set", "run.val_every=1", "--set", "run.val_samples=3")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "succeeded" in log, log[-4000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # validation: vLLM's greedy answers, their attention rows from the learner (no model in the rollout worker)
    val = [r for r in records if r.get("kind") == "val"]
    assert [(r["step"], r["n"]) for r in val] == [(0, 3), (1, 3)], val
    assert all(0 <= r["accuracy"] <= 1 and 0 <= r["sparsity"] <= 1 and r["response_length"] > 0 for r in val), val
    records = [r for r in records if r.get("kind") != "val"]
    assert [r["policy_version"] for r in records] == [1, 2] and all(r["weights_in_sync"] for r in records)
    for r in records:  # the learner's recomputed p_old: a finite attention term; TIS against vLLM's log-probs
        assert math.isfinite(r["attn_loss"]) and abs(r["tis_weight_mean"] - 1) < 1e-4, r
    checks = digest_lines(log)
    assert sorted(checks) == [1, 2] and all(ok == "ok" and holders == ["vLLM worker 0"]
                                            for ok, holders, _, _, _ in checks.values()), checks
    assert {p.parent.name for p in (run_dir / "heatmaps").glob("step_*/*.png")} == {"step_000000", "step_000001"}
