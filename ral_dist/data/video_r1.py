"""The Video-R1 schema (``data.format: video_r1``): ``Video-R1-260k.json`` / ``Video-R1-COT-165k.json``, a JSON
array (or JSONL) of records

    {problem_id: int, problem, data_type: "image"|"video", problem_type, options: [...], process,
     solution: "<answer>B</answer>", path: "./Video-R1-data/....mp4", data_source}

mapped to a :class:`~ral_dist.data.sample.Sample`: id = str(problem_id), kind = data_type, media = [path] (relative
to ``data.root``, default the JSON file's folder), question = problem (the options stay in ``options``: the prompt
template appends them), answer = solution without its tags, qtype = problem_type, rationale = process without its
``<think>`` tags, source = data_source. ``regions`` and ``layout_key`` are read when present (our exporter writes
them); any other extra field goes to ``meta["extra"]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .rows import RowError, Skipped, accept_rows, iter_json_records, map_rows
from .sample import Sample

#: our field → the Video-R1 field it comes from (skip reasons name the Video-R1 field)
FIELD_NAMES = {"id": "problem_id", "kind": "data_type", "media": "path", "question": "problem",
               "answer": "solution", "rationale": "process", "source": "data_source"}
_REQUIRED = ("problem_id", "problem", "data_type", "problem_type", "solution", "path")
_KNOWN = (*_REQUIRED, "options", "process", "data_source", "regions", "layout_key")


def is_video_r1(rec: dict) -> bool:
    """Whether a record looks like the Video-R1 schema (for ``data.format: auto``)."""
    return "problem_id" in rec or ("problem" in rec and "solution" in rec)


def video_r1_fields(rec: dict, root: str) -> dict[str, Any]:
    """A Video-R1 record → Sample fields; raises :class:`~ral_dist.data.rows.RowError` for a missing field or an id
    that is not an integer (or a non-empty string)."""
    for key in _REQUIRED:
        if rec.get(key) is None:
            raise RowError(f"missing field '{key}'")
    pid = rec["problem_id"]
    if isinstance(pid, bool) or not isinstance(pid, int | str) or pid == "":
        raise RowError(f"invalid field 'problem_id': {pid!r} is not an integer")
    path = rec["path"]
    ptype = rec["problem_type"]
    fields: dict[str, Any] = {
        "id": str(pid), "kind": rec["data_type"], "media": [path] if isinstance(path, str) else path,
        "question": rec["problem"], "options": rec.get("options") or [], "answer": rec["solution"],
        "problem_type": ptype, "qtype": ptype if isinstance(ptype, str) else "unknown",
        "rationale": rec.get("process") or "", "source": rec.get("data_source") or "", "root": root,
        "regions": rec.get("regions") or [], "layout_key": rec.get("layout_key") or "",
    }
    extra = {k: v for k, v in rec.items() if k not in _KNOWN}
    if extra:
        fields["meta"] = {"extra": extra}
    return fields


def read_video_r1(path: str | Path, root: str | Path | None = None, workers: int = 8, duplicate_ids: str = "skip"
                  ) -> tuple[list[Sample], list[Skipped]]:
    """Read a Video-R1 JSON array or JSONL file. Media are checked by header only (no pixel decoded); bad rows
    are skipped with a reason. Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a JSON array
    that does not parse."""
    path = Path(path)
    base = str(Path(root if root is not None else path.parent).resolve())
    rows = map_rows(iter_json_records(path), lambda rec: video_r1_fields(rec, base), "problem_id")
    return accept_rows(rows, FIELD_NAMES, workers=workers, duplicate_ids=duplicate_ids)


def to_video_r1(sample: Sample, problem_id: int) -> dict[str, Any]:
    """A sample as a Video-R1 record (``media`` kept as they are), plus ``regions`` when it has any."""
    rec: dict[str, Any] = {
        "problem_id": problem_id, "problem": sample.question, "data_type": sample.kind,
        "problem_type": sample.problem_type, "options": list(sample.options),
        "process": f"<think>{sample.rationale}</think>" if sample.rationale else "",
        "solution": f"<answer>{sample.answer}</answer>", "path": sample.media[0], "data_source": sample.source,
    }
    if sample.regions:
        rec["regions"] = [list(r) for r in sample.regions]
    return rec
