"""Where ral_dist caches what it builds (tokenizers, SFT checkpoints, datasets): outside the repository."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """``$RAL_DIST_CACHE`` (default ``~/.cache/ral_dist``) joined with ``parts``, created on demand."""
    root = Path(os.environ.get("RAL_DIST_CACHE", Path.home() / ".cache" / "ral_dist"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def torch_extensions_dir() -> str:
    """DeepSpeed's JIT-built ops (on CPU: the shared-memory all-reduce), one folder per Python environment.

    Each environment (.venv, .venv-vllm, .venv-bench) builds the op from its own source path; sharing one folder
    made each rebuild the others' (minutes each, and a killed build leaves a lock every later start waits on).
    """
    env = f"{Path(sys.prefix).name}-{hashlib.sha1(sys.prefix.encode()).hexdigest()[:8]}"
    return str(cache_dir("torch_extensions", env))


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all: a temp file beside it (named by this process), fsynced, then renamed over
    it. A kill mid-write leaves only the temp file, which nothing reads; a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
