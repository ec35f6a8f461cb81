"""The generated dataset of a config, written once to the cache and reused (keyed by the generator config)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from ral_dist.paths import cache_dir

from .dataset_io import generate_dataset
from .grounded_vqa import GroundedVQAConfig


def ensure_dataset(task: GroundedVQAConfig, sizes: dict[str, int]) -> Path:
    """Directory holding ``{split}.jsonl`` + images for (task, sizes); generated on first use."""
    key_src = json.dumps({"task": task.model_dump(mode="json"), "sizes": sizes}, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    out = cache_dir("datasets") / key
    if (out / "generator_config.json").exists():
        return out
    tmp = out.with_name(f"{key}.{os.getpid()}.tmp")
    generate_dataset(task, tmp, sizes)
    try:
        tmp.rename(out)  # atomic publish; a concurrent generator of the same key produced the same files
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
