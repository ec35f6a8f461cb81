"""Checkpoints on disk: written under a temporary name and renamed once complete and verified, so a kill during a
save never leaves a run without a loadable checkpoint; then retention (``run.keep_checkpoints``, ``keep_best``,
``keep_optimizer_state``) deletes what is no longer kept.

A checkpoint ``checkpoints/step_NNNNNN`` holds the Hugging Face weights (rank 0), ``deepspeed/`` (every rank's
optimizer and model states) and ``controller_state.json``. It is written as ``checkpoints/.partial-step_NNNNNN``:
every writer fsyncs what it wrote, the controller state is written last, then one rename makes it a checkpoint.
Only directories named ``step_*`` are checkpoints; a ``.partial-*`` left by a kill is removed by the next save.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

STATE = "controller_state.json"
OPTIMIZER_DIR = "deepspeed"
PARTIAL = ".partial-"
TRASH = ".trash-"


def fsync_tree(root: Path) -> None:
    """fsync every file under ``root``, then every directory (bottom-up), so the data and the names are on disk."""
    for dirpath, _, files in os.walk(root, topdown=False):
        for name in files:
            _fsync(Path(dirpath) / name, os.O_RDONLY)
        _fsync(Path(dirpath), os.O_RDONLY | os.O_DIRECTORY)


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def partial_dir(final: Path) -> Path:
    return final.with_name(PARTIAL + final.name)


def problems(path: Path, optimizer: bool = True) -> list[str]:
    """Why ``path`` is not a complete checkpoint (empty: it is): the controller state, the weights (their
    safetensors headers readable) and, with ``optimizer``, DeepSpeed's state."""
    from safetensors import safe_open

    out = []
    if not (path / STATE).is_file():
        out.append(f"no {STATE}")
    weights = sorted(path.glob("*.safetensors"))
    if not weights or not (path / "config.json").is_file():
        out.append("no model.safetensors / config.json")
    for file in weights:
        try:
            with safe_open(str(file), "pt") as fh:
                fh.keys()
        except Exception as exc:  # noqa: BLE001 — any unreadable header makes the checkpoint incomplete
            out.append(f"{file.name}: {exc}")
    if optimizer and not any((path / OPTIMIZER_DIR).rglob("*.pt")):
        out.append(f"no {OPTIMIZER_DIR}/ state")
    return out


def commit(partial: Path, final: Path, state: dict) -> None:
    """Finish a checkpoint the learners wrote to ``partial``: its controller state, fsync, verify, rename to
    ``final`` (a checkpoint already there, from a step redone after a recovery, is replaced)."""
    (partial / STATE).write_text(json.dumps(state))
    fsync_tree(partial)
    missing = problems(partial)
    if missing:
        raise RuntimeError(f"checkpoint {partial} is incomplete: {'; '.join(missing)}")
    if final.exists():
        old = final.with_name(TRASH + final.name)
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    partial.rename(final)
    _fsync(final.parent, os.O_RDONLY | os.O_DIRECTORY)
    shutil.rmtree(final.with_name(TRASH + final.name), ignore_errors=True)


def complete(root: Path) -> list[Path]:
    """The checkpoints under ``root``, oldest first (a ``step_*`` exists only once complete)."""
    return sorted(p for p in root.glob("step_*") if (p / STATE).is_file())


def latest(root: Path) -> Path | None:
    """The newest checkpoint a run can resume from (with its optimizer state)."""
    done = [p for p in complete(root) if (p / OPTIMIZER_DIR).is_dir()]
    return done[-1] if done else None


def step_of(path: Path) -> int:
    return int(path.name.removeprefix("step_"))


def kept(steps: list[int], keep_last: int | None, keep_best: int, val_accuracy: dict[int, float]) -> set[int]:
    """The checkpoint steps retention keeps: the newest ``keep_last`` (all when None) and the ``keep_best`` of the
    highest validation accuracy among those validated at their step (ties: the later step)."""
    if keep_last is None:
        return set(steps)
    keep = set(sorted(steps)[-keep_last:])
    ranked = sorted((s for s in steps if val_accuracy.get(s) is not None), key=lambda s: (val_accuracy[s], s),
                    reverse=True)
    return keep | set(ranked[:keep_best])


def prune(root: Path, keep_last: int | None, keep_best: int, keep_optimizer: str,
          val_accuracy: dict[int, float]) -> list[str]:
    """Apply retention under ``root`` after a save (what `kept` drops is deleted; with ``keep_optimizer`` "last"
    only the newest keeps ``deepspeed/``), and remove partial or replaced directories a kill left. Returns what it
    deleted."""
    deleted = []
    for stale in [*root.glob(PARTIAL + "*"), *root.glob(TRASH + "*")]:
        shutil.rmtree(stale, ignore_errors=True)
        deleted.append(stale.name)
    checkpoints = complete(root)
    keep = kept([step_of(p) for p in checkpoints], keep_last, keep_best, val_accuracy)
    for path in checkpoints:
        if step_of(path) not in keep:
            # renamed away first: a kill in the middle of rmtree leaves no half checkpoint named step_*
            doomed = path.with_name(TRASH + path.name)
            path.rename(doomed)
            shutil.rmtree(doomed)
            deleted.append(path.name)
        elif keep_optimizer == "last" and path != checkpoints[-1] and (path / OPTIMIZER_DIR).exists():
            shutil.rmtree(path / OPTIMIZER_DIR)
            deleted.append(f"{path.name}/{OPTIMIZER_DIR}")
    return deleted
