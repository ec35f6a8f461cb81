"""Where ral_dist caches what it builds (tokenizers, SFT checkpoints, datasets): outside the repository."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """``$RAL_DIST_CACHE`` (default ``~/.cache/ral_dist``) joined with ``parts``, created on demand."""
    root = Path(os.environ.get("RAL_DIST_CACHE", Path.home() / ".cache" / "ral_dist"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
