"""Loading new weights into a running vLLM engine: safetensors bytes on CPU, a timeout, retries, cache resets.

The engine is never restarted. The bytes go through ``llm.collective_rpc`` to the worker extension
(`ral_dist.vllm.worker_extension`), which loads them in place. After every load the encoder cache (vision
features of the old weights; without the reset the next image request dies with "Encoder cache miss") and the
prefix cache (KV of the old weights, silently reused otherwise) are reset. No vllm import here: the retry logic
is tested in the main environment with a fake engine.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable

import torch
from safetensors.torch import save

LOAD_METHOD = "ral_load_weights"  # WeightUpdateExtension's method


def serialize_state(state_dict: dict[str, torch.Tensor]) -> bytes:
    """safetensors bytes of a CPU state dict (tensors sharing storage are copied: safetensors refuses them)."""
    seen, out = set(), {}
    for name, t in state_dict.items():
        t = t.detach().cpu()
        ptr = t.untyped_storage().data_ptr()
        out[name] = t.clone(memory_format=torch.contiguous_format) if ptr in seen or not t.is_contiguous() else t
        seen.add(ptr)
    return save(out)


def with_timeout(fn: Callable[[], object], timeout_s: float, what: str):
    """Run ``fn`` and give up after ``timeout_s`` (the call may keep running in its thread; the engine is then
    unusable and the step fails, which is the point: never hang)."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(fn).result(timeout=timeout_s)
    except concurrent.futures.TimeoutError:
        raise TimeoutError(f"{what} did not finish within {timeout_s:.0f}s") from None
    finally:
        pool.shutdown(wait=False)


def reset_caches(llm) -> None:
    """Drop everything computed with the old weights: vision-encoder outputs and prefix KV blocks."""
    llm.llm_engine.reset_encoder_cache()
    if not llm.reset_prefix_cache():
        raise RuntimeError("vLLM refused to reset its prefix cache (requests still running?)")


def push_state_bytes(llm, data: bytes, version: int, timeout_s: float, retries: int,
                     log: Callable[[str], None] = print) -> dict:
    """Load ``data`` into every vLLM worker, then reset the caches; retried, then a loud failure."""
    errors = []
    for attempt in range(retries + 1):
        t0 = time.time()

        def load():
            reports = llm.collective_rpc(LOAD_METHOD, timeout=timeout_s, args=(data,))
            reset_caches(llm)
            return reports

        try:
            reports = with_timeout(load, timeout_s, f"weight load of version {version} into vLLM")
            return {"reports": reports, "seconds": time.time() - t0, "attempts": attempt + 1}
        except Exception as exc:  # noqa: BLE001 — any failure is retried, then raised with every reason
            errors.append(f"{type(exc).__name__}: {exc}")
            log(f"[vllm] weight sync of version {version} failed (attempt {attempt + 1}/{retries + 1}): {errors[-1]}")
    raise RuntimeError(f"weight sync of version {version} into vLLM failed after {retries + 1} attempts: "
                       + " | ".join(errors))
