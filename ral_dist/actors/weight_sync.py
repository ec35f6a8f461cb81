"""Weight sync from the learner to the rollout workers, behind one factory (`make_transport`).

The transport follows the job's `ral_dist.vllm.sync_plan.SyncPlan` (the one reader of ``rollout.vllm.weight_sync``).
By default the object store carries the state dict: rank 0's weights are put once and every rollout worker
loads the same object into its transformers model (and, with ``bytes``, into its vLLM engine). With ``nccl``
(GPUs) or ``gloo`` (CPU) learner rank 0 broadcasts into the running vLLM engines instead
(`ral_dist.vllm.broadcast_sync`, through the learners' `open_weight_sender` / `send_weights`), and the object
store carries the state dict only for replicas that score (``rollout.attention_on`` rollout): the 7B recipe
gathers and stores none.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import ray

from ral_dist.runtime.ray_cluster import wait_all
from ral_dist.vllm.sync_plan import sync_plan


@dataclass
class SyncReport:
    version: int
    bytes: int
    seconds: float


class WeightTransport(Protocol):
    carries_state: bool  # whether push takes the learner's state dict (else the controller gathers none)

    def connect(self, learners: list, workers: list, timeout_s: float) -> None:
        """Once, after the actors started (a restarted controller connects its new actors again)."""

    def push(self, version: int, state_ref: ray.ObjectRef | None, workers: list, timeout_s: float,
             nbytes: int = 0) -> SyncReport:
        """Make every worker hold ``version`` before returning (or raise naming what timed out); ``state_ref``:
        the learner's state dict, None where the transport does not carry it."""


class ObjectStoreTransport:
    """The state dict travels through Ray's object store; workers load it with ``update_weights``."""

    carries_state = True  # push takes the learner's full state dict (an object ref)

    def connect(self, learners: list, workers: list, timeout_s: float) -> None:
        pass

    def push(self, version: int, state_ref: ray.ObjectRef, workers: list, timeout_s: float,
             nbytes: int = 0) -> SyncReport:
        t0 = time.time()
        versions = wait_all([w.update_weights.remote(version, state_ref) for w in workers],
                            f"the rollout workers to load the weights of version {version}", timeout_s)
        if any(v != version for v in versions):
            raise RuntimeError(f"weight sync of version {version}: workers report versions {versions}")
        return SyncReport(version, nbytes, time.time() - t0)


class BroadcastTransport(ObjectStoreTransport):
    """vLLM engines fed by broadcast from learner rank 0 through vLLM's weight-transfer API; the workers' replicas,
    where they score, through the object store first (else the workers only take the new version: no state
    dict is gathered or stored at all)."""

    def __init__(self, backend: str, ranks_per_engine: int, replicas: bool):
        self.backend, self.ranks_per_engine, self.carries_state = backend, ranks_per_engine, replicas
        self.learners: list = []

    def connect(self, learners: list, workers: list, timeout_s: float) -> None:
        self.learners = learners
        refs = [lr.open_weight_sender.remote(self.backend, workers, self.ranks_per_engine, timeout_s)
                for lr in learners]
        # fail fast: rank 0's error surfaces at once, not after the other ranks time out in their ZeRO-3 gathers
        wait_all(refs, f"the learners to open the {self.backend} weight-transfer group", timeout_s)

    def push(self, version: int, state_ref: ray.ObjectRef, workers: list, timeout_s: float,
             nbytes: int = 0) -> SyncReport:
        replicas = super().push(version, state_ref, workers, timeout_s, nbytes)
        t0 = time.time()
        # every rank takes part: under ZeRO-3 each parameter is gathered as it is sent
        wait_all([lr.send_weights.remote(version, timeout_s) for lr in self.learners],
                 f"the {self.backend} broadcast of version {version}", timeout_s)
        return SyncReport(version, nbytes, replicas.seconds + time.time() - t0)


def make_transport(cfg) -> WeightTransport:
    """The transport of an ``RLJobConfig``'s sync plan."""
    plan = sync_plan(cfg)
    if plan.broadcast is None:
        return ObjectStoreTransport()
    return BroadcastTransport(plan.broadcast, plan.ranks_per_engine, cfg.rollout.resolved_attention_on == "rollout")
