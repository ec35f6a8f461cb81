"""A real Prometheus on loopback scrapes a real Ray cluster running the tiny RL job (`ray job submit`); afterwards
every dashboard panel's query returns data through Prometheus' HTTP API, and every metric ral_dist.runtime.metrics
defines is in the scrape.

The Ray head here has its own temp dir and ports, and is stopped through its own process group: other Ray
clusters on the machine are left alone (no `ray stop`).
"""

import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the dashboards package lives at the repository root

from tiny_job import TINY_JOB  # noqa: E402

from dashboards import build, monitor  # noqa: E402
from dashboards.common import resolve  # noqa: E402
from ral_dist.runtime import metrics  # noqa: E402

RAY = str(Path(sys.executable).parent / "ray")
SCRAPE_INTERVAL_S = 1

# The tiny job of tests/test_ral_job.py without heatmaps and with one checkpoint (the last step's), validated every
# 5 steps (the validation gauges). Enough steps that every counter increases across several 1 s scrapes: rate()
# needs two samples that differ, and a 3-step run on a quiet machine can finish between two exporter reports.
JOB_CONFIG = dict(TINY_JOB, run={"steps": 10, "checkpoint_every": 100, "heatmap_every": 100, "heatmap_prompts": 0,
                                 "timeout_s": 300, "val_every": 5, "val_samples": 4})

# Panels of Ray's own GPU metrics, which a node exports only when it has GPUs: exempt from the "returns data"
# check on a machine without them (their expressions are still parsed by test_observability_static).
GPU_METRICS = ("ray_node_gpus_utilization", "ray_node_gram_used")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_leftovers(temp_dir: str, token: str) -> None:
    """SIGKILL processes of this test's Ray cluster that left its process group: their command line names its
    temp dir, or their environment holds its auth token (a job driver)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if (temp_dir.encode() in cmdline or token.encode() in environ) and int(pid) != os.getpid():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def metrics_ray_head():
    """A Ray head on its own temp dir (short: socket paths have a length limit) and free ports, with a metrics
    export port and a 1 s metrics report interval, so the last step's metrics reach the exporter in time."""
    temp_dir = tempfile.mkdtemp(prefix="ralobs")
    dashboard = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_metrics_report_interval_ms": "1000"}
    env.pop("RAY_ADDRESS", None)
    cmd = [RAY, "start", "--head", "--block", f"--temp-dir={temp_dir}", f"--port={_free_port()}",
           "--node-ip-address=127.0.0.1", "--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dashboard}", f"--metrics-export-port={_free_port()}",
           f"--dashboard-agent-listen-port={_free_port()}", f"--ray-client-server-port={_free_port()}",
           "--disable-usage-stats"]
    log = open(Path(temp_dir) / "head.log", "w")  # closed at teardown
    head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield f"http://127.0.0.1:{dashboard}", env, Path(temp_dir)
    finally:
        try:
            os.killpg(head.pid, signal.SIGTERM)
            head.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _kill_leftovers(temp_dir, env["RAY_AUTH_TOKEN"])
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def prometheus(metrics_ray_head, tmp_path_factory):
    _, _, temp_dir = metrics_ray_head
    work = tmp_path_factory.mktemp("prometheus")
    config = monitor.write_config(work, temp_dir, scrape_interval=f"{SCRAPE_INTERVAL_S}s")
    port = _free_port()
    proc = monitor.start(config, port, work / "data", work / "prometheus.log")
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(60):
            try:
                urllib.request.urlopen(f"{url}/-/ready", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("prometheus did not start: " + (work / "prometheus.log").read_text()[-2000:])
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _api(url: str, path: str, **params) -> dict:
    query = urllib.parse.urlencode(params, doseq=True)
    with urllib.request.urlopen(f"{url}/api/v1/{path}?{query}", timeout=30) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return body["data"]


def _submit(address: str, env: dict, config: Path, run_dir: Path) -> subprocess.CompletedProcess:
    cmd = [RAY, "job", "submit", f"--address={address}", "--", sys.executable, str(ROOT / "jobs" / "ral_grpo.py"),
           "--config", str(config), "--run-dir", str(run_dir)]
    for _ in range(60):  # the head's job agent takes a few seconds to come up after `ray start`
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
        if "No available agent" not in proc.stdout + proc.stderr and "Connection refused" not in proc.stderr:
            return proc
        time.sleep(2)
    return proc


def test_dashboards_show_a_real_run(metrics_ray_head, prometheus, tmp_path):
    address, env, _ = metrics_ray_head
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(JOB_CONFIG))
    t_start = time.time()
    proc = _submit(address, env, config, tmp_path / "run")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "[ral] step 10/10" in log, log[-4000:]
    time.sleep(4 * SCRAPE_INTERVAL_S + 2)  # the exporter's last report, then a final scrape
    t_end = time.time()

    names = set(_api(prometheus, "label/__name__/values"))
    # every metric ral_dist defines is in the scrape (the teacher's come from the distillation job only)
    missing = [s for m in metrics.METRICS if m not in metrics.DISTILL_ONLY
               for s in ([m.series + x for x in ("_bucket", "_sum", "_count")] if m.kind == "histogram" else [m.series])
               if s not in names]
    assert not missing, f"defined in ral_dist.runtime.metrics but not scraped: {missing}"

    # a gauge holds its value between updates: set once before the first step, it is still scraped after the last
    # (Ray alone would let it lapse two report intervals after it was set)
    def last_sample(series: str) -> float:
        result = _api(prometheus, "query_range", query=series, start=t_start, end=t_end, step=SCRAPE_INTERVAL_S)
        return max(float(r["values"][-1][0]) for r in result["result"])

    assert last_sample(metrics.RUN_STEPS.series) >= last_sample(metrics.STEP.series) - SCRAPE_INTERVAL_S

    # the dashboards' variables resolve to this run, as Grafana's label_values() would find them
    sessions = _api(prometheus, "label/SessionName/values", **{"match[]": metrics.RUN_STEPS.series})
    jobs = _api(prometheus, "label/JobId/values", **{"match[]": metrics.RUN_STEPS.series})
    assert len(sessions) == 1 and len(jobs) == 1, (sessions, jobs)
    values = {"SessionName": sessions[0], "JobId": jobs[0], "window": "1m"}

    # every panel's query returns data over the run, the way Grafana asks for it (a range query)
    has_gpu = any(n.startswith("ray_node_gpus_") for n in names)
    empty = []
    for board, title, expr in build.expressions():
        if not has_gpu and any(g in expr for g in GPU_METRICS):
            continue
        if "teacher" in expr or 'term="reverse_kl"' in expr:  # the distillation job's row; this is an RL run
            continue
        result = _api(prometheus, "query_range", query=resolve(expr, **values), start=t_start, end=t_end,
                      step=SCRAPE_INTERVAL_S)["result"]
        finite = [v for s in result for _, v in s["values"] if math.isfinite(float(v))]
        if not finite:
            empty.append(f"{board} / {title}: {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)

    # Prometheus loaded the alert rules, and none fires on a healthy run
    rules = [r for g in _api(prometheus, "rules")["groups"] for r in g["rules"]]
    assert len(rules) == 6 and all(r["health"] == "ok" for r in rules), rules
    assert not [r["name"] for r in rules if r["state"] == "firing"]
