"""Run a local Prometheus against the local Ray cluster (what `make monitor` does), and say how to add Grafana.

    python -m dashboards.monitor [--ray-temp-dir /tmp/ray] [--port 9090] [--dir runs/prometheus]

Prometheus (Debian package ``prometheus``) listens on 127.0.0.1 only, finds every Ray node through the
service-discovery file the Ray head writes under its temp dir, and evaluates ``prometheus/alerts.yml``.
The tests start the same server through ``write_config`` and ``start``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "prometheus" / "prometheus.yml"
ALERTS = HERE / "prometheus" / "alerts.yml"
DASHBOARDS = sorted(HERE.glob("*.json"))
SD_FILE = "prom_metrics_service_discovery.json"  # the name Ray gives it under --temp-dir


def write_config(out_dir: Path, ray_temp_dir: str | Path = "/tmp/ray", scrape_interval: str | None = None) -> Path:
    """The committed config with the service-discovery file of ``ray_temp_dir``; alerts.yml is copied beside it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load(CONFIG.read_text())
    config["scrape_configs"][0]["file_sd_configs"] = [{"files": [str(Path(ray_temp_dir) / SD_FILE)]}]
    if scrape_interval:
        config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = scrape_interval
    shutil.copy(ALERTS, out_dir / ALERTS.name)
    path = out_dir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def command(config: Path, port: int, data_dir: Path) -> list[str]:
    return ["prometheus", f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}",
            f"--storage.tsdb.path={data_dir}", "--storage.tsdb.retention.time=15d"]


def start(config: Path, port: int, data_dir: Path, log: Path) -> subprocess.Popen:
    with log.open("w") as fh:
        return subprocess.Popen(command(config, port, data_dir), stdout=fh, stderr=subprocess.STDOUT)


def instructions(port: int, ray_temp_dir: Path) -> str:
    prom = f"http://127.0.0.1:{port}"
    boards = " ".join(str(p) for p in DASHBOARDS)
    return f"""Prometheus: {prom}  (scrapes the Ray cluster of {ray_temp_dir}; alert rules: {ALERTS})
Grafana (not installed here):
  - add a Prometheus data source at {prom}, then Dashboards -> New -> Import each of: {boards}
  - or run Grafana with the provisioning Ray writes for its own dashboards (its data source is localhost:9090):
      cp {boards} {ray_temp_dir}/session_latest/metrics/grafana/dashboards/
      grafana-server --config {ray_temp_dir}/session_latest/metrics/grafana/grafana.ini web
  - for the Metrics tab of Ray's dashboard, start the Ray head with
      RAY_PROMETHEUS_HOST={prom} RAY_GRAFANA_HOST=http://127.0.0.1:3000 ray start --head ...
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ray-temp-dir", default="/tmp/ray", type=Path)
    p.add_argument("--port", type=int, default=9090)
    p.add_argument("--dir", default=Path("runs/prometheus"), type=Path, help="config and TSDB directory")
    args = p.parse_args(argv)
    if shutil.which("prometheus") is None:
        print("prometheus is not installed: `make setup-prometheus` (Debian package prometheus)", file=sys.stderr)
        return 1
    if not (args.ray_temp_dir / SD_FILE).exists():
        print(f"note: no {args.ray_temp_dir / SD_FILE} yet; Prometheus picks the cluster up once "
              "`ray start --head` writes it", file=sys.stderr)
    config = write_config(args.dir, args.ray_temp_dir)
    print(instructions(args.port, args.ray_temp_dir), flush=True)
    try:
        return subprocess.call(command(config, args.port, args.dir / "data"))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
