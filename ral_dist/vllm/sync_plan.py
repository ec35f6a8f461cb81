"""How weights reach the rollout workers' vLLM engines: the one reader of ``rollout.vllm.weight_sync``.

The driver checks a config with `sync_plan`, the controller builds its transport from it
(`ral_dist.actors.weight_sync.make_transport`), and a rollout worker's engine learns from it how its weights arrive.
No vllm import here.
"""

from __future__ import annotations

from dataclasses import dataclass

from ral_dist.config import ConfigError


@dataclass(frozen=True)
class SyncPlan:
    """How weights reach the rollout workers' vLLM engines."""

    broadcast: str | None  # None: safetensors bytes into each engine; "nccl" / "gloo": broadcast from learner rank 0
    ranks_per_engine: int  # vLLM workers of one engine (tensor x pipeline parallel): ranks of the broadcast group


def engine_world_size(vllm_config) -> int:
    """vLLM workers of one engine: tensor x pipeline parallel of ``rollout.vllm.llm_kwargs``."""
    llm = vllm_config.llm_kwargs
    return int(llm.get("tensor_parallel_size", 1)) * int(llm.get("pipeline_parallel_size", 1))


def sync_plan(cfg) -> SyncPlan:
    """The plan of an ``RLJobConfig``; a broadcast between GPUs without GPUs in the config fails here, naming the
    fields (CUDA itself is checked again where the engines and the learners start)."""
    rc = cfg.rollout
    if rc.engine != "vllm":
        return SyncPlan(None, 1)
    if rc.vllm.weight_sync == "bytes":
        return SyncPlan(None, engine_world_size(rc.vllm))
    if rc.vllm.weight_sync == "nccl" and not (rc.gpus_per_worker > 0 and cfg.learner.gpus_per_rank > 0):
        raise ConfigError("rollout.vllm.weight_sync=nccl broadcasts between GPUs: it needs rollout.gpus_per_worker "
                          "> 0 and learner.gpus_per_rank > 0; on CPU use 'bytes', or 'gloo' (the same handshake)")
    return SyncPlan(rc.vllm.weight_sync, engine_world_size(rc.vllm))
