"""From raw rows to validated samples, whatever the format: a row that cannot be used is skipped with a reason,
never raised, and the rest are kept.

Each reader turns its rows into field dicts (our :class:`~ral_dist.data.sample.Sample` field names) and hands them
to :func:`accept_rows`, which validates them, checks the media headers (images: PIL header + verify; videos:
:func:`~ral_dist.data.video.probe`; no pixel is decoded), drops duplicate ids and returns the samples with
``frame_hw`` filled. Reasons read ``category: detail``; :func:`skip_counts` counts the categories.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from PIL import Image
from pydantic import ValidationError

from .sample import Sample
from .video import MediaError, probe


@dataclass(frozen=True)
class Skipped:
    line: int  # 1-based: the line of a JSONL file, the item of a JSON array or the row of a table
    id: str | None
    reason: str

    @property
    def category(self) -> str:
        """The reason without its detail, e.g. ``missing file`` or ``invalid field 'answer'``."""
        return self.reason.split(":", 1)[0]


class RowError(Exception):
    """A row that cannot be used; the message is its reason."""


@dataclass
class RawRow:
    """A reader's row: its position, its id (when one could be read) and our fields, or the reason it has none."""

    line: int
    id: str | None
    fields: dict[str, Any] | None = None
    error: str | None = None


def _reason(err: ValidationError, names: dict[str, str]) -> str:
    first = err.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else ""
    shown = names.get(field, field)
    if first["type"] == "missing":
        return f"missing field '{shown}'"
    if field == "problem_type" and first["type"] == "literal_error":
        return f"unknown problem_type: {first.get('input')!r}"
    msg = first["msg"].removeprefix("Value error, ")
    if not field:  # a check across fields (Sample._consistent): its message starts with the field it faults
        field, _, msg = msg.partition(": ")
        shown = names.get(field, field)
    return f"invalid field '{shown}': {msg}"


def build_sample(fields: dict[str, Any], names: dict[str, str] | None = None) -> Sample:
    """Validate ``fields``; a failure raises :class:`RowError` naming the field as the source calls it
    (``names``: our field → the source's column)."""
    try:
        return Sample(**fields)
    except ValidationError as e:
        raise RowError(_reason(e, names or {})) from None


def media_header(sample: Sample) -> tuple[int, int]:
    """(height, width) of the sample's frames from the file headers; raises :class:`RowError`."""
    sizes = []
    for rel, path in zip(sample.media, sample.media_paths(), strict=True):
        if not path.is_file():
            raise RowError(f"missing file: {rel}")
        if sample.is_video_file:
            try:
                info = probe(path)
            except MediaError as e:
                raise RowError(f"{e.reason}: {rel}" + (f" ({e.detail})" if e.detail else "")) from None
            return info.height, info.width
        try:
            with Image.open(path) as im:
                sizes.append(im.size)
                im.verify()  # structure and checksums (PNG CRCs), no pixel decoding
        except Exception as e:  # any decoder error means an unreadable file
            raise RowError(f"unreadable image: {rel} ({type(e).__name__}: {e})") from None
    if len(set(sizes)) > 1:
        raise RowError("invalid field 'media': video frames differ in size")
    w, h = sizes[0]
    return h, w


def _check(row: RawRow, names: dict[str, str]) -> Sample:
    s = build_sample(row.fields, names)
    if s.images:
        return s
    return build_sample({**row.fields, "frame_hw": media_header(s)}, names)  # regions against the frame size


def accept_rows(rows: Iterable[RawRow], names: dict[str, str] | None = None, workers: int = 8,
                duplicate_ids: Literal["skip", "number"] = "skip") -> tuple[list[Sample], list[Skipped]]:
    """Validate, check media headers (``workers`` threads: the checks wait on the disk) and de-duplicate ids (the
    first usable row keeps an id; later ones are skipped, or numbered ``id#2``, ``id#3`` with ``number``)."""
    rows = list(rows)
    names = names or {}

    def check(row: RawRow) -> Sample | str:
        if row.error is not None:
            return row.error
        try:
            return _check(row, names)
        except RowError as e:
            return str(e)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = list(pool.map(check, rows))
    samples: list[Sample] = []
    skipped: list[Skipped] = []
    seen: Counter[str] = Counter()
    for row, got in zip(rows, results, strict=True):
        if isinstance(got, str):
            skipped.append(Skipped(row.line, row.id, got))
            continue
        seen[got.id] += 1
        if seen[got.id] > 1:
            if duplicate_ids == "skip":
                skipped.append(Skipped(row.line, got.id, "duplicate id"))
                continue
            got = got.model_copy(update={"id": f"{got.id}#{seen[got.id]}"})
        got.meta.setdefault("line", row.line)
        samples.append(got)
    return samples, skipped


def iter_json_records(path: Path) -> Iterator[RawRow]:
    """A JSON array file (one record per item) or JSONL (one per line; blank lines ignored). A line that is not
    JSON becomes a row with the error; an array that is not JSON fails the whole file (``ValueError``)."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        head = fh.read(4096).lstrip()
        fh.seek(0)
        if head.startswith("["):
            try:
                records = json.load(fh)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not a JSON array ({e})") from None
            for i, rec in enumerate(records, start=1):
                yield _record(i, rec)
            return
        for ln, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as e:
                yield RawRow(ln, None, error=f"invalid json: {e.msg}")
                continue
            yield _record(ln, rec)


def _record(line: int, rec: Any) -> RawRow:
    if not isinstance(rec, dict):
        return RawRow(line, None, error="invalid row: not a JSON object")
    return RawRow(line, None, fields=rec)


def map_rows(rows: Iterable[RawRow], mapper: Callable[[dict], dict], id_key: str) -> Iterator[RawRow]:
    """Raw records → rows of our fields through ``mapper`` (which raises :class:`RowError` for a bad record);
    ``id_key`` names the source's id, reported with a skipped row when it is a string or an integer."""
    for row in rows:
        if row.error is not None:
            yield row
            continue
        raw_id = row.fields.get(id_key)
        sid = str(raw_id) if isinstance(raw_id, str | int) and not isinstance(raw_id, bool) else None
        try:
            yield RawRow(row.line, sid, fields=mapper(row.fields))
        except RowError as e:
            yield RawRow(row.line, sid, error=str(e))


def skip_counts(skipped: Iterable[Skipped]) -> dict[str, int]:
    """Skipped rows per reason category, most frequent first."""
    return dict(Counter(s.category for s in skipped).most_common())


def write_skipped(skipped: Iterable[Skipped], path: str | Path, split: str | None = None) -> dict[str, int]:
    """Append one JSON object per skipped row to ``path`` (``skipped_rows.jsonl``); returns :func:`skip_counts`."""
    skipped = list(skipped)
    with open(path, "a", encoding="utf-8") as fh:
        for s in skipped:
            fh.write(json.dumps({**({"split": split} if split else {}), **asdict(s), "category": s.category}) + "\n")
    return skip_counts(skipped)
