"""A real multi-node Ray cluster on one machine: `ray start --head` and worker raylets `ray start --address=...`,
each with its own --num-cpus, --labels and temp dir, stopped (or killed, as a lost node) by PID only.

Every raylet of the cluster is a separate node to Ray's scheduler: its own resources, labels, object store and
worker processes. KubeRay labels each pod's node ``ray.io/node-group=<group>``; here `ray start --labels` does.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from conftest import RAY, RayHead, free_port, stop_head

# Lost nodes are noticed within seconds, not Ray's default ~30 s (GCS health checks of every raylet).
FAST_FAILURE_DETECTION = {"RAY_health_check_initial_delay_ms": "0", "RAY_health_check_period_ms": "500",
                          "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}


class MultiNodeCluster(RayHead):
    """A head and named worker raylets; `add_node` / `kill_node` as KubeRay would add and lose a pod."""

    def __init__(self, env: dict):
        self.dashboard_port, self.gcs_port = free_port(), free_port()
        super().__init__(env, f"http://127.0.0.1:{self.dashboard_port}", f"127.0.0.1:{self.gcs_port}")
        self.temp_dirs: dict[str, str] = {}

    def _start(self, name: str, args: list[str], num_cpus: float, group: str) -> None:
        temp_dir = tempfile.mkdtemp(prefix=f"rayn{name[:4]}", dir="/tmp")  # short: socket paths live under it
        self.temp_dirs[name] = temp_dir
        cmd = [RAY, "start", *args, "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
               f"--labels=ray.io/node-group={group},ral-test/node={name}", f"--temp-dir={temp_dir}",
               "--disable-usage-stats", f"--dashboard-agent-listen-port={free_port()}",
               f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
               "--object-store-memory=200000000"]  # the tiny job needs little; 3 nodes share this machine
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, f"ray start of node {name}: {proc.stdout[-1500:]}{proc.stderr[-1500:]}"

    def start_head(self, num_cpus: float, group: str) -> None:
        self._start("head", ["--head", f"--port={self.gcs_port}", "--include-dashboard=true",
                             "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}"], num_cpus, group)

    def add_node(self, name: str, num_cpus: float, group: str) -> None:
        self._start(name, [f"--address={self.gcs}"], num_cpus, group)
        self.wait_for(lambda: name in self.alive_nodes(), f"node {name} to join")

    def kill_node(self, name: str) -> None:
        """Lose a node: SIGKILL its raylet, its agents and every worker process it started (found by its temp dir,
        never by name: other clusters on this machine are untouched)."""
        stop_head(self.temp_dirs[name])

    def job_log(self, job_id: str) -> str:
        """The job driver's log as written so far, read from the head's session directory: a file read, fast
        enough to poll between steps of the tiny job (`ray job logs` takes seconds)."""
        path = Path(self.temp_dirs["head"]) / "session_latest" / "logs" / f"job-driver-{job_id}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def alive_nodes(self) -> dict[str, str]:
        """node name (our ral-test/node label) -> node id, of the alive nodes."""
        nodes = self.state("nodes")
        return {n["labels"].get("ral-test/node"): n["node_id"] for n in nodes if n["state"] == "ALIVE"}

    def node_names(self) -> dict[str, str]:
        """node id -> node name, of every node the cluster has seen (dead ones too)."""
        return {n["node_id"]: n["labels"].get("ral-test/node") for n in self.state("nodes")}

    def state(self, kind: str) -> list[dict]:
        """`ray list <kind> --detail` through the state API, as JSON."""
        proc = self.ray("list", kind, f"--address={self.dashboard}", "--detail", "--format=json", "--limit=10000",
                        timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stdout)

    def actors_by_role(self, run_name: str, state: str | None = None) -> dict[str, list[str]]:
        """role -> node names of one controller's actors (``ral-<run_name>-<role>-<i>``: a recovered controller's
        run_name has its ``-r<N>``), optionally in one state."""
        names = self.node_names()
        pattern = re.compile(rf"ral-{re.escape(run_name)}-([a-z]+)-\d+")
        out: dict[str, list[str]] = {}
        for actor in self.state("actors"):
            match = pattern.fullmatch(actor.get("name") or "")
            if match and (state is None or actor["state"] == state):
                out.setdefault(match.group(1), []).append(names.get(actor["node_id"]))
        return out

    @staticmethod
    def wait_for(cond, what: str, timeout: float = 300) -> None:
        deadline = time.time() + timeout
        while not cond():
            if time.time() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            time.sleep(0.5)

    def stop_all(self) -> None:
        for temp_dir in reversed(list(self.temp_dirs.values())):  # workers first, then the head
            stop_head(temp_dir)
            shutil.rmtree(temp_dir, ignore_errors=True)


def cluster_env(**extra: str) -> dict:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32), **FAST_FAILURE_DETECTION, **extra}
    env.pop("RAY_ADDRESS", None)
    return env


def records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
