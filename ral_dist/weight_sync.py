"""Weight sync from the learner to the rollout workers, behind a transport interface.

On CPU the object store carries the state dict: rank 0's weights are put once and every rollout worker loads
the same object. NCCL broadcast or CUDA IPC can implement the same two calls later.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import ray


@dataclass
class SyncReport:
    version: int
    bytes: int
    seconds: float


class WeightTransport(Protocol):
    def push(self, version: int, state_ref: ray.ObjectRef, workers: list, timeout_s: float,
             nbytes: int = 0) -> SyncReport:
        """Make every worker hold ``version`` before returning (or raise naming what timed out)."""


class ObjectStoreTransport:
    """The state dict travels through Ray's object store; workers load it with ``update_weights``."""

    def push(self, version: int, state_ref: ray.ObjectRef, workers: list, timeout_s: float,
             nbytes: int = 0) -> SyncReport:
        t0 = time.time()
        refs = [w.update_weights.remote(version, state_ref) for w in workers]
        ready, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        if pending:
            raise TimeoutError(f"weight sync of version {version}: {len(pending)} of {len(refs)} rollout workers "
                               f"did not load the weights within {timeout_s:.0f}s")
        versions = ray.get(ready)
        if any(v != version for v in versions):
            raise RuntimeError(f"weight sync of version {version}: workers report versions {versions}")
        return SyncReport(version, nbytes, time.time() - t0)
