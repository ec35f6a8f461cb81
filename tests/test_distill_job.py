"""The distillation job end to end: `ray start --head`, `ray job submit` of jobs/ral_distill.py, a few steps, then
`--resume`. Teacher targets arrive for every trajectory and equal a direct no-grad capture of the teacher model on
the same sequence; the student's attention moves toward the teacher's.

The teacher is a randomly initialised tiny Qwen2.5-VL (no SFT, so the test stays fast): the student's
architecture and seed with 3x the initial weight scale, so its attention is a sharpened version of the student's
initial one, a target the student reaches within a few steps (a random teacher of another architecture attends
almost uniformly, like the student, and leaves little to learn). Larger teachers are checked in test_teacher.py.
"""

import json
import math
import sys
from pathlib import Path

import torch
import yaml
from tiny_job import TINY_JOB

from ral_dist.config import DataConfig
from ral_dist.models import build_policy
from ral_dist.models.capture import use_capture_attention
from ral_dist.models.generation import forward_responses
from ral_dist.models.prompting import visual_prompt

ROOT = Path(__file__).resolve().parents[1]
TEACHER = {"family": "qwen2_5_vl", "checkpoint": None, "seed": 0, "num_workers": 1, "cpus_per_worker": 0.25,
           "batch_size": 4, "queue_size": 2, "audit_steps": 2, "tiny": {"text": {"initializer_range": 0.06}}}
STEPS = 4
JOB = {**TINY_JOB,
       "rollout": {**TINY_JOB["rollout"], "attention_wire_dtype": "float32"},
       # mini-batches drawn by trajectory: at this lr, an update on one prompt's responses alone overshoots the
       # teacher's attention within these 4 steps (measured: 0.0057 -> 0.0207 -> 0.0076 -> 0.0052)
       "learner": {**TINY_JOB["learner"], "lambda_attn": 0.0, "beta": 0.0, "lr": 1e-2, "ppo_epochs": 2,
                   "minibatch_grouping": "none"},
       "teacher": TEACHER, "distill": {"mu": 0.1, "gamma_attn": 20.0},
       "run": {**TINY_JOB["run"], "steps": STEPS}}


def _submit(ray_head, *args: str):
    proc = ray_head.ray("job", "submit", f"--address={ray_head.dashboard}", "--", sys.executable,
                        str(ROOT / "jobs" / "ral_distill.py"), *args, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "succeeded" in log, log[-4000:]
    return log


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_tiny_distillation_job_through_ray_job_submit(ray_head, tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(JOB))
    run_dir = tmp_path / "run"
    log = _submit(ray_head, "--config", str(config), "--run-dir", str(run_dir))
    assert f"[ral] step {STEPS}/{STEPS}" in log and "teacher" in log

    records = _records(run_dir)
    assert [r["step"] for r in records] == list(range(STEPS))
    for r in records:
        assert r["n_trajectories"] == 2 * 3 and r["teacher_trajectories"] == r["n_trajectories"]
        for key in ("teacher_s", "teacher_wait_s", "reverse_kl", "teacher_attn_jsd"):
            assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] >= 0, (key, r[key])
        assert r["teacher_s"] > 0
        # the learners start after the rewards: the step's 2 teacher calls are running or done, none waits
        assert r["teacher_queue_in_flight"] + r["teacher_queue_ready"] == 2 and r["teacher_queue_waiting"] == 0
    jsd = [r["teacher_attn_jsd"] for r in records]
    assert jsd[-1] < 0.5 * jsd[0], jsd  # the student's attention moves toward the teacher's

    # every trajectory of the audited steps got targets equal to a direct capture of the teacher model
    adapter, model, processor = build_policy("qwen2_5_vl", None, TEACHER["tiny"], seed=TEACHER["seed"])
    use_capture_attention(model).eval()
    pad = processor.tokenizer.pad_token_id
    audits = sorted((run_dir / "teacher_audit").glob("*.pt"))
    assert [p.name for p in audits] == [f"step_{s:06d}_chunk_{c}.pt" for s in range(2) for c in range(2)]
    checked = 0
    for path in audits:
        audit = torch.load(path, weights_only=False)
        assert len(audit["targets"]) == len(audit["trajectories"]) == 3
        for traj, target in zip(audit["trajectories"], audit["targets"], strict=True):
            prompts = adapter.encode(processor, [visual_prompt(traj.sample, DataConfig())])
            ids = traj.response.ids[None]
            with torch.no_grad():
                fwd = forward_responses(adapter, model, prompts, ids, torch.ones_like(ids), pad, banned=adapter.banned_token_ids(processor),
                                        keep_logits=True)
            assert target.attention.shape == traj.behaviour.attention.shape
            assert (target.attention - fwd.attention[0]).abs().max() <= 1e-5
            assert (target.token_logprobs - fwd.logprobs[0]).abs().max() <= 1e-5
            full = torch.log_softmax(fwd.logits[0], -1)
            assert (target.logprobs - full).abs().max() <= 1e-5
            checked += 1
    assert checked == 2 * 2 * 3
    assert (run_dir / "checkpoints" / "step_000003" / "model.safetensors").exists()

    # --resume continues from the last checkpoint with the same teacher, through the same driver
    log = _submit(ray_head, "--resume", str(run_dir), "--steps", str(STEPS + 1))
    assert "resumed from" in log
    records = _records(run_dir)
    assert [r["step"] for r in records] == list(range(STEPS + 1))
    assert records[-1]["teacher_trajectories"] == 6 and records[-1]["policy_version"] == STEPS + 1
