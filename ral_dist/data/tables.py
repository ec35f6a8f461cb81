"""Tables: Parquet files (``data.format: parquet``) and Hugging Face ``datasets`` (``data.format: hf``: a
``save_to_disk`` directory through ``load_from_disk``, or local json/parquet files through ``load_dataset``).

Rows are read as Arrow records, never decoded: an ``Image``/``Video`` column stays ``{bytes, path}``. A column
mapping (``data.columns``, our field → the table's column, e.g. ``{question: problem, media: path}``) renames
columns first; a row then in the Video-R1 schema (``problem_id``, or ``problem`` + ``solution``) is mapped by
:mod:`~ral_dist.data.video_r1`, any other by our JSONL rules (:func:`~ral_dist.data.dataset_io.ours_fields`).
Media given as bytes (embedded images) are written once to ``$RAL_DIST_CACHE/media/`` (named by their hash) and
referenced by path: the header checks and the actors read files.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from ral_dist.paths import cache_dir

from .dataset_io import ours_fields
from .rows import RawRow, RowError, Skipped, accept_rows, map_rows
from .sample import Sample
from .video_r1 import FIELD_NAMES, is_video_r1, video_r1_fields

_MEDIA_COLUMNS = ("media", "images", "path")
_BATCH = 1024


def _materialise(value: Any) -> Any:
    """``{bytes, path}`` (an Arrow image/video struct) → a file path: the path when it exists, else the bytes
    written to the media cache. Other values are returned as they are."""
    if isinstance(value, list):
        return [_materialise(v) for v in value]
    if not isinstance(value, dict):
        return value
    raw, name = value.get("bytes"), value.get("path")
    if not raw:
        if isinstance(name, str) and name:
            return name
        raise RowError("invalid field 'media': neither bytes nor a path")
    suffix = Path(name).suffix if isinstance(name, str) and Path(name).suffix else ""
    if not suffix:
        try:  # the header names the format; no pixel is decoded
            with Image.open(io.BytesIO(raw)) as im:
                suffix = f".{(im.format or 'bin').lower()}"
        except Exception:
            raise RowError("invalid field 'media': embedded bytes of an unknown format") from None
    target = cache_dir("media") / f"{hashlib.sha256(raw).hexdigest()[:32]}{suffix}"
    if not target.exists():
        tmp = target.with_suffix(f"{suffix}.{os.getpid()}.tmp")  # per process: a kill leaves only this, never read
        tmp.write_bytes(raw)
        tmp.replace(target)
    return str(target)


def table_fields(rec: dict, columns: dict[str, str], root: str, root_fixed: bool) -> dict[str, Any]:
    """A table row → Sample fields, through the column mapping."""
    rec = dict(rec)
    for ours, theirs in columns.items():
        if theirs in rec:
            rec[ours] = rec.pop(theirs)
    for key in _MEDIA_COLUMNS:
        if key in rec and rec[key] is not None:
            rec[key] = _materialise(rec[key])
    if is_video_r1(rec):
        return video_r1_fields(rec, root)
    return ours_fields(rec, root, root_fixed)


def _names(columns: dict[str, str], video_r1: bool) -> dict[str, str]:
    """Our field → the name a skip reason shows (the table's column)."""
    return {**(FIELD_NAMES if video_r1 else {}), **columns}


def _read(records: Iterator[RawRow], columns: dict[str, str], root: str, root_fixed: bool, workers: int,
          duplicate_ids: str) -> tuple[list[Sample], list[Skipped]]:
    rows = list(records)
    first = next((r.fields for r in rows if r.fields is not None), {})
    renamed = dict(first)
    for ours, theirs in columns.items():
        if theirs in renamed:
            renamed[ours] = renamed.pop(theirs)
    id_key = columns.get("id") or columns.get("problem_id") or ("problem_id" if is_video_r1(renamed) else "id")
    mapped = map_rows(rows, lambda rec: table_fields(rec, columns, root, root_fixed), id_key)
    return accept_rows(mapped, _names(columns, is_video_r1(renamed)), workers=workers, duplicate_ids=duplicate_ids)


def _arrow_rows(batches) -> Iterator[RawRow]:
    line = 0
    for batch in batches:
        for rec in batch.to_pylist():
            line += 1
            yield RawRow(line, None, fields=rec)


def read_parquet(path: str | Path, columns: dict[str, str] | None = None, root: str | Path | None = None,
                 workers: int = 8, duplicate_ids: str = "skip") -> tuple[list[Sample], list[Skipped]]:
    """Read a Parquet file; media relative to ``root`` (default the file's folder)."""
    import pyarrow.parquet as pq

    path = Path(path)
    base = str(Path(root if root is not None else path.parent).resolve())
    batches = pq.ParquetFile(path).iter_batches(batch_size=_BATCH)
    return _read(_arrow_rows(batches), columns or {}, base, root is not None, workers, duplicate_ids)


def is_saved_dataset(path: Path) -> bool:
    """A ``datasets`` ``save_to_disk`` directory (a DatasetDict or one Dataset)."""
    return path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "state.json"))


def _load_hf(path: Path, split: str):
    import datasets

    if is_saved_dataset(path):
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise FileNotFoundError(f"split {split!r} not in {path} (has {sorted(loaded)})")
            return loaded[split]
        if split != "train":
            raise FileNotFoundError(f"{path} holds one dataset, read as the train split; no {split!r}")
        return loaded
    builder = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}.get(path.suffix.lower())
    if builder is None or not path.is_file():
        raise FileNotFoundError(f"{path}: neither a save_to_disk directory nor a .json/.jsonl/.parquet file")
    return datasets.load_dataset(builder, data_files={split: str(path)}, split=split)


def read_hf(path: str | Path, split: str, columns: dict[str, str] | None = None, root: str | Path | None = None,
            workers: int = 8, duplicate_ids: str = "skip") -> tuple[list[Sample], list[Skipped]]:
    """Read split ``split`` of a ``save_to_disk`` directory, or a local json/parquet file with ``load_dataset``;
    media relative to ``root`` (default the directory, or the file's folder)."""
    path = Path(path)
    ds = _load_hf(path, split)
    default_root = path if path.is_dir() else path.parent
    base = str(Path(root if root is not None else default_root).resolve())
    batches = ds.with_format("arrow").iter(batch_size=_BATCH)
    return _read(_arrow_rows(batches), columns or {}, base, root is not None, workers, duplicate_ids)
