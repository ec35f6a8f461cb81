"""The data order and the ETA shared by the SFT workers and the RL controller.

The order depends only on (seed, step), so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

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


def format_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"
