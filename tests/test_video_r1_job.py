"""The real data format end to end: the synthetic task exported in the Video-R1 schema with mp4 videos
(`python -m ral_dist.data.convert --export-synthetic`), read by the job's Video-R1 reader, decoded in the actors,
scored by Video-R1's per-type rules, through `ray job submit`; then `jobs/eval.py` with the run's own config."""

import json
import pickle
import subprocess
import sys
from pathlib import Path

import yaml
from tiny_job import TINY_JOB

from ral_dist.config import RLJobConfig
from ral_dist.driver import _load_data
from ral_dist.runtime.run_dir import RunDir

ROOT = Path(__file__).resolve().parents[1]
TYPES = {"multiple choice", "numerical", "free-form"}  # what the exporter makes of the synthetic questions


def _export(out: Path) -> None:
    cmd = [sys.executable, "-m", "ral_dist.data.convert", "--export-synthetic", "--out", str(out),
           "--sizes", "train=24,val=8", "--stage", "4", "--fraction-video", "0.5", "--seed", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((out / "train.json").read_text())
    assert {r["data_type"] for r in rows} == {"image", "video"} and any(r["path"].endswith(".mp4") for r in rows)


def _config(data_dir: Path) -> dict:
    return {**TINY_JOB,
            "data": {"format": "video_r1", "dir": str(data_dir), "prompt": {"preset": "video_r1"}},
            "reward": {**TINY_JOB["reward"], "task": "video_r1"},
            "run": {**TINY_JOB["run"], "steps": 2}}


def test_the_driver_ships_paths_not_pixels(tmp_path):
    data = tmp_path / "video_r1"
    _export(data)
    cfg = RLJobConfig.model_validate(_config(data))
    train, heatmap_samples, _ = _load_data(cfg, RunDir(tmp_path / "run"))
    assert len(train) == 24 and {s.problem_type for s in train} <= TYPES
    for s in train + heatmap_samples:  # what the controller sends to the rollout workers, as Ray pickles it
        blob = pickle.dumps(s)
        assert s.images == [] and len(blob) < 2000 and b"PIL" not in blob, s.id


def test_tiny_job_on_the_video_r1_schema_with_mp4_files(ray_head, tmp_path):
    data = tmp_path / "video_r1"
    _export(data)
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(_config(data)))
    run_dir = tmp_path / "run"
    proc = ray_head.submit("--config", str(config), "--run-dir", str(run_dir))
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "succeeded" in log, log[-4000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1]
    for r in records:
        assert set(r["per_type"]) <= TYPES and sum(t["n"] for t in r["per_type"].values()) == r["n_trajectories"]
        assert all(0 <= t["accuracy"] <= 1 for t in r["per_type"].values())
        assert r["prompts_skipped"] == 0 and r["prompts_trained"] == 2
    assert len({q for r in records for q in r["per_type"]}) >= 2  # more than one Video-R1 rule scored

    last = run_dir / "checkpoints" / "step_000001"
    out = tmp_path / "eval.json"
    cmd = [sys.executable, "jobs/eval.py", "--checkpoint", str(last), "--split", "val", "--json", str(out),
           "--config", str(run_dir / "config.yaml"), "--max-new-tokens", "8"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["n"] == 8 and set(report["per_type"]) <= TYPES and report["skipped"] == 0
    assert report["data"]["format"] == "video_r1"
