"""The RL job end to end: `ray start --head`, `ray job submit`, a few steps, a checkpoint, `--resume`."""

import json
import math
import subprocess
import sys
from pathlib import Path

import yaml
from tiny_job import TINY_JOB

from ral_dist.runtime.environment import ALLOCATOR_ENV

ROOT = Path(__file__).resolve().parents[1]

JOB_CONFIG = TINY_JOB


def test_tiny_job_through_ray_job_submit_then_resume(ray_head, tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(JOB_CONFIG))
    run_dir = tmp_path / "run"

    proc = ray_head.submit("--config", str(config), "--run-dir", str(run_dir))
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "succeeded" in log, log[-4000:]
    assert "[ral] step 3/3" in log and "ETA" in log

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2]
    assert [r["policy_version"] for r in records] == [1, 2, 3]  # the version increases every step
    assert all(r["weights_in_sync"] for r in records)  # rollout workers hold the learner's weights after sync
    for r in records:
        for key in ("reward_mean", "accuracy", "kl", "attn_loss", "rollout_s", "reward_s", "learn_s", "sync_s"):
            assert isinstance(r[key], (int, float)) and math.isfinite(r[key]), (key, r[key])
        assert r["n_trajectories"] == 2 * 3 and r["sync_bytes"] > 0
    # the attention term's own gradient norm: measured on step 0, then every learner.attn_grad_norm_every steps
    # (null in metrics.jsonl in between, never a made-up number)
    assert math.isfinite(records[0]["attn_grad_norm"]) and all(r["attn_grad_norm"] is None for r in records[1:])
    assert (run_dir / "config.yaml").exists()
    plan = json.loads((run_dir / "memory_plan.json").read_text())  # planned at job start; no GPU: nothing fitted
    assert plan["problem"] is None and plan["gpu_bytes"] is None and plan["roles"][0]["role"] == "learner"
    assert "[ral] memory plan" in log
    assert list((run_dir / "heatmaps").glob("step_*/*.png"))
    last = run_dir / "checkpoints" / "step_000002"
    assert (last / "model.safetensors").exists() and (last / "controller_state.json").exists()

    assert all(r["staleness_max"] == 0 for r in records)  # sync mode: always the current weights

    # resume, continuing in one_step_off mode: rollout k+1 overlaps learning k, one version stale at most
    proc = ray_head.submit("--resume", str(run_dir), "--steps", "5", "--set", "run.mode=one_step_off")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "resumed from" in log, log[-4000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4]  # continues at the next step
    assert [r["policy_version"] for r in records] == [1, 2, 3, 4, 5]
    assert [r["staleness_max"] for r in records[3:]] == [0, 1]
    assert all(r["weights_in_sync"] for r in records)
    # RUN/environment.json: one record per start, each process under the portable numerics (model.numerics)
    starts = json.loads((run_dir / "environment.json").read_text())["starts"]
    assert len(starts) == 2 and "differs from the run's first" not in log  # the same machine: nothing changed
    for start in starts:
        for role in ("driver", "learner", "rollout"):
            assert start[role]["numerics_env"]["ATEN_CPU_CAPABILITY"] == "avx2", (role, start[role])
            if role != "driver":  # every Ray worker keeps the memory it frees (ALLOCATOR_ENV)
                assert start[role]["allocator_env"] == ALLOCATOR_ENV, (role, start[role])
            assert start[role]["torch"]["cpu_capability"] in ("AVX2", "DEFAULT") and start[role]["libraries"]["torch"]
        assert start["start_weights"] is None and start["code"]["commit"]  # a tiny random model; this checkout


def test_zero3_job_on_two_ranks_with_micro_batches(ray_head, tmp_path):
    """The 7B layout at tiny size: ZeRO-3 over 2 learner ranks (sharded reference for the KL), one sequence per
    forward, gradient checkpointing, p_old recomputed; the sync check on after every step."""
    job = {**TINY_JOB, "model": {**TINY_JOB["model"], "gradient_checkpointing": True},
           "learner": {**TINY_JOB["learner"], "zero_stage": 3, "micro_batch_tokens": 1, "old_policy": "recompute",
                       "beta": 0.04, "attn_grad_norm_every": 1},
           "run": {**TINY_JOB["run"], "verify_sync": True}}
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(job))
    proc = ray_head.submit("--config", str(config), "--run-dir", str(tmp_path / "run"))
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "succeeded" in log, log[-4000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2] and all(r["weights_in_sync"] for r in records)
    for r in records:  # each rank sees 3 sequences a step, 1 or 2 per mini-batch: every update is several forwards
        assert all(math.isfinite(r[k]) for k in ("loss", "kl", "attn_loss", "attn_grad_norm")), r
    assert records[-1]["kl"] > 0  # the sharded reference scores, and the policy has moved away from it
    assert (tmp_path / "run" / "checkpoints" / "step_000002" / "model.safetensors").exists()


def test_bad_config_fails_before_any_actor_starts(tmp_path):
    bad = dict(JOB_CONFIG, learner={**JOB_CONFIG["learner"], "lamda_attn": 1.0})
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(bad))
    proc = subprocess.run([sys.executable, str(ROOT / "jobs" / "ral_grpo.py"), "--config", str(config)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode != 0
    assert "learner.lamda_attn" in proc.stderr
    assert "Ray instance" not in proc.stdout + proc.stderr  # it failed before connecting to or starting Ray
