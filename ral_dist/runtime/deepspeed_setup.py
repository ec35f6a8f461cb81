"""DeepSpeed set-up shared by the SFT workers and the RL learners: CPU (gloo) or GPU (NCCL), ZeRO 0–3.

DeepSpeed is imported on first use, in the process that trains: it picks its accelerator at import, and only that
process knows its device (`ral_dist.runtime.devices`).
"""

from __future__ import annotations

import contextlib
import os

import torch

from ral_dist.paths import torch_extensions_dir
from ral_dist.runtime.devices import set_deepspeed_accelerator
from ral_dist.runtime.jit_ops import ensure_shm_op


def import_deepspeed(device: torch.device | None = None):
    """The deepspeed module, imported for this process's ``device`` (default: CUDA when this process sees one)."""
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    set_deepspeed_accelerator(device)
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", torch_extensions_dir())
    import deepspeed

    ensure_shm_op()  # before DeepSpeed's comm backend asks for it: a stale build lock must not block it
    return deepspeed


def prebuild_ops() -> None:
    """Build DeepSpeed's JIT ops once, at install time (``make setup``). On CPU, every process that starts
    DeepSpeed's communication backend loads its shared-memory all-reduce op and compiles it on first use: a minute
    or more on 2 cores, which a learner would otherwise spend inside its start-up timeout."""
    if torch.cuda.is_available():
        return
    import_deepspeed(torch.device("cpu"))  # builds (or loads) the op and stamps it: `ral_dist.runtime.jit_ops`


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


def init_engine(model: torch.nn.Module, lr: float, weight_decay: float, ds_config: dict,
                betas: tuple[float, float] = (0.9, 0.999), fused: bool = True):
    """Wrap a model in a DeepSpeed engine with torch's AdamW, ``fused``: one kernel per tensor, on CPU as on CUDA (at
    135 M parameters on one core 0.09 s a step against 0.38 s for the per-op loop). Its vectorised arithmetic
    rounds by the kernels' instruction set, which ``model.numerics: portable`` pins; it rounds otherwise than the
    per-op loop (``fused`` False) in the last bit."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas, fused=fused)
    engine, optimizer, _, _ = import_deepspeed().initialize(model=model, optimizer=optimizer, config=ds_config)
    return engine, optimizer


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@contextlib.contextmanager
def sharded_loading(ds_config: dict):
    """Under ZeRO-3 a checkpoint loaded inside is partitioned over the ranks as it loads: while a
    ``HfDeepSpeedConfig`` is alive, transformers builds the model under ``deepspeed.zero.Init`` and reads each
    shard into the partitions, so no rank ever holds the whole fp32 model."""
    if ds_config["zero_optimization"]["stage"] != 3:
        yield
        return
    from transformers.integrations.deepspeed import HfDeepSpeedConfig

    hf_config = HfDeepSpeedConfig(ds_config)  # transformers reads it through a weak reference: keep it alive
    try:
        yield
    finally:
        del hf_config


def inference_engine(model: torch.nn.Module, ds_config: dict):
    """A frozen model (the reference) under the same ZeRO stage as the policy but without an optimizer: sharded
    under ZeRO-3 (its parameters are gathered layer by layer in its forward), as is otherwise."""
    if ds_config["zero_optimization"]["stage"] != 3:
        return model
    config = {k: v for k, v in ds_config.items() if k not in ("gradient_clipping",)}
    engine, *_ = import_deepspeed().initialize(model=model, config=config)
    engine.eval()
    return engine


def reduced_grad_norm(engine, params: list[torch.nn.Parameter]) -> float:
    """L2 norm of the gradient the ranks' backward passes reduced (their average), read at an accumulation
    boundary before ``step``, wherever the stage keeps it (``.grad``, ZeRO partitions, bf16's fp32 buffers):
    every rank must call it (ZeRO-3 gathers each parameter's gradient)."""
    from deepspeed.utils import safe_get_full_grad

    grads = [g for g in (safe_get_full_grad(p) for p in params) if g is not None]
    return float(sum((g.double().pow(2).sum() for g in grads), torch.zeros((), dtype=torch.float64)).sqrt())


def discard_gradients(engine) -> None:
    """Drop the accumulated and reduced gradients of an update that is not applied (a non-finite loss, or the
    attention term's measuring pass), as DeepSpeed's own overflow path does."""
    engine.zero_grad()
    optimizer = engine.optimizer
    if hasattr(optimizer, "zero_grad"):
        optimizer.zero_grad(set_to_none=True)
    for key in list(getattr(optimizer, "averaged_gradients", {}) or {}):  # ZeRO-1/2's reduced partitions
        optimizer.averaged_gradients[key] = None


def full_state_dict(engine, copy: bool = True) -> dict[str, torch.Tensor] | None:
    """The full model state on rank 0 (ZeRO-3 gathers the shards; other stages hold full params). ``copy`` False:
    the live parameters themselves (ZeRO 0-2), for a caller that copies them before the next update."""
    if engine.zero_optimization_stage() == 3:
        return engine._zero3_consolidated_16bit_state_dict()
    if not copy:
        return {name: v.detach() for name, v in engine.module.state_dict().items()}
    copies: dict = {}  # a tied tensor (several names) is copied once and stays shared
    state = {}
    for name, v in engine.module.state_dict().items():
        key = (v.data_ptr(), v.dtype, v.shape)
        if key not in copies:
            copies[key] = v.detach().clone()
        state[name] = copies[key]
    return state


def param_digest(engine) -> float:
    """Sum of all parameters in float64: a cheap fingerprint of the weights. Collective under ZeRO-3."""
    params = list(engine.module.parameters())
    with (import_deepspeed().zero.GatheredParameters(params) if engine.zero_optimization_stage() == 3
          else contextlib.nullcontext()):
        return float(sum(p.detach().double().sum() for p in params))
