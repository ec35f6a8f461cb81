"""JSONL + PNG datasets: :func:`write_dataset` writes them, :func:`read_dataset` / :func:`read_jsonl` read them.

Layout: ``out_dir/{split}.jsonl``, one flat JSON object per line with the fields of
:data:`~ral_dist.data.sample.RECORD_FIELDS` (always present, always the same types: ``images`` a list of relative
PNG paths, ``answer`` a string, ``regions`` a list of ``[frame, x0, y0, x1, y1]`` int lists), and
``out_dir/images/*.png``. Readable with ``datasets.load_dataset("json", data_files=...)`` and plain Python.

:func:`read_dataset` accepts any dataset of this format: ``id``, ``images``, ``question`` and ``answer`` are
required; ``kind`` (inferred from the image count), ``qtype`` ("unknown"), ``regions`` ([]), ``rationale`` ("")
and ``layout_key`` ("") are optional. Bad rows are skipped with a reason, never raised.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .sample import Sample

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Skipped:
    line: int  # 1-based line number in the JSONL file
    id: str | None
    reason: str


def image_filename(split: str, sample_id: str, frame: int) -> str:
    """File name (inside ``images/``) of a frame; prefixed with the split unless the id already is."""
    safe = _SAFE.sub("_", str(sample_id)) or "sample"
    if split and not safe.startswith(f"{split}-"):
        safe = f"{split}-{safe}"
    return f"{safe}_{frame}.png"


def write_dataset(samples: list[Sample], out_dir: str | Path, split: str) -> Path:
    """Write ``out_dir/{split}.jsonl`` and the frames as ``out_dir/images/*.png``; returns the JSONL path.

    Every sample needs its frames in ``images`` (or loadable through :meth:`Sample.get_images`)."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    path = out / f"{split}.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for line, s in enumerate(samples):
            frames = s.get_images()
            rels = []
            for k, im in enumerate(frames):
                name = image_filename(split, s.id, k)
                if name in used:  # ids that sanitise to the same name
                    name = image_filename(split, f"{s.id}-{line}", k)
                used.add(name)
                im.convert("RGB").save(out / "images" / name, format="PNG")
                rels.append(f"images/{name}")
            rec = s.to_record()
            rec["images"] = rels
            rec["kind"] = s.kind or ("video" if len(rels) > 1 else "image")
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return path


# ---------------------------------------------------------------------------------------------- reading


class _Bad(Exception):
    pass


def _as_int(v) -> int:
    if isinstance(v, bool):
        raise _Bad
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    raise _Bad


def _str_field(rec: dict, name: str, default: str | None = None, allow_number: bool = False) -> str:
    if name not in rec or rec[name] is None:
        if default is None:
            raise _Bad(f"missing field '{name}'")
        return default
    v = rec[name]
    if allow_number and isinstance(v, int | float) and not isinstance(v, bool):
        v = str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
    if not isinstance(v, str):
        raise _Bad(f"invalid field '{name}': expected a string")
    return v


def _parse_row(rec: dict, root: Path) -> Sample:
    """Validate the JSON fields (not the images)."""
    sid = _str_field(rec, "id")
    if not sid:
        raise _Bad("invalid field 'id': empty")
    if "images" not in rec or rec["images"] is None:
        raise _Bad("missing field 'images'")
    imgs = rec["images"]
    if isinstance(imgs, str):
        imgs = [imgs]
    if not isinstance(imgs, list) or not imgs or not all(isinstance(p, str) and p for p in imgs):
        raise _Bad("invalid field 'images': expected a non-empty list of paths")
    question = _str_field(rec, "question")
    answer = _str_field(rec, "answer", allow_number=True).strip()
    kind = _str_field(rec, "kind", "video" if len(imgs) > 1 else "image")
    if kind not in ("image", "video"):
        raise _Bad(f"invalid field 'kind': {kind!r}")
    if kind == "image" and len(imgs) != 1:
        raise _Bad("invalid field 'kind': an image row needs exactly one image")
    qtype = _str_field(rec, "qtype", "unknown")
    rationale = _str_field(rec, "rationale", "")
    layout_key = _str_field(rec, "layout_key", "")
    raw_regions = rec.get("regions")
    raw_regions = [] if raw_regions is None else raw_regions
    if not isinstance(raw_regions, list):
        raise _Bad("invalid field 'regions': expected a list")
    regions = []
    for r in raw_regions:
        try:
            if not isinstance(r, list) or len(r) != 5:
                raise _Bad
            f, x0, y0, x1, y1 = (_as_int(v) for v in r)
        except _Bad:
            raise _Bad(f"invalid field 'regions': {r!r} is not [frame, x0, y0, x1, y1]") from None
        if not (0 <= f < len(imgs)) or x0 < 0 or y0 < 0 or x1 <= x0 or y1 <= y0:
            raise _Bad(f"invalid field 'regions': bad box {r!r}")
        regions.append([f, x0, y0, x1, y1])
    return Sample(id=sid, kind=kind, images=[], image_paths=list(imgs), question=question, answer=answer,
                  qtype=qtype, regions=regions, rationale=rationale, layout_key=layout_key,
                  meta={"root": str(root)})


def _load_images(s: Sample, root: Path, load: bool) -> None:
    sizes = []
    frames = []
    for p in s.image_paths:
        fp = Path(p) if Path(p).is_absolute() else root / p
        if not fp.is_file():
            raise _Bad(f"missing image file: {p}")
        try:
            with Image.open(fp) as im:
                if load:
                    im.load()
                    frames.append(im.convert("RGB"))
                    sizes.append(im.size)
                else:
                    sizes.append(im.size)
                    im.verify()
        except Exception as e:  # any decoder error means an unreadable file
            raise _Bad(f"unreadable image: {p} ({type(e).__name__}: {e})") from None
    w, h = sizes[0]
    if s.kind == "video" and any(sz != (w, h) for sz in sizes):
        raise _Bad("invalid images: video frames differ in size")
    for f, x0, y0, x1, y1 in s.regions:
        fw, fh = sizes[f]
        if x1 > fw or y1 > fh:
            raise _Bad(f"invalid field 'regions': box {[f, x0, y0, x1, y1]} outside the {fw}x{fh} frame")
    s.images = frames
    s.meta["frame_hw"] = (h, w)


def read_jsonl(path: str | Path, root: str | Path | None = None, load_images: bool = True
               ) -> tuple[list[Sample], list[Skipped]]:
    """Read one JSONL file; image paths are relative to ``root`` (default: the file's folder)."""
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    samples: list[Sample] = []
    skipped: list[Skipped] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8", errors="replace") as fh:
        for ln, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            sid = None
            try:
                try:
                    rec = json.loads(text)
                except json.JSONDecodeError as e:
                    raise _Bad(f"invalid json: {e.msg}") from None
                if not isinstance(rec, dict):
                    raise _Bad("invalid row: not a JSON object")
                if isinstance(rec.get("id"), str):
                    sid = rec["id"]
                s = _parse_row(rec, root)
                if s.id in seen:
                    raise _Bad("duplicate id")
                _load_images(s, root, load_images)
            except _Bad as e:
                skipped.append(Skipped(ln, sid, str(e)))
                continue
            seen.add(s.id)
            samples.append(s)
    return samples, skipped


def read_dataset(data_dir: str | Path, split: str, load_images: bool = True
                 ) -> tuple[list[Sample], list[Skipped]]:
    """Read ``data_dir/{split}.jsonl``. With ``load_images`` the frames are decoded into ``Sample.images`` (RGB);
    without, they are only checked (header + CRC) and :meth:`Sample.get_images` loads them on demand. Raises
    ``FileNotFoundError`` only when the JSONL file itself is missing."""
    data_dir = Path(data_dir)
    return read_jsonl(data_dir / f"{split}.jsonl", root=data_dir, load_images=load_images)
