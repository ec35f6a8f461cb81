"""The tiny Idefics3 job with ``rollout.engine: vllm`` through `ray job submit` to a real head (token auth on)."""

import json
import math
import re
import time
from pathlib import Path

from ral_dist.models import build_policy

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "jobs" / "configs" / "tiny_cpu_vllm.yaml"
PARITY = re.compile(r"\[vllm\] v(\d+) greedy parity (ok|MISMATCH): vllm (\[[\d, ]*\]) hf (\[[\d, ]*\])")


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
    # weights_in_sync: the replica holds the learner's weights AND vLLM's greedy output equals the replica's
    assert all(r["weights_in_sync"] for r in records)
    for r in records:
        assert r["n_trajectories"] == 2 * 4
        for key in ("reward_mean", "kl", "attn_loss", "rollout_s", "sync_s"):
            assert math.isfinite(r[key]), (key, r[key])
        # vLLM vs transformers log-probs of the sampled tokens, fp32: numerics only
        assert 0 <= r["logprob_mismatch"] < 1e-4 and r["logprob_mismatch_max"] < 1e-3, r
        # TIS (learner.tis_cap 2): trajectories carry vLLM's log-probs, renormalised without the banned visual
        # placeholders, which the learner's recomputation keeps: every ratio is 1 - their mass, just below 1
        assert 0.98 < r["tis_weight_mean"] <= r["tis_ratio_max"] < 1 and r["tis_truncated_fraction"] == 0, r

    # one parity check per sync (versions 1..3), each equal; the learner's updates changed the output
    checks = {int(v): (ok, json.loads(a), json.loads(b)) for v, ok, a, b in PARITY.findall(log)}
    assert sorted(checks) == [1, 2, 3], log[-4000:]
    assert all(ok == "ok" and a == b for ok, a, b in checks.values())
    assert len({tuple(a) for _, a, _ in checks.values()}) > 1
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
    checks = {int(v): (ok, json.loads(a), json.loads(b)) for v, ok, a, b in PARITY.findall(log)}
    assert sorted(checks) == [1, 2] and all(ok == "ok" and a == b for ok, a, b in checks.values())
