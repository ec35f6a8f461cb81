"""Joining the Ray cluster a job was submitted to, or starting a private local one bound to loopback."""

from __future__ import annotations

import os
import time

import ray

from ral_dist.paths import torch_extensions_dir
from ral_dist.runtime.environment import ALLOCATOR_ENV, numerics_env

# Environment every Ray worker of ours needs (no DeepSpeed op builds, the cached JIT ops, no usage reporting). Never
# DS_ACCELERATOR: each actor decides it from its own device (ral_dist.runtime.devices).
WORKER_ENV_KEYS = ("DS_BUILD_OPS", "TORCH_EXTENSIONS_DIR", "RAL_DIST_CACHE", "RAY_USAGE_STATS_ENABLED")


NAMESPACE = "ral_dist"  # the job's named actors (ral-<run>-<role>-<i>) live here


def worker_env(numerics: str = "portable") -> dict[str, str]:
    """The environment of every Ray worker of the job (``numerics``: ``model.numerics``)."""
    env = {"DS_BUILD_OPS": "0", "RAY_USAGE_STATS_ENABLED": "0", "TORCH_EXTENSIONS_DIR": torch_extensions_dir(),
           **ALLOCATOR_ENV}
    env.update({k: os.environ[k] for k in WORKER_ENV_KEYS if k in os.environ})
    return env | numerics_env(numerics)


def connect(num_cpus: int | None = None, numerics: str = "portable") -> None:
    """``ray job submit`` (RAY_ADDRESS set) joins that cluster; otherwise a local cluster on 127.0.0.1. Every worker
    of the job computes under ``numerics`` (`ral_dist.runtime.environment`)."""
    if ray.is_initialized():
        return
    runtime_env = {"env_vars": worker_env(numerics)}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(namespace=NAMESPACE, runtime_env=runtime_env, log_to_driver=True)
    else:
        # address="local": a private cluster, never one a `ray start` happened to leave on this machine
        ray.init(address="local", namespace=NAMESPACE, num_cpus=num_cpus, _node_ip_address="127.0.0.1", include_dashboard=False,
                 runtime_env=runtime_env, log_to_driver=True)


def wait_all(refs: list, what: str, timeout_s: float) -> list:
    """ray.get of every ref, in order, failing fast: the first error raises at once (a dead learner rank must not
    leave us waiting for its peers), and a timeout names what it waited for."""
    refs = list(refs)
    deadline = time.time() + timeout_s
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.time()))
        if not ready:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what} "
                               f"({len(pending)}/{len(refs)} pending)")
        ray.get(ready)  # raises the actor's or task's error now
    return ray.get(refs)


def stop_head(temp_dir: str) -> None:
    """Stop the Ray processes of one node (found by its temp dir), and everything they started:
    ``python -m ral_dist.runtime.ray_cluster stop TEMP_DIR`` (jobs/demo.sh, the tests).

    Not `ray stop --force`: that kills every Ray process on the machine, other clusters included.
    """
    import psutil

    roots = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            # not this process: run as `python -m ral_dist.runtime.ray_cluster stop DIR`, its own arguments name DIR
            if proc.pid != os.getpid() and any(temp_dir in arg for arg in proc.info["cmdline"] or []):
                roots.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    victims = {p.pid: p for root in roots for p in [root, *root.children(recursive=True)]}
    for proc in victims.values():
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(list(victims.values()), timeout=30)


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 3 or sys.argv[1] != "stop":
        raise SystemExit("usage: python -m ral_dist.runtime.ray_cluster stop TEMP_DIR")
    stop_head(sys.argv[2])
