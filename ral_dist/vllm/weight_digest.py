"""Digests of model weights for the sync check (``run.verify_sync``), and their comparison.

Every holder of the policy's weights digests the tensors it holds the same way, on the device they are on: the
learner's side (the state dict it published, or the tensors learner rank 0 broadcast), each vLLM worker (the
tensors it was handed, in checkpoint format, before vLLM repacks them for its kernels) and the transformers
replica. Per tensor (checkpoint name): the float64 sum, the float64 sum of absolute values, and a position-
weighted float64 sum (weights cycle through -8..8, so a transposed or shuffled tensor changes it).

Tolerance: bf16/fp16/fp32 values are exact in float64, so two holders of the same values differ only by the
order in which float64 additions round (another device, thread count or kernel): about 1e-15 of the absolute
sum. `DIGEST_RTOL` = 1e-9 of the absolute sum sits a million times above that and far below what one optimizer
step moves (every changed element moves the sums by its own change). A NaN never matches.

Cost: one read of the weights. On a GPU a 7B model's 15 GB take milliseconds; on a CPU, in cache-sized chunks,
about 1.2 G elements/s per core (measured on this 2-core machine: SmolLM2-135M's 135 M distinct elements in 0.11 s),
so a 7B's 7.6 G elements take ~6 core-seconds: the CPU-side digests (``weight_sync: bytes``, the hf engine's handed
state dict) cost a few percent of a step at that size.
No vllm import: the learner, the rollout worker and vLLM's worker extension all use this module.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

DIGEST_RTOL = 1e-9
WEIGHT_CYCLE = 17  # position weights -8..8
# Elements reduced at once, a multiple of the cycle (every chunk starts at weight -8, one weight vector serves them
# all). On a GPU: bounds the float64 temporaries (~100 MB) on a device vLLM has filled, in few kernel launches. On a
# CPU: the temporaries stay in cache (2 MB each): a 28 M-element embedding digests 10x faster than in 35 MB chunks.
CHUNK = {"cuda": WEIGHT_CYCLE << 18, "cpu": WEIGHT_CYCLE << 14}

Digest = dict[str, tuple[float, float, float]]  # name -> (sum, absolute sum, position-weighted sum)


def _chunk(device: torch.device) -> int:
    return CHUNK.get(device.type, CHUNK["cuda"])


def _position_weights(device: torch.device, n: int) -> torch.Tensor:
    """-8..8 cycling over ``n`` positions, float64; built once per device and size class (a GPU chunk's: 35 MB)."""
    return _weights_of_size(device, min(_chunk(device), 1 << max(n - 1, 1).bit_length()))[:n]


@functools.cache
def _weights_of_size(device: torch.device, size: int) -> torch.Tensor:
    cycle = torch.arange(WEIGHT_CYCLE, dtype=torch.float64, device=device) - WEIGHT_CYCLE // 2
    return cycle.repeat(-(-size // WEIGHT_CYCLE))[:size]


def _sums(t: torch.Tensor) -> torch.Tensor:
    """[sum, sum of |x|, sum of x * w] in float64 on ``t``'s device, chunk by chunk."""
    flat = t.detach().reshape(-1)
    parts, chunk = [], _chunk(flat.device)
    for start in range(0, flat.numel(), chunk):
        x = flat[start : start + chunk].to(torch.float64)
        parts.append(torch.stack([x.sum(), x.abs().sum(), x.dot(_position_weights(x.device, x.numel()))]))
    return torch.stack(parts).sum(0) if parts else torch.zeros(3, dtype=torch.float64, device=flat.device)


def tensor_digest(t: torch.Tensor) -> tuple[float, float, float]:
    """(sum, sum of |x|, sum of x * w) in float64 over ``t`` flattened, w cycling through -8..8."""
    s, a, w = _sums(t).tolist()
    return (s, a, w)


def state_digest(items: Iterable[tuple[str, torch.Tensor]], done: dict | None = None) -> Digest:
    """The digest of (name, tensor) pairs, each reduced on its own device (one transfer of the results per device).
    ``done``: the reductions of an earlier call to share (a tensor held where it was handed is reduced once)."""
    by_device: dict[torch.device, list[tuple[str, torch.Tensor]]] = {}
    done = {} if done is None else done  # a tied tensor under several names is reduced once
    for name, t in items:
        key = (t.device, t.data_ptr(), t.dtype, tuple(t.shape), t.stride())
        if key not in done:
            done[key] = _sums(t)
        by_device.setdefault(t.device, []).append((name, done[key]))
    out = {}
    for pairs in by_device.values():
        rows = torch.stack([sums for _, sums in pairs]).tolist()
        out |= {name: tuple(row) for (name, _), row in zip(pairs, rows, strict=True)}
    return out


def digest_mismatches(reference: Digest, held: Digest, what: str, rtol: float = DIGEST_RTOL) -> list[str]:
    """Why ``held`` (the weights of ``what``) differs from ``reference``: missing or unexpected tensors, and
    tensors whose sums differ by more than ``rtol`` of their absolute sum. Empty when they match."""
    problems = []
    missing, extra = sorted(set(reference) - set(held)), sorted(set(held) - set(reference))
    if missing:
        problems.append(f"{what}: {len(missing)} tensors missing, e.g. {missing[:3]}")
    if extra:
        problems.append(f"{what}: {len(extra)} tensors the reference does not have, e.g. {extra[:3]}")
    for name in sorted(set(reference) & set(held)):
        ref, got = reference[name], held[name]
        tol = rtol * max(ref[1], got[1])
        # not (diff <= tol): a NaN anywhere is a mismatch; the weighted sum scales with the largest weight
        if not all(abs(a - b) <= tol * k for a, b, k in zip(ref, got, (1, 1, WEIGHT_CYCLE // 2), strict=True)):
            problems.append(f"{what}: {name} differs (sum {got[0]:.9g} vs {ref[0]:.9g}, abs {got[1]:.9g} vs "
                            f"{ref[1]:.9g})")
    return problems


@dataclass
class SyncCheck:
    """One sync's check in a rollout worker: the reference digest of the learner's weights (the state dict the
    worker was handed, or what learner rank 0 broadcast) and the digest of each holder of weights there (the
    replica, each vLLM worker)."""

    version: int
    expected: tuple[str, ...]  # the holders that must report
    reference: Digest | None = None
    held: dict[str, Digest] = field(default_factory=dict)
    seconds: float = 0.0  # spent digesting in the rollout worker
    engine_seconds: float = 0.0  # spent digesting inside vLLM's workers while they loaded (the longest of them)

    def problems(self) -> list[str]:
        if self.reference is None:
            return [f"v{self.version}: no digest of the learner's weights arrived"]
        out = [f"v{self.version}: {what} reported no digest" for what in self.expected if what not in self.held]
        for what, digest in self.held.items():  # holders may keep more (buffers): only the reference's tensors
            out += digest_mismatches(self.reference, {k: v for k, v in digest.items() if k in self.reference},
                                     f"v{self.version} {what}")
        return out
