"""One entry point for every dataset format: :func:`read_split` (the data config + a split → samples and skipped
rows). It reads headers only (images: PIL header + verify; videos: a probe), never pixels, so the driver's memory
does not grow with the media.

Formats (``data.format``): ``jsonl_png`` (ours, :mod:`~ral_dist.data.dataset_io`), ``video_r1``
(:mod:`~ral_dist.data.video_r1`), ``parquet`` and ``hf`` (:mod:`~ral_dist.data.tables`), or ``auto``: a
``save_to_disk`` directory is ``hf``, a ``.parquet`` file ``parquet``, a ``.json``/``.jsonl`` file ``video_r1`` when
its first record has Video-R1's fields, else ``jsonl_png``.

Which file holds a split: ``data.files[split]`` (relative to ``data.dir`` when that is a directory); else in
``data.dir``: a ``save_to_disk`` directory, or the first of ``{split}.jsonl``, ``{split}.json``,
``{split}.parquet``; a file as ``data.dir`` is the train split; no ``data.dir`` and no ``data.files``: the
synthetic task ``data.task`` generated into the cache (``data.sizes``).
"""

from __future__ import annotations

import re
from pathlib import Path

from .cache import ensure_dataset
from .data_config import DataConfig
from .dataset_io import read_jsonl
from .rows import Skipped
from .sample import Sample
from .tables import is_saved_dataset, read_hf, read_parquet
from .video_r1 import read_video_r1

FORMATS = ("auto", "jsonl_png", "video_r1", "parquet", "hf")
_SPLIT_FILES = ("{split}.jsonl", "{split}.json", "{split}.parquet")
_VIDEO_R1_KEY = re.compile(r'"(problem_id|solution)"\s*:')


def split_path(data: DataConfig, split: str) -> Path:
    """The file (or ``save_to_disk`` directory) of ``split``; ``FileNotFoundError`` naming where it looked."""
    directory = Path(data.dir) if data.dir else None
    if split in data.files:
        path = Path(data.files[split])
        if not path.is_absolute() and directory is not None and directory.is_dir():
            path = directory / path
        if not path.exists():
            raise FileNotFoundError(f"data.files.{split}: {path} does not exist")
        return path
    if directory is None:
        if data.files:
            raise FileNotFoundError(f"no file for split {split!r} in data.files ({sorted(data.files)})")
        return ensure_dataset(data.task, data.sizes) / f"{split}.jsonl"
    if directory.is_file():
        if split != "train":
            raise FileNotFoundError(f"data.dir {directory} is one file, read as the train split; no {split!r} "
                                    "(name split files in data.files)")
        return directory
    if is_saved_dataset(directory):
        return directory
    for pattern in _SPLIT_FILES:
        path = directory / pattern.format(split=split)
        if path.is_file():
            return path
    raise FileNotFoundError(f"no file for split {split!r} in {directory} (looked for "
                            f"{', '.join(p.format(split=split) for p in _SPLIT_FILES)} and a save_to_disk dataset)")


def detect_format(path: str | Path) -> str:
    """``data.format: auto`` for one split file (see the module docstring)."""
    path = Path(path)
    if is_saved_dataset(path):
        return "hf"
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return "parquet"
    if suffix in (".json", ".jsonl"):
        with open(path, encoding="utf-8", errors="replace") as fh:
            head = fh.read(1 << 16)  # the first records name the schema; the file may be hundreds of MB
        return "video_r1" if _VIDEO_R1_KEY.search(head) else "jsonl_png"
    raise ValueError(f"cannot tell the format of {path}: set data.format (one of {FORMATS[1:]})")


def read_file(path: str | Path, fmt: str, split: str = "train", root: str | Path | None = None,
              columns: dict[str, str] | None = None, workers: int = 8, duplicate_ids: str = "skip"
              ) -> tuple[list[Sample], list[Skipped]]:
    """Read one split file in format ``fmt`` (``auto`` detects); ``root`` overrides where relative media resolve."""
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "jsonl_png":
        return read_jsonl(path, root=root, load_images=False, workers=workers, duplicate_ids=duplicate_ids)
    if fmt == "video_r1":
        return read_video_r1(path, root=root, workers=workers, duplicate_ids=duplicate_ids)
    if fmt == "parquet":
        return read_parquet(path, columns, root=root, workers=workers, duplicate_ids=duplicate_ids)
    if fmt == "hf":
        return read_hf(path, split, columns, root=root, workers=workers, duplicate_ids=duplicate_ids)
    raise ValueError(f"unknown data format {fmt!r}; known: {FORMATS}")


def read_split(data: DataConfig, split: str) -> tuple[list[Sample], list[Skipped]]:
    """Samples (no pixels; ``frame_hw`` from the headers) and skipped rows of ``split`` under ``data``
    (``format``, ``dir``, ``files``, ``root``, ``columns``, ``read_workers``, ``duplicate_ids``, ``task``, ``sizes``).
    Raises ``FileNotFoundError`` when the split has no file, ``ValueError`` for a file that cannot be read at all
    (a JSON array that does not parse); a bad row is skipped, never raised."""
    path = split_path(data, split)
    return read_file(path, data.format, split, data.root, data.columns, data.read_workers, data.duplicate_ids)
