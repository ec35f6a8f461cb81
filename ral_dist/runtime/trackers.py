"""Experiment trackers (``run.loggers``): TensorBoard, MLflow and Weights & Biases behind one small interface.

Each gets, from the job driver, the resolved config as hyper-parameters once, the scalars of every metrics.jsonl
record (`scalars`: the step's numbers by their metrics.jsonl key, per question type as ``per_type/<qtype>/<key>``,
a validation row's under ``val/``) at the record's step, and the heatmaps as images. metrics.jsonl itself (``jsonl``)
is written by `ral_dist.runtime.run_dir.RunDir`, always. A tracker that fails, at start (package missing, directory
not writable) or later, is reported once and disabled; training goes on. The packages are the optional extra
``ral_dist[trackers]``.

A resumed run continues the same tracker runs (ids in RUN/trackers.json): TensorBoard purges the events of the
steps being redone, MLflow keeps every value logged for a step (the last is the current one), W&B's offline
resume is a new offline directory of the same run id.
"""

from __future__ import annotations

import io
import json
import math
import os
import secrets
import time
from pathlib import Path
from typing import Protocol

import numpy as np
import yaml
from PIL import Image


def scalars(record: dict) -> dict[str, float]:
    """The numbers of a metrics.jsonl record by key (booleans, None/NaN, strings and lists left out; ``step`` and
    ``kind`` are the axis), ``per_type/<qtype>/<key>`` for its per-type figures; a validation row's under ``val/``."""
    prefix = "val/" if record.get("kind") == "val" else ""
    out = {}
    for key, value in record.items():
        if key in ("step", "kind"):
            continue
        if key == "per_type" and isinstance(value, dict):
            for qtype, figures in value.items():
                out |= {f"{prefix}per_type/{qtype}/{k}": float(v) for k, v in figures.items() if _number(v)}
        elif _number(value):
            out[prefix + key] = float(value)
    return out


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def flat_params(config: dict, prefix: str = "") -> dict:
    """A nested config as dotted keys (``learner.lr``): the hyper-parameters of a tracker run."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out |= flat_params(value, f"{prefix}{key}.")
        else:
            out[prefix + key] = value
    return out


class Tracker(Protocol):
    def log_config(self, config: dict) -> None: ...
    def log_scalars(self, step: int, values: dict[str, float]) -> None: ...
    def log_image(self, step: int, tag: str, png: bytes) -> None: ...
    def close(self, failed: bool) -> None: ...


class TensorBoardTracker:
    """Event files under RUN/tensorboard (torch's SummaryWriter; tensorboard's reader and UI)."""

    def __init__(self, run: Path, cfg, ids: dict, next_step: int):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: on a resume, TensorBoard drops the events this directory holds for the steps redone
        self.writer = SummaryWriter(str(run / "tensorboard"), purge_step=next_step if next_step else None)

    def log_config(self, config: dict) -> None:
        from torch.utils.tensorboard.summary import hparams

        params = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flat_params(config).items()}
        for summary in hparams(params, {}):  # the HPARAMS tab, in this run's own event file
            self.writer.file_writer.add_summary(summary)
        self.writer.add_text("config", "```\n" + yaml.safe_dump(config, sort_keys=False) + "\n```", 0)

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def log_image(self, step: int, tag: str, png: bytes) -> None:
        self.writer.add_image(tag, np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), step, dataformats="HWC")
        self.writer.flush()

    def close(self, failed: bool) -> None:
        self.writer.close()


class MLflowTracker:
    """One MLflow run per ral_dist run (experiment ``run.tracker_project``), at ``run.mlflow_uri`` or the file store
    RUN/mlruns; through MlflowClient, so no process-global active run is touched."""

    def __init__(self, run: Path, cfg, ids: dict, next_step: int):
        uri = cfg.run.mlflow_uri or (run / "mlruns").resolve().as_uri()
        if uri.startswith("file:"):
            # MLflow 3 refuses its file store unless asked: it is the offline, server-less store this default wants
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(uri)
        experiment = self.client.get_experiment_by_name(cfg.run.tracker_project)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else self.client.create_experiment(cfg.run.tracker_project))
        if ids.get("mlflow"):
            self.run_id = ids["mlflow"]
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(experiment_id, run_name=run.name).info.run_id
            ids["mlflow"] = self.run_id
        self.fresh = next_step == 0

    def log_config(self, config: dict) -> None:
        if not self.fresh:  # a param cannot change within a run; the resumed run's were logged at its start
            return
        from mlflow.entities import Param

        params = [Param(k, str(v)[:6000]) for k, v in flat_params(config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(_mlflow_key(k), v, now, step) for k, v in values.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])

    def log_image(self, step: int, tag: str, png: bytes) -> None:
        self.client.log_image(self.run_id, Image.open(io.BytesIO(png)), artifact_file=f"{tag}/step_{step:06d}.png")

    def close(self, failed: bool) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


def _mlflow_key(key: str) -> str:
    """MLflow keys allow letters, digits, _ - . / and spaces: anything else (a question type's own characters)
    becomes _."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in key)


class WandbTracker:
    """A W&B run (project ``run.tracker_project``; WANDB_MODE, WANDB_ENTITY... as W&B reads them) with its files
    under RUN/wandb. Each record is one W&B row with the ral_dist step as its own axis ``step`` (W&B's _step must
    grow, and a validation row shares its training step)."""

    def __init__(self, run: Path, cfg, ids: dict, next_step: int):
        import wandb

        self.wandb = wandb
        run_id = ids.setdefault("wandb", secrets.token_hex(4))  # kept in trackers.json: a resume continues it
        self.run = wandb.init(project=cfg.run.tracker_project, name=run.name, id=run_id, resume="allow",
                              dir=str(run), settings=wandb.Settings(console="off", silent=True))
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")

    def log_config(self, config: dict) -> None:
        self.run.config.update(config, allow_val_change=True)

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log({"step": step, **values})

    def log_image(self, step: int, tag: str, png: bytes) -> None:
        self.run.log({"step": step, tag: self.wandb.Image(Image.open(io.BytesIO(png)))})

    def close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


TRACKERS = {"tensorboard": TensorBoardTracker, "mlflow": MLflowTracker, "wandb": WandbTracker}


class TrackerSet:
    """The run's trackers; every call is guarded: the first failure of a tracker is printed and disables it."""

    def __init__(self, run: Path, cfg, next_step: int = 0):
        self.ids_file = run / "trackers.json"
        ids = json.loads(self.ids_file.read_text()) if self.ids_file.exists() else {}
        self.active: dict[str, Tracker] = {}
        for name in cfg.run.loggers:
            if name in TRACKERS:
                tracker = self._guard(name, lambda n=name: TRACKERS[n](run, cfg, ids, next_step), starting=True)
                if tracker is not None:
                    self.active[name] = tracker
        self.ids_file.write_text(json.dumps(ids) + "\n")
        self.call("log_config", cfg.model_dump(mode="json"))

    def _guard(self, name: str, fn, starting: bool = False):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 — a tracker must never stop training
            hint = " (pip install 'ral_dist[trackers]')" if isinstance(exc, ImportError) else ""
            print(f"[ral] logger {name} {'could not start' if starting else 'failed'}: {type(exc).__name__}: "
                  f"{str(exc)[:300]}{hint}; it is disabled, training goes on", flush=True)
            self.active.pop(name, None)
            return None

    def call(self, method: str, *args) -> None:
        for name, tracker in list(self.active.items()):
            self._guard(name, lambda t=tracker: getattr(t, method)(*args))

    def record(self, record: dict) -> None:
        self.call("log_scalars", record["step"], scalars(record))

    def image(self, step: int, tag: str, png: bytes) -> None:
        self.call("log_image", step, tag, png)

    def close(self, failed: bool = False) -> None:
        self.call("close", failed)
        self.active.clear()
