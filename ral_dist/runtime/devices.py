"""Where an actor computes, decided inside the actor from what Ray assigned it, never inherited from the driver
(on KubeRay the driver runs on the GPU-less head: anything it decided would put every GPU actor on the CPU)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch


def assigned_gpu_ids() -> list:
    """The GPU ids Ray assigned this actor or task; outside Ray, the devices this process sees."""
    try:
        import ray

        if ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE:
            return list(ray.get_gpu_ids())
    except (ImportError, AttributeError):
        pass
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def actor_device(gpu_ids: Sequence, cuda_available: bool, local_index: int = 0) -> torch.device:
    """The device of an actor given its assigned GPU ids: its ``local_index``-th visible GPU when it has one (Ray
    narrows CUDA_VISIBLE_DEVICES to the assigned GPUs, so they are cuda:0, cuda:1, ...), else the CPU."""
    if gpu_ids and cuda_available:
        return torch.device("cuda", local_index % len(gpu_ids))
    return torch.device("cpu")


def compute_dtype(device: torch.device, model_dtype: str) -> torch.dtype:
    """The dtype a model runs in: the configured one on a GPU; float32 on the CPU (bf16 matmuls there are slow
    and the CPU path is the exactness reference)."""
    if device.type == "cuda" and model_dtype == "bfloat16":
        return torch.bfloat16
    return torch.float32


def set_deepspeed_accelerator(device: torch.device) -> None:
    """DeepSpeed picks its accelerator once, at its first import: from this process's device (an explicit
    DS_ACCELERATOR of the node's environment wins)."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if device.type == "cuda" else "cpu")
