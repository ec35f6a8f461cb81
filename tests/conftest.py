"""Shared fixtures: a real Ray head on loopback (token auth on) and job submission to it."""

import importlib.util
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch.distributed as dist

from ral_dist.runtime.environment import PORTABLE_NUMERICS
from ral_dist.runtime.ray_cluster import stop_head  # noqa: F401 (the cluster tests import it from here)

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")



def _vllm_installed() -> bool:
    """A real vllm (with tests/ on sys.path, tests/vllm itself is found as a namespace package `vllm`)."""
    spec = importlib.util.find_spec("vllm")
    return spec is not None and spec.origin is not None


# tests/vllm runs in the vLLM environment only (`make test-vllm`): the main environment never collects it.
collect_ignore = [] if _vllm_installed() else ["vllm"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayHead:
    """`ray start --head` on 127.0.0.1, driven through Ray's CLI in subprocesses (which read the auth token from
    their environment; this test process imported ray before the token existed)."""

    def __init__(self, env: dict, dashboard: str, gcs: str):
        self.env, self.dashboard, self.gcs = env, dashboard, gcs

    def ray(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        return subprocess.run([RAY, *args], env=self.env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)

    def submit(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        """`ray job submit` of jobs/ral_grpo.py, waiting for the end and streaming its logs."""
        return self.ray("job", "submit", f"--address={self.dashboard}", "--", sys.executable,
                        str(ROOT / "jobs" / "ral_grpo.py"), *args, timeout=timeout)

    def submit_async(self, *args: str) -> str:
        job_id = f"test-{secrets.token_hex(4)}"
        proc = self.ray("job", "submit", f"--address={self.dashboard}", f"--submission-id={job_id}", "--no-wait",
                        "--", sys.executable, str(ROOT / "jobs" / "ral_grpo.py"), *args, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return job_id

    def status(self, job_id: str) -> str:
        proc = self.ray("job", "status", f"--address={self.dashboard}", job_id, timeout=60)
        out = proc.stdout + proc.stderr
        for word in ("SUCCEEDED", "FAILED", "STOPPED", "RUNNING", "PENDING"):
            if word in out or word.lower() in out:  # "Job 'x' succeeded", "... is currently RUNNING"
                return word
        raise RuntimeError(f"`ray job status {job_id}` said: {out[-1000:]}")

    def wait(self, job_id: str, timeout: float = 900) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            status = self.status(job_id)
            if status in ("SUCCEEDED", "FAILED", "STOPPED"):
                return status
            time.sleep(1)
        raise TimeoutError(f"job {job_id} still running after {timeout}s")

    def stop(self, job_id: str) -> None:
        self.ray("job", "stop", f"--address={self.dashboard}", job_id, timeout=120)

    def logs(self, job_id: str) -> str:
        proc = self.ray("job", "logs", f"--address={self.dashboard}", job_id, timeout=60)
        return proc.stdout + proc.stderr

    def kill_after_steps(self, metrics_file: Path, plan: list[tuple[int, str, bool]],
                         namespace: str = "ral_dist") -> subprocess.Popen:
        """Start a client process of this cluster that, for each (n, pattern, await_retry) of ``plan`` in order,
        waits until ``metrics_file`` holds n more steps than at the previous kill, then `ray.kill`s (restart
        allowed) the live actor whose name matches ``pattern`` (a regex: a recovered controller's actors carry an
        -r<N> suffix); with ``await_retry`` it then waits until a step records a rollout that ran on a restarted
        worker (a kill takes effect asynchronously; tiny steps are faster than an actor restart). Connected
        before the job starts. Prints each killed name."""
        code = f"""
import json, re, sys, time, ray
from pathlib import Path
from ray.util.state import list_actors
ray.init(address={self.gcs!r}, namespace={namespace!r}, log_to_driver=False)
print("connected", flush=True)
metrics = Path({str(metrics_file)!r})

def records():
    return [json.loads(l) for l in metrics.read_text().splitlines()] if metrics.exists() else []

def wait_for(cond, what):
    deadline = time.time() + 600
    while not cond():
        if time.time() > deadline:
            sys.exit("timed out waiting for " + what)
        time.sleep(0.05)

seen = 0
for steps, pattern, await_retry in {plan!r}:
    wait_for(lambda: len(records()) >= seen + steps, f"{{seen + steps}} steps")
    names = []
    wait_for(lambda: names.extend(a.name for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
                                  if a.name and re.fullmatch(pattern, a.name)) or names, "a live " + pattern)
    ray.kill(ray.get_actor(names[0]), no_restart=False)
    print("killed", names[0], flush=True)
    if await_retry:
        wait_for(lambda: any(r.get("rollout_retries") for r in records()), "a rollout on the restarted worker")
    seen = len(records())
"""
        proc = subprocess.Popen([sys.executable, "-c", code], env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "connected", proc.stderr.read()[-2000:]
        return proc


@pytest.fixture(scope="session")
def gloo_port():
    """The port of the one single-rank gloo group that every in-process Learner of the session joins.

    One group for the whole session: DeepSpeed caches its communication backend process-wide, so a group destroyed
    by one test module and re-created by the next leaves it pointing at the dead one.
    """
    yield free_port()
    if dist.is_initialized():
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ray_head():
    """A real Ray head on loopback with token authentication for one test module, stopped at its end."""
    dashboard, gcs = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="rayt", dir="/tmp")  # short: Ray's socket paths live under it
    # the portable numerics already in the head's environment: job drivers then start under them without the
    # restart ensure_numerics makes (tested in tests/test_environment.py and by the README's blocks)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32), **PORTABLE_NUMERICS}
    env.pop("RAY_ADDRESS", None)
    cmd = [RAY, "start", "--head", f"--port={gcs}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
           f"--temp-dir={temp_dir}", "--disable-usage-stats",
           f"--dashboard-agent-listen-port={free_port()}"]  # the default (52365) is taken by any other head here
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=180)
    try:
        yield RayHead(env, f"http://127.0.0.1:{dashboard}", f"127.0.0.1:{gcs}")
    finally:
        stop_head(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def s3_server():
    """A real S3 protocol server (moto) on loopback for one test module; yields the environment that points s3fs
    (botocore) at it with dummy credentials: set it in this process or pass it to a job's runtime env."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    finally:
        server.stop()
