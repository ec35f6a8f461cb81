"""The run directory: config.yaml, metrics.jsonl (one JSON object per step, and one per validation with
``"kind": "val"``), heatmaps/, checkpoints/ (`ral_dist.runtime.checkpoints`: atomic writes, retention), the
trackers' files (`ral_dist.runtime.trackers`, which also get every record and heatmap written here).

A run directory on an object store is written to a local staging directory and mirrored as it is written: config.yaml,
metrics.jsonl (the whole small file re-put after each record) and each heatmap at once, environment.json and the
other top-level files at the start, the trackers' files and the report at the end; checkpoints by the learners that
write them, committed here (`ral_dist.runtime.remote_checkpoints`)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from pydantic import BaseModel

from ral_dist.config import dump_config
from ral_dist.runtime import checkpoints, remote_checkpoints
from ral_dist.runtime.object_store import Mirror, RunLocation, run_location


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; a missing value reads as null
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def run_path(value: str | Path, flag: str = "--run-dir") -> RunLocation:
    """A run directory given as a path, a ``file://`` URL or an fsspec URL (``s3://``, ``gs://``: mirrored through
    a local staging directory, `ral_dist.runtime.object_store`); bad input fails naming ``flag``."""
    return run_location(value, flag)


class RunDir:
    def __init__(self, path: str | Path, url: str | None = None):
        self.path = Path(path)  # a mirrored run's staging directory
        self.mirror = Mirror(url) if url else None
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
    def location(self) -> str:
        """The run directory as the user named it (the URL of a mirrored run)."""
        return self.mirror.url if self.mirror else str(self.path)

    def push(self, *names: str) -> None:
        """Upload these files of the staging directory (nothing for a local run directory)."""
        if self.mirror:
            for name in names:
                self.mirror.put_file(self.path / name, name)

    def push_all(self) -> None:
        """Upload every file but the checkpoints and heatmaps (uploaded as they are written): environment.json,
        memory_plan.json, skipped rows, the trackers' files, the report."""
        if self.mirror:
            self.mirror.put_tree(self.path, skip=("checkpoints", "heatmaps"))

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    def write_config(self, config: BaseModel) -> None:
        dump_config(config, self.path / "config.yaml")
        self.push("config.yaml")

    def append_metrics(self, record: dict) -> None:
        with self.metrics_file.open("a") as fh:
            fh.write(json.dumps(_json_safe(record)) + "\n")
        self.push("metrics.jsonl")  # an object has no append: the whole (small) file again
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
        self.push("metrics.jsonl")

    def val_accuracy(self) -> dict[int, float]:
        """Validation accuracy by step (the validation rows of metrics.jsonl)."""
        return {r["step"]: r.get("accuracy") for r in self.metrics() if r.get("kind") == "val"}

    @property
    def checkpoints_root(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint_dir(self, step: int) -> Path:
        return self.checkpoints_root / f"step_{step:06d}"

    def partial_checkpoint_dir(self, step: int) -> Path:
        """Where the learners write a checkpoint before `commit_checkpoint` renames it (an old one is cleared). For
        a mirrored run, the staging directory each learner rank writes its files to before uploading them; a
        checkpoint of this step already at the URL (a step redone after a recovery) is deleted first."""
        partial = checkpoints.partial_dir(self.checkpoint_dir(step))
        shutil.rmtree(partial, ignore_errors=True)
        if self.mirror:
            remote_checkpoints.discard(self.mirror, remote_checkpoints.name(step))
        return partial

    def checkpoint_upload_url(self, step: int) -> str | None:
        """Where the learners upload their files of ``step`` (None: a local run directory, nothing uploaded)."""
        return self.mirror.url_of(remote_checkpoints.name(step)) if self.mirror else None

    def commit_checkpoint(self, step: int, state: dict, run_cfg, uploaded: list[list[str]] | None = None) -> str:
        """Verify and rename the checkpoint written to `partial_checkpoint_dir` (a mirrored run: verify what each
        rank ``uploaded`` and write its marker), then apply the retention of ``run_cfg`` (``keep_checkpoints``,
        ``keep_best``, ``keep_optimizer_state``). Returns the checkpoint (a path, or a URL)."""
        args = (run_cfg.keep_checkpoints, run_cfg.keep_best, run_cfg.keep_optimizer_state, self.val_accuracy())
        if self.mirror:
            final = self.mirror.url_of(remote_checkpoints.commit(self.mirror, step, state, uploaded or []))
            shutil.rmtree(checkpoints.partial_dir(self.checkpoint_dir(step)), ignore_errors=True)
            deleted = remote_checkpoints.prune(self.mirror, *args)
        else:
            final = self.checkpoint_dir(step)
            checkpoints.commit(checkpoints.partial_dir(final), final, state)
            deleted = checkpoints.prune(self.checkpoints_root, *args)
        if deleted:
            name = str(final).rsplit("/", 1)[-1]
            print(f"[ral] checkpoint {name} written; retention deleted {', '.join(deleted)}", flush=True)
        return str(final)

    def latest_checkpoint(self) -> str | None:
        """The newest complete checkpoint with its optimizer state: what --resume and recovery load (a path, or
        the URL of one the learners download)."""
        if self.mirror:
            rel = remote_checkpoints.latest(self.mirror)
            return self.mirror.url_of(rel) if rel else None
        latest = checkpoints.latest(self.checkpoints_root)
        return str(latest) if latest else None

    def checkpoint_state(self, checkpoint: str) -> dict:
        """The controller state of ``checkpoint`` (as `latest_checkpoint` named it)."""
        if self.mirror:
            return remote_checkpoints.read_state(self.mirror, checkpoint.removeprefix(self.mirror.url + "/"))
        return json.loads((Path(checkpoint) / checkpoints.STATE).read_text())

    def write_heatmap(self, step: int, sample_id: str, png: bytes) -> None:
        out = self.path / "heatmaps" / f"step_{step:06d}"
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{sample_id}.png").write_bytes(png)
        self.push(f"heatmaps/{out.name}/{sample_id}.png")
        if self.trackers is not None:
            self.trackers.image(step, f"heatmaps/{sample_id}", png)
