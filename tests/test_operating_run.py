"""Operating a run (issue 21) through `ray job submit`: validation during training, every tracker, checkpoint
retention, the report, `--resume`; and the driver killed in the middle of a checkpoint write."""

import base64
import json
import re
import signal
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml
from PIL import Image
from tiny_job import TINY_JOB
from tracker_readers import expected_scalars, mlflow_scalars, tensorboard_scalars, wandb_scalars

from ral_dist.evaluation.report import SIZES, grid_size, heatmap_grid_inputs
from ral_dist.runtime.checkpoints import kept

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = json.dumps({"env_vars": {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}})

JOB = {**TINY_JOB, "run": {**TINY_JOB["run"], "steps": 6, "val_every": 2, "val_samples": 6,
                           "loggers": ["jsonl", "tensorboard", "mlflow", "wandb"], "checkpoint_every": 1,
                           "keep_checkpoints": 2, "keep_best": 1, "keep_optimizer_state": "last",
                           "heatmap_every": 3, "heatmap_prompts": 2}}


def _submit(ray_head, *args: str):
    proc = ray_head.ray("job", "submit", f"--address={ray_head.dashboard}", f"--runtime-env-json={OFFLINE}", "--",
                        sys.executable, str(ROOT / "jobs" / "ral_grpo.py"), *args)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "succeeded" in log, log[-4000:]
    return log


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _checkpoints(run: Path) -> dict[int, bool]:
    """step -> has its optimizer state, of every directory under checkpoints/ (a partial one fails the test)."""
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert all(n.startswith("step_") for n in names), names
    return {int(n[5:]): (run / "checkpoints" / n / "deepspeed").is_dir() for n in names}


def _assert_trackers_equal_metrics(run: Path) -> None:
    expected = expected_scalars(run)
    assert {"reward_mean", "accuracy", "kl", "val/accuracy", "val/format_rate", "val/response_length"} <= set(expected)
    tb, tb_images, hparams = tensorboard_scalars(run)
    mlflow, params, artifacts = mlflow_scalars(run)
    wandb, config, wandb_images = wandb_scalars(run)
    for name, got in (("tensorboard", tb), ("mlflow", mlflow), ("wandb", wandb)):
        assert set(got) == set(expected), (name, set(got) ^ set(expected))
        for tag, by_step in expected.items():
            assert set(got[tag]) == set(by_step), (name, tag)
            for step, value in by_step.items():  # TensorBoard stores float32
                assert got[tag][step] == pytest.approx(value, rel=1e-6, abs=1e-7), (name, tag, step)
    # the resolved config as hyper-parameters, the heatmaps as images
    assert hparams["run.val_every"] == 2 and params["run.val_every"] == "2" and config["run"]["val_every"] == 2
    ids = {p.stem for p in (run / "heatmaps").glob("step_*/*.png")}
    assert {f"heatmaps/{i}" for i in ids} == set(tb_images) == set(wandb_images)
    assert {a.split("/")[1] for a in artifacts if a.startswith("heatmaps/")} == ids


def _assert_report(run: Path) -> None:
    html = (run / "report.html").read_text()
    _, ids = heatmap_grid_inputs(run)
    assert len(ids) == 2
    sizes = {**SIZES, "heatmaps.png": grid_size(len(ids))}
    for name, size in sizes.items():
        png = (run / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(run / name).size == size, name
        assert f'href="{name}"' in html and f'alt="{name}"' in html
        assert base64.b64encode(png).decode() in html  # self-contained: the same image inline
    assert "<script" not in html and not re.findall(r'src="(?!data:image/png;base64,)', html)


def test_validation_trackers_retention_report_and_resume(ray_head, tmp_path):
    config, run = tmp_path / "job.yaml", tmp_path / "run"
    config.write_text(yaml.safe_dump(JOB))
    log = _submit(ray_head, "--config", str(config), "--run-dir", str(run))
    assert "[ral] validation after step 6/6" in log and "is disabled" not in log  # no tracker failed
    records = _records(run)
    train = [r for r in records if r.get("kind") is None]
    val = [r for r in records if r.get("kind") == "val"]
    assert [r["step"] for r in train] == list(range(6))
    assert [r["step"] for r in val] == [0, 2, 4, 5]  # every val_every, and the last step always
    for r in val:
        assert r["policy_version"] == r["step"] + 1 and r["n"] == 6 and r["per_type"]
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["format_rate"] <= 1 and r["response_length"] > 0
        assert 0 <= r["attention_on_target"] <= 1 and 0 < r["target_fraction"] < 1  # vs its chance level
        assert r["best_accuracy"] == max(v["accuracy"] for v in val if v["step"] <= r["step"])
    accuracy = {r["step"]: r["accuracy"] for r in val}
    expected = kept(list(range(6)), 2, 1, accuracy)
    assert _checkpoints(run) == {s: s == 5 for s in expected}  # optimizer state only in the newest
    _assert_trackers_equal_metrics(run)
    assert f"report: {run / 'report.html'}" in log
    _assert_report(run)

    log = _submit(ray_head, "--resume", str(run), "--steps", "8")
    assert "resumed from" in log and "step_000005 at step 6" in log, log[-3000:]
    records = _records(run)
    assert [r["step"] for r in records if r.get("kind") is None] == list(range(8))
    assert [r["step"] for r in records if r.get("kind") == "val"] == [0, 2, 4, 5, 6, 7]
    accuracy = {r["step"]: r["accuracy"] for r in records if r.get("kind") == "val"}
    assert _checkpoints(run) == {s: s == 7 for s in kept(list(range(8)), 2, 1, accuracy)}
    _assert_trackers_equal_metrics(run)  # the same tracker runs, continued


def _kill_driver_when(path: Path, run: Path, killed: list) -> None:
    """Find the job's driver process, then SIGKILL it the moment ``path`` appears (polled every millisecond; a
    tiny checkpoint takes 50-120 ms from its directory's creation to its rename)."""
    deadline = time.time() + 600
    driver = None
    while driver is None and time.time() < deadline:
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = proc.info["cmdline"] or []
            # the interpreter running the script (not the `ray job submit` client, whose arguments name it too)
            if len(cmdline) > 1 and cmdline[1].endswith("ral_grpo.py") and str(run) in cmdline:
                driver = proc
        time.sleep(0.05)
    while driver is not None and not path.exists() and time.time() < deadline:
        time.sleep(0.001)
    if driver is not None and path.exists():
        driver.send_signal(signal.SIGKILL)
        killed.append(driver.pid)


def test_driver_killed_during_a_checkpoint_write_resumes_from_the_previous_one(ray_head, tmp_path):
    job = {**TINY_JOB, "run": {**TINY_JOB["run"], "steps": 4, "checkpoint_every": 1, "keep_checkpoints": 2,
                               "keep_optimizer_state": "last", "heatmap_prompts": 0}}
    config, run = tmp_path / "job.yaml", tmp_path / "run"
    config.write_text(yaml.safe_dump(job))
    partial = run / "checkpoints" / ".partial-step_000002"
    killed: list[int] = []
    killer = threading.Thread(target=_kill_driver_when, args=(partial, run, killed), daemon=True)
    killer.start()
    job_id = ray_head.submit_async("--config", str(config), "--run-dir", str(run))
    assert ray_head.wait(job_id) == "FAILED", ray_head.logs(job_id)[-3000:]
    killer.join(timeout=10)
    assert killed, "the driver was not found"
    # killed mid-write: the partial checkpoint is there, not renamed; the previous one is complete and resumable
    assert partial.exists() and not (run / "checkpoints" / "step_000002").exists()
    assert _checkpoints_complete(run) == {0: False, 1: True}
    before = _records(run)
    assert [r["step"] for r in before] == [0, 1, 2]  # step 2 was recorded before its checkpoint began

    job_id = ray_head.submit_async("--resume", str(run))
    assert ray_head.wait(job_id) == "SUCCEEDED", ray_head.logs(job_id)[-3000:]
    logs = ray_head.logs(job_id)
    assert re.search(r"resumed from \S+step_000001 at step 2", logs), logs[-3000:]
    after = _records(run)
    assert [r["step"] for r in after] == [0, 1, 2, 3]
    assert after[:2] == before[:2]  # nothing before the resumed checkpoint was lost or rewritten
    assert _checkpoints(run) == {2: False, 3: True}  # the partial directory is gone, retention applied


def _checkpoints_complete(run: Path) -> dict[int, bool]:
    return {int(p.name[5:]): (p / "deepspeed").is_dir() for p in sorted((run / "checkpoints").glob("step_*"))}
