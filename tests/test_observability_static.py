"""Dashboards, alert rules and metric definitions, checked without a cluster: promtool parses every expression,
the alerts pass their unit tests, the committed dashboard JSON matches its code, and every metric name used
is defined in ral_dist.runtime.metrics (and every defined metric is on a dashboard)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the dashboards package lives at the repository root

from dashboards import build, monitor  # noqa: E402
from dashboards.common import resolve  # noqa: E402
from ral_dist.runtime import metrics  # noqa: E402

PROM_DIR = ROOT / "dashboards" / "prometheus"
PROMTOOL = shutil.which("promtool")  # `make test` installs it (make setup-prometheus); missing, these tests fail


def _promtool(*args: str) -> subprocess.CompletedProcess:
    assert PROMTOOL, "promtool is not installed (`make setup-prometheus`)"
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120)


def _alert_rules() -> list[dict]:
    return [r for g in yaml.safe_load((PROM_DIR / "alerts.yml").read_text())["groups"] for r in g["rules"]]


def test_dashboard_json_is_current():
    assert build.main(["--check"]) == 0, "dashboards/*.json are stale: run `python -m dashboards.build`"


def test_every_dashboard_expression_parses_with_promtool(tmp_path):
    # promtool parses rule expressions, so each panel query becomes a recording rule of a throwaway rules file.
    exprs = build.expressions()
    assert len(exprs) >= 30
    rules = {"groups": [{"name": "dashboard_expressions", "rules": [
        {"record": f"panel_{i}", "expr": resolve(expr)} for i, (_, _, expr) in enumerate(exprs)]}]}
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump(rules))
    proc = _promtool("check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in proc.stdout


def test_alert_rules_and_scrape_config_parse(tmp_path):
    proc = _promtool("check", "rules", str(PROM_DIR / "alerts.yml"))
    assert proc.returncode == 0 and f"SUCCESS: {len(_alert_rules())} rules found" in proc.stdout, proc.stdout
    proc = _promtool("check", "config", str(monitor.write_config(tmp_path, "/tmp/ray")))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_alert_rules_pass_their_promtool_unit_tests():
    proc = _promtool("test", "rules", str(PROM_DIR / "alerts_test.yml"))
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout, proc.stdout + proc.stderr


def test_every_alert_has_a_unit_test_that_fires_it():
    tests = yaml.safe_load((PROM_DIR / "alerts_test.yml").read_text())["tests"]
    fired = {case["alertname"] for t in tests for case in t["alert_rule_test"] if case["exp_alerts"]}
    quiet = {case["alertname"] for t in tests for case in t["alert_rule_test"] if not case["exp_alerts"]}
    names = {r["alert"] for r in _alert_rules()}
    assert names == {"RalNoProgress", "RalRewardCollapse", "RalNonFiniteLoss", "RalActorRestarts",
                     "RalWeightSyncSlow", "RalValidationDrop"}
    assert names <= fired and names <= quiet  # each is shown firing and shown quiet


def _series_names() -> set[str]:
    out = set()
    for m in metrics.METRICS:
        out |= {m.series + s for s in ("_bucket", "_sum", "_count")} if m.kind == "histogram" else {m.series}
    return out


def test_dashboards_and_alerts_use_only_defined_metrics_and_show_every_one():
    text = "\n".join(expr for _, _, expr in build.expressions())
    used = set(re.findall(r"\bray_ral_\w+", text))
    alerts = set(re.findall(r"\bray_ral_\w+", "\n".join(r["expr"] for r in _alert_rules())))
    undefined = (used | alerts) - _series_names()
    assert not undefined, f"used but not defined in ral_dist.runtime.metrics: {sorted(undefined)}"
    shown = {m.series for m in metrics.METRICS if re.search(rf"\b{m.series}(_bucket|_sum|_count)?\b", text)}
    assert shown == {m.series for m in metrics.METRICS}, "defined but on no dashboard: " + str(
        sorted({m.series for m in metrics.METRICS} - shown))


def test_metric_names_follow_prometheus_conventions():
    names = [m.name for m in metrics.METRICS]
    assert len(names) == len(set(names))
    for m in metrics.METRICS:
        assert re.fullmatch(r"ral_[a-z0-9_]+", m.name), m.name
        assert m.name.endswith("_total") == (m.kind == "counter"), m.name
        assert m.description.isascii() and m.description  # Ray's C++ recorder refuses anything else
        assert "JobId" in m.tag_keys and "job" not in m.tag_keys  # `job` is Prometheus' scrape-job label
        if m.kind == "histogram":
            assert m.buckets and all(b > 0 for b in m.buckets) and list(m.buckets) == sorted(m.buckets)
    assert metrics.PHASE_SECONDS.name.endswith("_seconds") and metrics.SYNC_BYTES.name.endswith("_bytes_total")


def test_recording_without_ray_is_a_no_op():
    # The learner and rollout code run in-process in unit tests, where no Ray is initialised.
    import ray

    ray.shutdown()  # no-op unless another test of this process left Ray running
    metrics.record_learner(None)  # would fail on the missing attributes if it recorded anything
    metrics.record_step({"step": 0}, None)  # ... and on the missing keys

    class Worker:
        rank = 0

        @metrics.timed("learner", record=metrics.record_learner)
        def train_step(self, x):
            return {"loss": float(x)}

    assert Worker().train_step(3) == {"loss": 3.0}
