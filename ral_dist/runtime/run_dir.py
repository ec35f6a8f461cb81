"""The run directory: config.yaml, metrics.jsonl (one JSON object per step), heatmaps/, checkpoints/."""

from __future__ import annotations

import json
import math
from pathlib import Path

from pydantic import BaseModel

from ral_dist.config import dump_config


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; a missing value reads as null
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        (self.path / "checkpoints").mkdir(parents=True, exist_ok=True)
        (self.path / "heatmaps").mkdir(exist_ok=True)

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    def write_config(self, config: BaseModel) -> None:
        dump_config(config, self.path / "config.yaml")

    def append_metrics(self, record: dict) -> None:
        with self.metrics_file.open("a") as fh:
            fh.write(json.dumps(_json_safe(record)) + "\n")

    def metrics(self) -> list[dict]:
        if not self.metrics_file.exists():
            return []
        return [json.loads(line) for line in self.metrics_file.read_text().splitlines() if line.strip()]

    def truncate_metrics(self, next_step: int) -> None:
        """Drop records of steps a resumed run will redo (those after the checkpoint it resumes from)."""
        kept = [r for r in self.metrics() if r["step"] < next_step]
        self.metrics_file.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def checkpoint_dir(self, step: int) -> Path:
        return self.path / "checkpoints" / f"step_{step:06d}"

    def write_checkpoint_state(self, path: Path, state: dict) -> None:
        (path / "controller_state.json").write_text(json.dumps(state))

    def latest_checkpoint(self) -> Path | None:
        done = sorted(p for p in (self.path / "checkpoints").glob("step_*") if (p / "controller_state.json").exists())
        return done[-1] if done else None

    def write_heatmap(self, step: int, sample_id: str, png: bytes) -> None:
        out = self.path / "heatmaps" / f"step_{step:06d}"
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{sample_id}.png").write_bytes(png)
