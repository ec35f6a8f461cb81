"""A run directory on S3 through `ray job submit` (issue 23): the tiny job with ``--run-dir s3://BUCKET/run``
against a real S3 protocol server on loopback (moto), then ``--resume s3://BUCKET/run``: the driver's files and every
learner rank's checkpoint files are in the bucket, only complete checkpoints, and the resumed run continues."""

import json
import math
import secrets
import shutil
import sys
from pathlib import Path

import fsspec
import pytest
import yaml
from tiny_job import TINY_JOB

from ral_dist.runtime.object_store import run_location

ROOT = Path(__file__).resolve().parents[1]
JOB = {**TINY_JOB, "run": {**TINY_JOB["run"], "steps": 3, "checkpoint_every": 1, "keep_checkpoints": 2}}
# ZeRO-2 over 2 learner ranks: the model states of rank 0 and each rank's optimizer partition
DEEPSPEED_FILES = {"deepspeed/latest/mp_rank_00_model_states.pt",
                   "deepspeed/latest/zero_pp_rank_0_mp_rank_00_optim_states.pt",
                   "deepspeed/latest/zero_pp_rank_1_mp_rank_00_optim_states.pt"}


@pytest.fixture
def bucket(s3_server, monkeypatch):
    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    name = f"ral-{secrets.token_hex(6)}"
    fsspec.filesystem("s3", skip_instance_cache=True).mkdir(name)
    yield name
    shutil.rmtree(run_location(f"s3://{name}/run").path, ignore_errors=True)  # the driver's staging directory


def _submit(ray_head, env: dict, *args: str) -> str:
    runtime_env = json.dumps({"env_vars": env})
    proc = ray_head.ray("job", "submit", f"--address={ray_head.dashboard}", f"--runtime-env-json={runtime_env}",
                        "--", sys.executable, str(ROOT / "jobs" / "ral_grpo.py"), *args)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "succeeded" in log, log[-4000:]
    return log


def _objects(bucket: str) -> set[str]:
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    return {k.removeprefix(f"{bucket}/run/") for k in fs.find(f"{bucket}/run")}


def _metrics(bucket: str) -> list[dict]:
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    return [json.loads(x) for x in fs.cat_file(f"{bucket}/run/metrics.jsonl").decode().splitlines()]


def _checkpoints(objects) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for key in objects:
        if key.startswith("checkpoints/"):
            _, step, rest = key.split("/", 2)
            out.setdefault(step, set()).add(rest)
    return out


def test_run_dir_on_s3_checkpoints_by_every_rank_and_resume(ray_head, s3_server, bucket, tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(JOB))
    url = f"s3://{bucket}/run"
    log = _submit(ray_head, s3_server, "--config", str(config), "--run-dir", url)
    assert f"[ral] done: {url}" in log, log[-3000:]
    objects = _objects(bucket)
    assert {"config.yaml", "environment.json", "memory_plan.json"} <= objects
    assert any(k.startswith("heatmaps/step_") and k.endswith(".png") for k in objects)
    first = _metrics(bucket)
    assert [r["step"] for r in first] == [0, 1, 2]
    ckpts = _checkpoints(objects)
    assert set(ckpts) == {"step_000001", "step_000002"}  # keep_checkpoints 2; no partial, nothing else
    for files in ckpts.values():
        assert {"controller_state.json", "config.json", "learner_state.json"} | DEEPSPEED_FILES <= files, files
        assert any(f.endswith(".safetensors") for f in files)

    log = _submit(ray_head, s3_server, "--resume", url, "--steps", "4")
    assert f"resumed from {url}/checkpoints/step_000002 at step 3" in log, log[-3000:]
    records = _metrics(bucket)
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    assert records[:3] == first  # the resumed run re-put the same earlier records
    assert set(records[3]) == set(first[2])
    assert all(math.isfinite(v) for v in records[3].values() if isinstance(v, float))
    assert set(_checkpoints(_objects(bucket))) == {"step_000002", "step_000003"}
