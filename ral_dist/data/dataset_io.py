"""Our normalised JSONL format (``data.format: jsonl_png``): :func:`write_dataset` writes it, :func:`read_jsonl` /
:func:`read_dataset` read it.

Layout: ``DIR/{split}.jsonl``, one flat JSON object per line with the fields of
:data:`~ral_dist.data.sample.RECORD_FIELDS` (``media`` a list of paths relative to ``root``, or to the file's folder
when ``root`` is empty), and the generator's frames as ``DIR/images/*.png``. Readable with
``datasets.load_dataset("json", data_files=...)`` and plain Python.

:func:`read_jsonl` accepts any row of this form: ``id``, ``media`` (or ``images``, the name before issue 18),
``question`` and ``answer`` are required (a numeric id or answer becomes its string); the other fields are
optional. Bad rows are skipped with a reason (:mod:`ral_dist.data.rows`), never raised.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .rows import RowError, Skipped, accept_rows, iter_json_records, map_rows
from .sample import RECORD_FIELDS, Sample, is_video_file

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_OPTIONAL = ("kind", "options", "problem_type", "qtype", "regions", "rationale", "layout_key", "source")


def image_filename(split: str, sample_id: str, frame: int) -> str:
    """File name (inside ``images/``) of a frame; prefixed with the split unless the id already is."""
    safe = _SAFE.sub("_", str(sample_id)) or "sample"
    if split and not safe.startswith(f"{split}-"):
        safe = f"{split}-{safe}"
    return f"{safe}_{frame}.png"


def write_dataset(samples: list[Sample], out_dir: str | Path, split: str) -> Path:
    """Write ``out_dir/{split}.jsonl`` and the frames as ``out_dir/images/*.png``; returns the JSONL path.

    Every sample needs its frames in ``images`` or as image files (:meth:`Sample.get_images`)."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    path = out / f"{split}.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for line, s in enumerate(samples):
            rels = []
            for k, im in enumerate(s.get_images()):
                name = image_filename(split, s.id, k)
                if name in used:  # ids that sanitise to the same name
                    name = image_filename(split, f"{s.id}-{line}", k)
                used.add(name)
                im.convert("RGB").save(out / "images" / name, format="PNG")
                rels.append(f"images/{name}")
            rec = {**s.to_record(), "media": rels, "root": ""}
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return path


def _text(rec: dict, name: str, number_ok: bool = False) -> str:
    v = rec.get(name)
    if v is None:
        raise RowError(f"missing field '{name}'")
    if number_ok and isinstance(v, int | float) and not isinstance(v, bool):
        v = str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
    if not isinstance(v, str):
        raise RowError(f"invalid field '{name}': expected a string")
    return v


def ours_fields(rec: dict, root: str, root_fixed: bool = False) -> dict[str, Any]:
    """A row of our format → Sample fields. ``root``: the folder relative media resolve against, unless the row
    names its own ``root`` and ``root_fixed`` (``data.root`` set) is false."""
    if rec.get("media") is not None and rec.get("images") is not None:
        raise RowError("invalid row: both 'media' and 'images' (its name before issue 18) given")
    media = rec.get("media", rec.get("images"))
    if media is None:
        raise RowError("missing field 'media'")
    media = [media] if isinstance(media, str) else media
    if not isinstance(media, list) or not media or not all(isinstance(p, str) and p for p in media):
        raise RowError("invalid field 'media': expected a non-empty list of paths")
    fields: dict[str, Any] = {
        "id": _text(rec, "id", number_ok=True), "media": media, "question": _text(rec, "question"),
        "answer": _text(rec, "answer", number_ok=True),
        "kind": "video" if len(media) > 1 or is_video_file(media[0]) else "image",
    }
    fields.update({k: rec[k] for k in _OPTIONAL if rec.get(k) is not None})
    own_root = rec.get("root")
    fields["root"] = own_root if isinstance(own_root, str) and own_root and not root_fixed else root
    extra = {k: v for k, v in rec.items() if k not in (*RECORD_FIELDS, "images")}
    if extra:
        fields["meta"] = {"extra": extra}
    return fields


def read_jsonl(path: str | Path, root: str | Path | None = None, load_images: bool = True, workers: int = 8,
               duplicate_ids: str = "skip") -> tuple[list[Sample], list[Skipped]]:
    """Read one file of our format; media paths are relative to ``root`` (default: the row's ``root``, else the
    file's folder). With ``load_images`` the image and frame files are read into ``Sample.images`` (RGB, as
    stored; rows of a video file keep none: :func:`~ral_dist.data.media.load_frames` decodes them where used);
    without, only their headers are checked."""
    path = Path(path)
    base = str(Path(root if root is not None else path.parent).resolve())  # actors run in another cwd
    rows = map_rows(iter_json_records(path), lambda rec: ours_fields(rec, base, root is not None), "id")
    samples, skipped = accept_rows(rows, workers=workers, duplicate_ids=duplicate_ids)
    if not load_images:
        return samples, skipped
    loaded = []
    for s in samples:
        try:
            if not s.is_video_file:
                s.images = s.get_images()
        except OSError as e:  # passed the header check, fails to decode
            skipped.append(Skipped(s.meta.get("line", 0), s.id, f"unreadable image: {type(e).__name__}: {e}"))
            continue
        loaded.append(s)
    return loaded, sorted(skipped, key=lambda k: k.line)


def read_dataset(data_dir: str | Path, split: str, load_images: bool = True
                 ) -> tuple[list[Sample], list[Skipped]]:
    """Read ``data_dir/{split}.jsonl`` (see :func:`read_jsonl`). Raises ``FileNotFoundError`` only when the file
    itself is missing."""
    data_dir = Path(data_dir)
    path = data_dir / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no {split}.jsonl in {data_dir}")
    return read_jsonl(path, load_images=load_images)
