"""What tells two runs apart: the code, the libraries, the machine and the numerics each process ran with
(``RUN/environment.json``), and the digest of the weights the run started from.

CPU results depend on more than the code and the seed: torch's kernels are chosen by the CPU's instruction set
(AVX-512 or AVX2 vector widths sum in another order), MKL and oneDNN pick their own kernels by CPU, and a
reduction over more threads adds in another order. ``run.numerics: portable`` pins all three to what every x86
CPU of the last decade has (`numerics_env`), so the same code, config and seed give the same numbers on another
machine; ``native`` lets each take the machine's best (faster on AVX-512 machines, not comparable across them).
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

# Each process reads these when it loads torch / MKL / oneDNN: they go in every Ray worker's environment.
PORTABLE_NUMERICS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2,STRICT", "ONEDNN_MAX_CPU_ISA": "AVX2"}
NUMERICS_KEYS = (*PORTABLE_NUMERICS, "OMP_NUM_THREADS", "MKL_NUM_THREADS")
# Every Ray worker of a job (`ray_cluster.worker_env`). glibc gives every tensor of 32 MB or more fresh pages from
# the kernel and hands them back when it is freed, so each step's gradient buckets (DeepSpeed flattens all gradients
# into one), activations and weight copies fault in anew: 22 % of a 135M CPU learner step on 2 cores. Serve such
# tensors from the process's heap and keep what is freed there (as jemalloc or tcmalloc would): each process then
# holds on to its peak memory.
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 32), "MALLOC_TRIM_THRESHOLD_": str(1 << 36)}
LIBRARIES = ("torch", "transformers", "deepspeed", "ray", "numpy", "safetensors", "tokenizers", "vllm")
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")
FULL_DIGEST_BYTES = 2 << 30  # weights files up to 2 GiB are hashed whole, larger ones by their header and samples


def numerics_env(numerics: str) -> dict[str, str]:
    """The environment variables of ``run.numerics`` for every process of the job."""
    return dict(PORTABLE_NUMERICS) if numerics == "portable" else {}


def _cpu() -> dict:
    info = {"machine": platform.machine(), "cores": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    return info | {"model": fields.get("model name"), "flags": [f for f in CPU_FLAGS if f in flags]}


def _code() -> dict:
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {"commit": None}
    return {"commit": head.stdout.strip() or None, "modified": bool(dirty.stdout.strip())}


def process_environment() -> dict:
    """This process: libraries, CPU, torch's kernel choice and threads, the numerics variables."""
    import torch

    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {"python": platform.python_version(), "libraries": versions, "cpu": _cpu(),
            "torch": {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
                      "cuda": torch.version.cuda, "gpus": [torch.cuda.get_device_name(i)
                                                           for i in range(torch.cuda.device_count())]},
            "numerics_env": {k: os.environ[k] for k in NUMERICS_KEYS if k in os.environ},
            "allocator_env": {k: os.environ[k] for k in ALLOCATOR_ENV if k in os.environ},
            "host": platform.node()}


def weights_digest(checkpoint: str | Path | None) -> dict | None:
    """sha256 of each weights file of a checkpoint directory (large ones: of their size, header and 64 spread 1 MiB
    samples, marked so)."""
    if checkpoint is None or not Path(checkpoint).is_dir():
        return None
    out = {}
    for path in sorted(Path(checkpoint).glob("*.safetensors")):
        size = path.stat().st_size
        h = hashlib.sha256(str(size).encode())
        with path.open("rb") as fh:
            if size <= FULL_DIGEST_BYTES:
                for block in iter(lambda: fh.read(1 << 24), b""):
                    h.update(block)
                out[path.name] = h.hexdigest()
            else:
                for k in range(64):
                    fh.seek(k * (size - (1 << 20)) // 63)
                    h.update(fh.read(1 << 20))
                out[path.name] = "sampled:" + h.hexdigest()
    return out


# What a start may change without the numbers changing: when, the config (--resume --set), the pods' names.
NOT_COMPARED = frozenset({"started", "config_sha256", "host"})


def differences(before: dict, now: dict, prefix: str = "") -> list[str]:
    """The leaves that differ between two environment records (``a.b: x -> y``), `NOT_COMPARED` left out."""
    out = []
    for key in sorted((set(before) | set(now)) - NOT_COMPARED):
        a, b = before.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a} -> {b}")
    return out


def ensure_numerics(numerics: str) -> None:
    """Make this process compute under ``numerics`` too (the job driver computes the advantages, the SFT driver its
    evaluation): torch, MKL and oneDNN read the variables when they load, so a process started without them starts
    again with them (`os.execv`: same pid, same arguments, the variables set; once)."""
    wanted = numerics_env(numerics)
    if all(os.environ.get(k) == v for k, v in wanted.items()):
        return
    import sys

    os.environ.update(wanted)
    print(f"[ral] model.numerics={numerics}: restarting this process with {wanted}", flush=True)
    os.execv(sys.executable, sys.orig_argv)


def record_start(run_path: Path, record: dict) -> list[str]:
    """Append this start of the job (fresh, ``--resume`` or a recovery) to ``RUN/environment.json``; returns how
    it differs from the run's first start (a resume on another machine, or with other libraries, says so)."""
    import json

    path = Path(run_path) / "environment.json"
    starts = json.loads(path.read_text())["starts"] if path.exists() else []
    starts.append(record)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"starts": starts}, indent=1) + "\n")
    tmp.replace(path)  # a kill mid-write leaves the previous record, never half of one
    return differences(starts[0], record)


def job_record(cfg, actors: dict[str, dict]) -> dict:
    """One start's record: the code, the config's digest, the weights it started from, and the environment of the
    driver and of one actor of each role (``actors``)."""
    import json
    import time

    config = json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()
    return {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "code": _code(),
            "config_sha256": hashlib.sha256(config).hexdigest(), "start_weights": weights_digest(cfg.model.checkpoint),
            "driver": process_environment(), **actors}
