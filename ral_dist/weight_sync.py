"""Weight sync from the learner to the rollout workers, behind a transport interface.

The object store carries the state dict: rank 0's weights are put once and every rollout worker loads the same
object (its transformers replica, and with ``rollout.vllm.weight_sync: bytes`` its vLLM engine). With ``nccl``
(GPUs) or ``gloo`` (CPU) learner rank 0 broadcasts into the running vLLM engines instead
(`ral_dist.vllm_nccl_sync`); the replicas still load from the object store.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import ray

from ral_dist.ray_cluster import wait_all


@dataclass
class SyncReport:
    version: int
    bytes: int
    seconds: float


class WeightTransport(Protocol):
    def connect(self, learners: list, workers: list, timeout_s: float) -> None:
        """Once, after the actors started (a restarted controller connects its new actors again)."""

    def push(self, version: int, state_ref: ray.ObjectRef, workers: list, timeout_s: float,
             nbytes: int = 0) -> SyncReport:
        """Make every worker hold ``version`` before returning (or raise naming what timed out)."""


class ObjectStoreTransport:
    """The state dict travels through Ray's object store; workers load it with ``update_weights``."""

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
    """vLLM engines fed by broadcast from learner rank 0 (``rollout.vllm.weight_sync`` nccl or gloo), through vLLM's
    weight-transfer API; the workers' replicas (and their version) through the object store first."""

    def __init__(self, weight_sync: str, ranks_per_engine: int):
        self.weight_sync, self.ranks_per_engine = weight_sync, ranks_per_engine
        self.learners: list = []

    def connect(self, learners: list, workers: list, timeout_s: float) -> None:
        from ral_dist.vllm_nccl_sync import open_sender

        self.learners = learners
        refs = [lr.__ray_call__.remote(open_sender, self.weight_sync, workers, self.ranks_per_engine, timeout_s)
                for lr in learners]
        # fail fast: rank 0's error surfaces at once, not after the other ranks time out in their ZeRO-3 gathers
        wait_all(refs, f"the learners to open the {self.weight_sync} weight-transfer group", timeout_s)

    def push(self, version: int, state_ref: ray.ObjectRef, workers: list, timeout_s: float,
             nbytes: int = 0) -> SyncReport:
        from ral_dist.vllm_nccl_sync import send_weights

        replicas = super().push(version, state_ref, workers, timeout_s, nbytes)
        t0 = time.time()
        # every rank takes part: under ZeRO-3 each parameter is gathered as it is sent
        refs = [lr.__ray_call__.remote(send_weights, self.weight_sync, version, timeout_s) for lr in self.learners]
        wait_all(refs, f"the {self.weight_sync} broadcast of version {version}", timeout_s)
        return SyncReport(version, nbytes, replicas.seconds + time.time() - t0)



def make_transport(cfg) -> WeightTransport:
    """The transport the config selects (an ``RLJobConfig``)."""
    vc = cfg.rollout.vllm
    if cfg.rollout.engine != "vllm" or vc.weight_sync == "bytes":
        return ObjectStoreTransport()
    ranks = int(vc.llm_kwargs.get("tensor_parallel_size", 1)) * int(vc.llm_kwargs.get("pipeline_parallel_size", 1))
    return BroadcastTransport(vc.weight_sync, ranks)
