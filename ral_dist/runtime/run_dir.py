"""The run directory: config.yaml, metrics.jsonl (one JSON object per step, and one per validation with
``"kind": "val"``), heatmaps/, checkpoints/ (`ral_dist.runtime.checkpoints`: atomic writes, retention), the
trackers' files (`ral_dist.runtime.trackers`, which also get every record and heatmap written here)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from pydantic import BaseModel

from ral_dist.config import ConfigError, dump_config
from ral_dist.runtime import checkpoints


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; a missing value reads as null
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def run_path(value: str | Path, flag: str = "--run-dir") -> Path:
    """A run directory given as a path or a ``file://`` URL, as a local path. Object-store URLs (``s3://``,
    ``gs://``, ...) are refused naming the flag: the learners' DeepSpeed checkpoints and the appended metrics need a
    file system every node mounts (the KubeRay manifests' ReadWriteMany PVC, or the bucket mounted with
    mountpoint-s3 / gcsfuse on every node), and a path on it is what to pass."""
    text = str(value)
    scheme, sep, rest = text.partition("://")
    if not sep or "/" in scheme:
        return Path(text)
    if scheme == "file":
        host, _, path = rest.partition("/")
        if host not in ("", "localhost"):
            raise ConfigError(f"{flag} {text}: a file:// URL names a path on every node, not on host {host!r}")
        return Path("/" + path)
    raise ConfigError(f"{flag} {text}: {scheme}:// is not written directly (DeepSpeed writes checkpoints to a file "
                     "system): mount the bucket on every node (a ReadWriteMany PVC as in cluster/base/storage.yaml, "
                     "mountpoint-s3, gcsfuse) and pass the mount path, or a file:// URL of it")


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        (self.path / "checkpoints").mkdir(parents=True, exist_ok=True)
        (self.path / "heatmaps").mkdir(exist_ok=True)
        self.trackers = None  # a TrackerSet once `open_trackers`

    def open_trackers(self, config, next_step: int = 0) -> None:
        """Start the trackers of ``run.loggers`` (the resolved config as their hyper-parameters); a resumed run
        passes the step it continues at."""
        from ral_dist.runtime.trackers import TrackerSet

        self.close()  # a recovery reopens them at the step it continues from
        self.trackers = TrackerSet(self.path, config, next_step)

    def close(self, failed: bool = False) -> None:
        """End the trackers' runs (``failed``: marked so where the tracker has a status)."""
        if self.trackers is not None:
            self.trackers.close(failed)
            self.trackers = None

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    def write_config(self, config: BaseModel) -> None:
        dump_config(config, self.path / "config.yaml")

    def append_metrics(self, record: dict) -> None:
        with self.metrics_file.open("a") as fh:
            fh.write(json.dumps(_json_safe(record)) + "\n")
        if self.trackers is not None:
            self.trackers.record(record)

    def metrics(self) -> list[dict]:
        if not self.metrics_file.exists():
            return []
        return [json.loads(line) for line in self.metrics_file.read_text().splitlines() if line.strip()]

    def truncate_metrics(self, next_step: int) -> None:
        """Drop records of steps a resumed run will redo (those after the checkpoint it resumes from)."""
        kept = [r for r in self.metrics() if r["step"] < next_step]
        self.metrics_file.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def val_accuracy(self) -> dict[int, float]:
        """Validation accuracy by step (the validation rows of metrics.jsonl)."""
        return {r["step"]: r.get("accuracy") for r in self.metrics() if r.get("kind") == "val"}

    @property
    def checkpoints_root(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint_dir(self, step: int) -> Path:
        return self.checkpoints_root / f"step_{step:06d}"

    def partial_checkpoint_dir(self, step: int) -> Path:
        """Where the learners write a checkpoint before `commit_checkpoint` renames it (an old one is cleared)."""
        partial = checkpoints.partial_dir(self.checkpoint_dir(step))
        shutil.rmtree(partial, ignore_errors=True)
        return partial

    def commit_checkpoint(self, step: int, state: dict, run_cfg) -> Path:
        """Verify and rename the checkpoint written to `partial_checkpoint_dir`, then apply the retention of
        ``run_cfg`` (``keep_checkpoints``, ``keep_best``, ``keep_optimizer_state``). Returns the checkpoint."""
        final = self.checkpoint_dir(step)
        checkpoints.commit(checkpoints.partial_dir(final), final, state)
        deleted = checkpoints.prune(self.checkpoints_root, run_cfg.keep_checkpoints, run_cfg.keep_best,
                                    run_cfg.keep_optimizer_state, self.val_accuracy())
        if deleted:
            print(f"[ral] checkpoint {final.name} written; retention deleted {', '.join(deleted)}", flush=True)
        return final

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint with its optimizer state: what --resume and recovery load."""
        return checkpoints.latest(self.checkpoints_root)

    def write_heatmap(self, step: int, sample_id: str, png: bytes) -> None:
        out = self.path / "heatmaps" / f"step_{step:06d}"
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{sample_id}.png").write_bytes(png)
        if self.trackers is not None:
            self.trackers.image(step, f"heatmaps/{sample_id}", png)
