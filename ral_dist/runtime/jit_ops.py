"""DeepSpeed's JIT-built ops (on CPU: the shared-memory all-reduce), loaded so that nothing a kill leaves behind
blocks the next start.

torch's ``cpp_extension.load`` guards a build with an empty ``lock`` file (``FileBaton``) that only its creator
removes: a process killed while building (a job stopped while its learners start) leaves it, and every later
process on the machine then waits on it forever. So, before DeepSpeed's communication backend asks for the op:

- the build is serialised by a kernel lock (``fcntl.flock`` on ``.ral-build.flock`` beside it), which the kernel
  drops when its holder dies: whoever holds it knows no build of ours is running, so a ``lock`` file found then
  has no owner and is removed (said in the log);
- a build that completed writes a stamp (the sources' digest, torch and DeepSpeed versions) atomically; while the
  stamp matches, the ``.so`` is imported directly and registered as DeepSpeed's loaded op, never entering torch's
  build path (no ninja, no lock file at all).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
from pathlib import Path

import torch

from ral_dist.paths import atomic_write_text

SHM_OP = "ShareMemCommBuilder"
STAMP = "ral_build.json"


def _loaded_ops(builder) -> dict:
    """DeepSpeed's per-process cache of loaded ops (``OpBuilder._loaded_ops``; `load` returns from it first)."""
    owner = next(cls for cls in type(builder).__mro__ if "_loaded_ops" in vars(cls))
    return owner._loaded_ops


def _fingerprint(builder) -> dict:
    """What the built ``.so`` depends on: rebuilt when any of it changes (a DeepSpeed or torch upgrade)."""
    import deepspeed

    digest = hashlib.sha256()
    for source in sorted(builder.sources()):
        digest.update(Path(builder.deepspeed_src_path(source)).read_bytes())
    return {"op": builder.NAME, "sources_sha256": digest.hexdigest(), "torch": torch.__version__,
            "deepspeed": deepspeed.__version__, "cxx_args": builder.strip_empty_entries(builder.cxx_args())}


@contextlib.contextmanager
def build_lock(build_dir: Path):
    """Held while this process checks, loads or builds the op; released by the kernel if the process dies."""
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / ".ral-build.flock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def remove_stale_lock(build_dir: Path) -> bool:
    """Under `build_lock`: torch's ``lock`` file has no live owner (every builder of ours holds the kernel lock
    while it builds), so it was left by a killed build. Removed, and said."""
    lock = build_dir / "lock"
    if not lock.exists():
        return False
    lock.unlink(missing_ok=True)
    print(f"[ral] removed a stale JIT build lock {lock} (left by a killed build; its owner is gone)", flush=True)
    return True


def _import_built(build_dir: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, build_dir / f"{name}.so")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_op(builder, extensions_dir: str | Path):
    """The op of ``builder``: from DeepSpeed's cache, from a stamped ``.so`` without the build path, or built
    (then stamped). A stale torch build lock is removed first."""
    ops = _loaded_ops(builder)
    if builder.NAME in ops:
        return ops[builder.NAME]
    build_dir = Path(extensions_dir) / builder.NAME
    stamp = build_dir / STAMP
    with build_lock(build_dir):
        remove_stale_lock(build_dir)
        expected = _fingerprint(builder)
        built = build_dir / f"{builder.NAME}.so"
        if built.exists() and stamp.exists() and json.loads(stamp.read_text()) == expected:
            ops[builder.NAME] = _import_built(build_dir, builder.NAME)
            return ops[builder.NAME]
        module = builder.load(verbose=False)  # torch's build path (ninja), under its own lock file
        atomic_write_text(stamp, json.dumps(expected, indent=1, sort_keys=True))
        return module


def ensure_shm_op() -> None:
    """On CPU, before DeepSpeed's communication backend starts (it loads the shared-memory all-reduce op there and
    would wait on a stale lock forever): load it as `load_op` does, into DeepSpeed's cache."""
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder(SHM_OP)
    import deepspeed.ops

    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return  # DeepSpeed does without it (as its own build_shm_op does)
    load_op(builder, os.environ["TORCH_EXTENSIONS_DIR"])
