"""Generated datasets on disk: :func:`generate_dataset` writes every split of a config, :func:`ensure_dataset`
does so once into the cache (keyed by the generator config and sizes) and reuses it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from ral_dist.paths import cache_dir

from .dataset_io import write_dataset
from .grounded_vqa import generate
from .vqa_config import GroundedVQAConfig


def generate_dataset(config: GroundedVQAConfig, out_dir: str | Path, sizes: dict[str, int] | None = None
                     ) -> dict[str, Path]:
    """Generate and write every split of ``sizes`` (default train 1000 / val 200 / test 200); also writes
    ``generator_config.json``. Returns split → JSONL path."""
    sizes = sizes if sizes is not None else {"train": 1000, "val": 200, "test": 200}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {split: write_dataset(generate(config, split, n), out, split) for split, n in sizes.items()}
    info = {"generator": "ral_dist.data.grounded_vqa", "config": config.model_dump(), "sizes": dict(sizes)}
    (out / "generator_config.json").write_text(json.dumps(info, indent=1) + "\n")
    return paths


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
