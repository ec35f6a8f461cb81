"""Fault injection on a real Ray cluster with the tiny job: killed actors, a killed driver, corrupt data."""

import json
import time
from pathlib import Path

import pytest
import yaml

from ral_dist.data import GroundedVQAConfig, generate_dataset

JOB = {
    "model": {"family": "qwen2_5_vl", "checkpoint": None},
    "data": {"task": {"seed": 5}, "sizes": {"train": 48, "val": 8, "test": 8}},
    "rollout": {"num_workers": 2, "prompts_per_step": 4, "group_size": 2, "max_new_tokens": 12},
    "reward": {"num_workers": 2},
    "learner": {"num_ranks": 2, "lr": 1e-3, "num_minibatches": 2},
    "run": {"steps": 4, "checkpoint_every": 2, "heatmap_every": 100, "heatmap_prompts": 0, "timeout_s": 300},
}


def _config(tmp_path: Path, **sections) -> Path:
    cfg = {k: {**v, **sections.get(k, {})} for k, v in JOB.items()}
    path = tmp_path / f"job-{time.time_ns()}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _wait_for_steps(run_dir: Path, n: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while len(_records(run_dir)) < n:
        assert time.time() < deadline, f"fewer than {n} steps after {timeout}s"
        time.sleep(0.2)


def _assert_accounted(records: list[dict], steps: int) -> None:
    assert [r["step"] for r in records] == list(range(steps))
    for r in records:  # every scheduled prompt trained once or skipped with a reason
        assert r["prompts_scheduled"] == 4 == r["prompts_trained"] + r["prompts_skipped"]
        assert r["prompts_skipped"] == len(r["skipped"])
        assert r["n_trajectories"] == 2 * r["prompts_trained"]
        assert r["weights_in_sync"] and r["staleness_max"] == 0


def test_killed_actors_are_replaced_and_no_prompt_is_lost(ray_head, tmp_path):
    """`ray.kill` a rollout worker, then a reward worker (both restartable), then a learner rank (not restartable:
    the job recovers from its last checkpoint), one after the other while the job runs."""
    run_dir = tmp_path / "run"
    name = rf"ral-{run_dir.name}(-r\d+)?"
    killer = ray_head.kill_after_steps(run_dir / "metrics.jsonl", [
        (1, f"{name}-rollout-0", True), (1, f"{name}-reward-0", False), (2, f"{name}-learner-1", False)])
    config = _config(tmp_path, run={"steps": 24, "timeout_s": 60})
    job = ray_head.submit_async("--config", str(config), "--run-dir", str(run_dir))
    assert ray_head.wait(job) == "SUCCEEDED", ray_head.logs(job)[-4000:]
    out, err = killer.communicate(timeout=60)
    assert killer.returncode == 0 and out.count("killed") == 3, out + err[-2000:]
    logs = ray_head.logs(job)
    assert "recovering from the last checkpoint" in logs  # the learner's death failed a step; the job went on
    # the restarted rollout worker sampled again only after loading the current weights
    assert "ran on a worker Ray had restarted; it loaded weights" in logs
    _assert_accounted(_records(run_dir), 24)  # steps redone after the recovery are recorded once


def test_killed_driver_resumes_exactly(ray_head, tmp_path):
    config = _config(tmp_path)
    straight = tmp_path / "straight"
    assert ray_head.wait(ray_head.submit_async("--config", str(config), "--run-dir", str(straight))) == "SUCCEEDED"

    killed = tmp_path / "killed"
    job = ray_head.submit_async("--config", str(config), "--run-dir", str(killed))
    _wait_for_steps(killed, 3)  # a checkpoint exists after step 1 (checkpoint_every 2)
    ray_head.stop(job)
    assert ray_head.wait(job) == "STOPPED"
    job = ray_head.submit_async("--resume", str(killed))
    assert ray_head.wait(job) == "SUCCEEDED", ray_head.logs(job)[-4000:]
    assert "resumed from" in ray_head.logs(job)

    a, b = _records(straight), _records(killed)
    assert [r["step"] for r in b] == [0, 1, 2, 3]
    for ra, rb in zip(a, b, strict=True):  # same data order, same sampling, same updates
        for key in ("reward_mean", "accuracy", "loss", "kl", "attn_loss", "attn_jsd", "policy_loss"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=1e-7), (ra["step"], key)


def test_corrupt_rows_are_skipped_with_reasons(ray_head, tmp_path):
    data = tmp_path / "data"
    generate_dataset(GroundedVQAConfig(seed=9), data, {"train": 24, "val": 4})
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    good = rows[0]
    (data / "images" / "garbage.png").write_bytes(b"this is not a png")
    planted = {
        "bad-missing-image": dict(good, id="bad-missing-image", media=["images/nowhere.png"]),
        "bad-corrupt-image": dict(good, id="bad-corrupt-image", media=["images/garbage.png"]),
        "bad-no-answer": {k: v for k, v in dict(good, id="bad-no-answer").items() if k != "answer"},
        "bad-empty-question": dict(good, id="bad-empty-question", question="   "),
    }
    long_q = dict(good, id="long-question", question="What colour " * 100 + "?")
    with (data / "train.jsonl").open("a") as fh:
        for row in [*planted.values(), long_q]:
            fh.write(json.dumps(row) + "\n")
        fh.write("{not json\n")

    run_dir = tmp_path / "run"
    config = _config(tmp_path, data={"dir": str(data), "max_question_chars": 200}, run={"steps": 2})
    proc = ray_head.submit("--config", str(config), "--run-dir", str(run_dir))
    assert proc.returncode == 0 and "succeeded" in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-4000:]
    skipped = [json.loads(line) for line in (run_dir / "skipped_rows.jsonl").read_text().splitlines()]
    reasons = {s["id"]: s["reason"] for s in skipped}
    assert reasons["bad-missing-image"].startswith("missing file")
    assert reasons["bad-corrupt-image"].startswith("unreadable image")
    assert reasons["bad-no-answer"] == "missing field 'answer'"
    assert reasons["bad-empty-question"] == "empty question"
    assert any(s["reason"].startswith("invalid json") for s in skipped)
    assert len(skipped) == 5
    assert "long-question" not in reasons  # truncated to max_question_chars, not dropped
    assert "truncated 1 questions" in proc.stdout + proc.stderr
    _assert_accounted(_records(run_dir), 2)
