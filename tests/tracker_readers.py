"""Read back what the trackers wrote, each with its own reader: TensorBoard's EventAccumulator, MlflowClient on the
file store, and W&B's offline transaction log (its records are W&B's own protobufs; the log is LevelDB's record
format, which the wandb package reads only in its Go core)."""

from __future__ import annotations

import json
import os
import struct
from collections import defaultdict
from pathlib import Path

from ral_dist.runtime.trackers import scalars


def expected_scalars(run: Path) -> dict[str, dict[int, float]]:
    """tag -> step -> value, from metrics.jsonl as the trackers are given it (the last record of a step wins)."""
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for tag, value in scalars(record).items():
            out[tag][record["step"]] = value
    return dict(out)


def tensorboard_scalars(run: Path) -> tuple[dict[str, dict[int, float]], list[str], dict]:
    """(tag -> step -> value, image tags, the hparams plugin's content) of RUN/tensorboard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    values = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in tags["scalars"]}
    hparams = {}
    for content in acc.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        if data.HasField("session_start_info"):
            hparams = {k: v.string_value or v.number_value for k, v in data.session_start_info.hparams.items()}
    return values, tags["images"], hparams


def mlflow_scalars(run: Path, experiment: str = "ral_dist") -> tuple[dict[str, dict[int, float]], dict, list[str]]:
    """(key -> step -> last value, params, artifact paths) of the one MLflow run in RUN/mlruns."""
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient((run / "mlruns").resolve().as_uri())
    exp = client.get_experiment_by_name(experiment)
    (mrun,) = client.search_runs([exp.experiment_id])
    values = {}
    for key in mrun.data.metrics:
        history = sorted(client.get_metric_history(mrun.info.run_id, key), key=lambda m: m.timestamp)
        values[key] = {m.step: m.value for m in history}

    def artifacts(path=None) -> list[str]:
        out = []
        for info in client.list_artifacts(mrun.info.run_id, path):
            out += artifacts(info.path) if info.is_dir else [info.path]
        return out

    return values, mrun.data.params, artifacts()


def _leveldb_records(path: Path) -> list[bytes]:
    """The records of one W&B transaction log: a 7-byte header (":W&B", magic, version), then 32 KiB blocks of
    chunks, each with a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    raw = path.read_bytes()
    ident, magic, _ = struct.unpack("<4sHB", raw[:7])
    assert ident == b":W&B" and magic == 0xBEE1, (ident, magic)
    block, pos, records, pending = 32768, 7, [], b""
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        if kind == 0 and length == 0:
            break
        data, pos = raw[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:
            records.append(data)
        elif kind == 2:
            pending = data
        elif kind == 3:
            pending += data
        elif kind == 4:
            records.append(pending + data)
    return records


def wandb_scalars(run: Path) -> tuple[dict[str, dict[int, float]], dict, list[str]]:
    """(key -> ral_dist step -> value, the run's config, image keys) of every offline W&B run under RUN/wandb, in
    the order they were written (a resume is a later offline directory of the same id)."""
    from wandb.proto import wandb_internal_pb2 as pb

    values: dict[str, dict[int, float]] = defaultdict(dict)
    config, images = {}, set()
    for log in sorted((run / "wandb").glob("offline-run-*/run-*.wandb")):
        for data in _leveldb_records(log):
            record = pb.Record.FromString(data)
            kind = record.WhichOneof("record_type")
            if kind in ("run", "config"):
                update = record.run.config.update if kind == "run" else record.config.update
                config |= {item.key: json.loads(item.value_json) for item in update}
            elif kind == "history":
                row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
                for key, value in row.items():
                    if key.endswith("/_type") and value == "image-file":
                        images.add(key.removesuffix("/_type"))
                    elif not key.startswith("_") and key != "step" and isinstance(value, (int, float)) \
                            and "/" + key.rsplit("/", 1)[-1] not in ("/width", "/height", "/size"):
                        values[key][row["step"]] = float(value)
    return dict(values), config, sorted(images)
