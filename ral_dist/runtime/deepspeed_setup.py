"""DeepSpeed set-up shared by the SFT workers and the RL learners: CPU (gloo) or GPU (NCCL), ZeRO 0–3."""

from __future__ import annotations

import os

import torch

from ral_dist.paths import torch_extensions_dir

# DeepSpeed picks its accelerator at import; on a machine without CUDA it must be told to use the CPU.
os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", torch_extensions_dir())
import deepspeed  # noqa: E402


def prebuild_ops() -> None:
    """Build DeepSpeed's JIT ops once, at install time (``make setup``). On CPU, every process that starts
    DeepSpeed's communication backend loads its shared-memory all-reduce op and compiles it on first use: a minute
    or more on 2 cores, which a learner would otherwise spend inside its start-up timeout."""
    if torch.cuda.is_available():
        return
    from deepspeed.comm.torch import build_shm_op

    build_shm_op()


def deepspeed_config(zero_stage: int, micro_batch: int, grad_clip: float, bf16: bool = False) -> dict:
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": grad_clip,
        "zero_optimization": {"stage": zero_stage},
        "bf16": {"enabled": bf16},
        "steps_per_print": 10**9,  # our own progress line reports; keep DeepSpeed quiet
        "wall_clock_breakdown": False,
    }


def init_engine(model: torch.nn.Module, lr: float, weight_decay: float, zero_stage: int, micro_batch: int,
                grad_clip: float, bf16: bool = False, betas: tuple[float, float] = (0.9, 0.999)):
    """Wrap a model in a DeepSpeed engine with torch AdamW (no fused CUDA optimizer needed on CPU)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas)
    engine, optimizer, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, config=deepspeed_config(zero_stage, micro_batch, grad_clip, bf16))
    return engine, optimizer


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def full_state_dict(engine) -> dict[str, torch.Tensor] | None:
    """The full model state on rank 0 (ZeRO-3 gathers the shards; other stages hold full params)."""
    if engine.zero_optimization_stage() == 3:
        return engine._zero3_consolidated_16bit_state_dict()
    return {k: v.detach().clone() for k, v in engine.module.state_dict().items()}
