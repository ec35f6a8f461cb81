"""The schedules shared by the SFT workers and the RL job: data order, learning rate, and the ETA.

Both depend only on the step number (and the seed), so a resumed run sees exactly the batches and learning rates
an uninterrupted one would.
"""

from __future__ import annotations

import math

import numpy as np


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> np.ndarray:
    """Global batch ``step`` of an endless stream of seeded epoch permutations of range(n)."""
    start = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        out.extend(perm[offset : offset + batch_size - len(out)].tolist())
    return np.asarray(out)


def cosine_lr(step: int, total: int, lr: float, warmup: int, min_ratio: float) -> float:
    """Linear warm-up then cosine decay to ``min_ratio * lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def format_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"
