"""Checkpoints of a mirrored run directory on an object store (`ral_dist.runtime.object_store`), the counterpart
of `ral_dist.runtime.checkpoints` where a rename is a copy and nothing is fsynced.

Each learner rank uploads its own files straight into ``checkpoints/step_NNNNNN/`` (rank 0 the Hugging Face weights
and its DeepSpeed files, every other rank its DeepSpeed files); once every rank has returned, the controller checks
that every uploaded object is there and readable, then writes ``controller_state.json`` LAST: a checkpoint is
complete exactly when that marker exists. Deleting one removes the marker first, so a kill in the middle of a
deletion (or of an upload) leaves an incomplete ``step_*`` that is never loaded and is removed by the next save.
"""

from __future__ import annotations

import json
import struct

from ral_dist.runtime.checkpoints import OPTIMIZER_DIR, STATE, kept
from ral_dist.runtime.object_store import Mirror

ROOT = "checkpoints"


def name(step: int) -> str:
    return f"{ROOT}/step_{step:06d}"


def discard(mirror: Mirror, rel: str) -> None:
    """Delete the checkpoint ``rel``: its marker first (from then on it is incomplete), then the rest."""
    mirror.remove(f"{rel}/{STATE}")
    mirror.remove(rel)


def complete(mirror: Mirror) -> list[str]:
    """The complete checkpoints (their marker present), oldest first, as names relative to the run."""
    return [f"{ROOT}/{d}" for d in mirror.dirs(ROOT) if d.startswith("step_") and mirror.exists(f"{ROOT}/{d}/{STATE}")]


def latest(mirror: Mirror) -> str | None:
    """The newest complete checkpoint with its optimizer state (what --resume and recovery load)."""
    done = [c for c in complete(mirror) if any(f.endswith(".pt") for f in mirror.files(f"{c}/{OPTIMIZER_DIR}"))]
    return done[-1] if done else None


def _safetensors_readable(mirror: Mirror, rel: str) -> str | None:
    """None when the file's header parses (8-byte length, then JSON), else why not: read, not downloaded."""
    try:
        (length,) = struct.unpack("<Q", mirror.read_bytes(rel, 8))
        json.loads(mirror.read_bytes(rel, length, start=8))
    except Exception as exc:  # noqa: BLE001 — any unreadable header makes the checkpoint incomplete
        return f"{rel.rsplit('/', 1)[-1]}: {exc}"
    return None


def problems(mirror: Mirror, rel: str, uploaded: list[list[str]]) -> list[str]:
    """Why the uploaded checkpoint ``rel`` is not complete (empty: it is): every object each rank said it uploaded
    (``uploaded``: one list per rank) is there, the weights' headers parse, and every rank uploaded DeepSpeed
    state."""
    there = set(mirror.files(rel))
    out = [f"rank {r}: {n} missing" for r, names in enumerate(uploaded) for n in names if n not in there][:10]
    weights = sorted(n for n in there if n.endswith(".safetensors"))
    if not weights or "config.json" not in there:
        out.append("no model.safetensors / config.json")
    out += [why for w in weights if (why := _safetensors_readable(mirror, f"{rel}/{w}"))]
    out += [f"rank {r}: no {OPTIMIZER_DIR}/ state" for r, names in enumerate(uploaded)
            if not any(n.startswith(OPTIMIZER_DIR + "/") and n.endswith(".pt") for n in names)]
    return out


def commit(mirror: Mirror, step: int, state: dict, uploaded: list[list[str]]) -> str:
    """Verify the checkpoint the learners uploaded for ``step`` and write its marker. Returns its name."""
    rel = name(step)
    missing = problems(mirror, rel, uploaded)
    if missing:
        raise RuntimeError(f"checkpoint {mirror.url_of(rel)} is incomplete: {'; '.join(missing)}")
    mirror.write_text(f"{rel}/{STATE}", json.dumps(state))
    return rel


def read_state(mirror: Mirror, rel: str) -> dict:
    return json.loads(mirror.read_bytes(f"{rel}/{STATE}"))


def prune(mirror: Mirror, keep_last: int | None, keep_best: int, keep_optimizer: str,
          val_accuracy: dict[int, float]) -> list[str]:
    """`ral_dist.runtime.checkpoints.prune` at the URL: incomplete ``step_*`` left by a kill and what retention
    drops are deleted (marker first), and with ``keep_optimizer`` "last" the older ``deepspeed/``. Call after a
    commit, never while one is being uploaded. Returns what it deleted."""
    done = complete(mirror)
    deleted = []
    for d in mirror.dirs(ROOT):
        if f"{ROOT}/{d}" not in done:
            mirror.remove(f"{ROOT}/{d}")
            deleted.append(d)
    steps = {int(c.rsplit("_", 1)[-1]): c for c in done}
    keep = kept(list(steps), keep_last, keep_best, val_accuracy)
    for step, rel in steps.items():
        if step not in keep:
            discard(mirror, rel)
            deleted.append(rel.rsplit("/", 1)[-1])
        elif keep_optimizer == "last" and rel != done[-1] and mirror.files(f"{rel}/{OPTIMIZER_DIR}"):
            mirror.remove(f"{rel}/{OPTIMIZER_DIR}")
            deleted.append(f"{rel.rsplit('/', 1)[-1]}/{OPTIMIZER_DIR}")
    return deleted
