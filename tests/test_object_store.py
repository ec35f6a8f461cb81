"""A run directory on an object store (`ral_dist.runtime.object_store`, `remote_checkpoints`, `RunDir`'s mirror)
against a real S3 protocol server on loopback (moto), through s3fs: the URL parsing and its errors, the driver's
files mirrored as written, a checkpoint committed only when every rank's files are there, retention, resume."""

import importlib.util
import json
import secrets

import fsspec
import pytest
import torch
from safetensors.torch import save_file

from ral_dist.config import ConfigError
from ral_dist.runtime.object_store import Mirror, reset_staging, run_location
from ral_dist.runtime.run_dir import RunDir


@pytest.fixture
def bucket(s3_server, monkeypatch, tmp_path):
    """A fresh bucket on the moto server (its URL), the staging directories under tmp_path."""
    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("RAL_DIST_CACHE", str(tmp_path / "cache"))
    name = f"b{secrets.token_hex(6)}"
    fsspec.filesystem("s3").mkdir(name)
    return f"s3://{name}"


def test_urls_local_paths_and_errors_naming_the_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("RAL_DIST_CACHE", str(tmp_path))
    assert run_location("file:///shared/x").url is None and str(run_location("file:///shared/x").path) == "/shared/x"
    loc = run_location("s3://bucket/runs/my-run/")
    assert loc.url == "s3://bucket/runs/my-run" and loc.path == tmp_path / "staging" / "s3" / "bucket" / "runs" / "my-run"
    with pytest.raises(ConfigError, match=r"--resume nosuch://b/x: nosuch:// is no storage fsspec knows"):
        run_location("nosuch://b/x", "--resume")
    with pytest.raises(ConfigError, match=r"--run-dir s3://: name a bucket"):
        run_location("s3://")
    with pytest.raises(ConfigError, match=r"--run-dir s3://b/\.\./x: name a bucket"):
        run_location("s3://b/../x")


@pytest.mark.skipif(importlib.util.find_spec("gcsfs") is not None, reason="gcsfs is installed here")
def test_a_missing_backend_names_the_package():
    with pytest.raises(ConfigError, match=r"--run-dir gs://b/x: gs:// needs gcsfs: pip install gcsfs"):
        run_location("gs://b/x")


def _rank_files(root, rank: int, step: int) -> None:
    """What a learner rank writes for a checkpoint: rank 0 the HF weights, every rank its DeepSpeed files."""
    if rank == 0:
        root.mkdir(parents=True)
        save_file({"w": torch.full((2,), float(step))}, str(root / "model.safetensors"))
        (root / "config.json").write_text("{}")
    (root / "deepspeed" / "latest").mkdir(parents=True)
    torch.save({"step": step}, root / "deepspeed" / "latest" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")


class Keep:  # the run.* retention fields commit_checkpoint reads
    keep_checkpoints, keep_best, keep_optimizer_state = 2, 0, "all"


def _save(run: RunDir, step: int, tmp_path, drop: str | None = None) -> str:
    partial = run.partial_checkpoint_dir(step)
    uploaded = []
    for rank in range(2):
        _rank_files(partial / f"rank_{rank}", rank, step)
        uploaded.append(Mirror(run.checkpoint_upload_url(step)).put_tree(partial / f"rank_{rank}"))
    if drop:
        run.mirror.remove(f"checkpoints/step_{step:06d}/{drop}")
    return run.commit_checkpoint(step, {"step": step, "next_step": step + 1}, Keep, uploaded)


def _fresh_run(url: str) -> tuple[RunDir, Mirror]:
    """A new run at ``url`` (its staging emptied) and a view of what is in the bucket."""
    loc = run_location(url)
    reset_staging(loc, pull=False)
    return RunDir(loc.path, loc.url), Mirror(url)


def test_checkpoints_committed_by_marker_retention_and_latest(bucket, tmp_path):
    url = f"{bucket}/run"
    run, mirror = _fresh_run(url)
    assert run.latest_checkpoint() is None
    for step in range(3):
        assert _save(run, step, tmp_path) == f"{url}/checkpoints/step_{step:06d}"
    assert mirror.dirs("checkpoints") == ["step_000001", "step_000002"]  # keep_checkpoints 2
    assert set(mirror.files("checkpoints/step_000002")) == {
        "controller_state.json", "config.json", "model.safetensors",
        "deepspeed/latest/zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "deepspeed/latest/zero_pp_rank_1_mp_rank_00_optim_states.pt"}
    assert run.latest_checkpoint() == f"{url}/checkpoints/step_000002"
    assert run.checkpoint_state(run.latest_checkpoint()) == {"step": 2, "next_step": 3}
    assert not any(p.name.startswith(".partial") for p in run.checkpoints_root.iterdir())  # staging cleaned

    # rank 1's files lost: not committed, no marker, the previous checkpoint still the latest
    with pytest.raises(RuntimeError, match=r"step_000003 is incomplete: rank 1: deepspeed/latest/zero_pp_rank_1"):
        _save(run, 3, tmp_path, drop="deepspeed/latest/zero_pp_rank_1_mp_rank_00_optim_states.pt")
    assert not mirror.exists("checkpoints/step_000003/controller_state.json")
    assert run.latest_checkpoint() == f"{url}/checkpoints/step_000002"
    # a corrupt weights file is refused too
    with pytest.raises(RuntimeError, match=r"model.safetensors: "):
        partial = run.partial_checkpoint_dir(4)
        _rank_files(partial / "rank_0", 0, 4)
        (partial / "rank_0" / "model.safetensors").write_bytes(b"\xff" * 16)
        run.commit_checkpoint(4, {}, Keep, [Mirror(run.checkpoint_upload_url(4)).put_tree(partial / "rank_0")])
    # the next commit removes what the failed ones left
    _save(run, 5, tmp_path)
    assert mirror.dirs("checkpoints") == ["step_000002", "step_000005"]


def test_driver_files_mirrored_as_written_and_pulled_on_resume(bucket, tmp_path):
    url = f"{bucket}/runs/a"
    run, mirror = _fresh_run(url)
    loc = run_location(url)
    for step in range(3):
        run.append_metrics({"step": step, "loss": float("nan") if step == 1 else 0.5})
        lines = mirror.read_bytes("metrics.jsonl").decode().splitlines()
        assert [json.loads(x)["step"] for x in lines] == list(range(step + 1))  # uploaded at every record
    run.write_heatmap(2, "s0", b"png")
    assert mirror.read_bytes("heatmaps/step_000002/s0.png") == b"png"
    (run.path / "environment.json").write_text("{}")
    (run.path / "tb").mkdir()
    (run.path / "tb" / "events").write_text("e")
    run.push_all()
    assert {"environment.json", "tb/events", "metrics.jsonl"} <= set(mirror.files(""))

    (run.path / "stale.txt").write_text("from an earlier run of this URL")
    reset_staging(loc, pull=True)  # a resume: the run's files, not the staging directory's leftovers
    assert not (loc.path / "stale.txt").exists() and (loc.path / "tb" / "events").read_text() == "e"
    resumed = RunDir(loc.path, loc.url)
    resumed.truncate_metrics(2)
    assert [json.loads(x)["step"] for x in mirror.read_bytes("metrics.jsonl").decode().splitlines()] == [0, 1]
