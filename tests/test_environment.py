"""RUN/environment.json and model.numerics: what tells two runs apart, and the kernels every process computes with."""

import json
import os
import subprocess
import sys

import torch
from safetensors.torch import save_file

from ral_dist.runtime.environment import (
    PORTABLE_NUMERICS,
    differences,
    numerics_env,
    record_start,
    weights_digest,
)

CAPABILITY = "import torch; print('capability', torch.backends.cpu.get_cpu_capability())"


def _run(script: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)


def test_a_process_restarts_itself_under_the_portable_numerics():
    clean = {k: v for k, v in os.environ.items() if k not in PORTABLE_NUMERICS}
    script = f"from ral_dist.runtime.environment import ensure_numerics; ensure_numerics('portable'); {CAPABILITY}"
    proc = _run(script, clean)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("restarting this process") == 1  # once: the restarted process has the variables
    assert proc.stdout.strip().splitlines()[-1] in ("capability AVX2", "capability DEFAULT")  # never AVX512
    native = _run(f"from ral_dist.runtime.environment import ensure_numerics; ensure_numerics('native'); "
                  f"{CAPABILITY}", clean)
    assert native.returncode == 0 and "restarting" not in native.stdout
    assert numerics_env("native") == {} and numerics_env("portable") == PORTABLE_NUMERICS


def test_each_start_is_recorded_and_a_changed_machine_is_named(tmp_path):
    record = {"started": "t0", "config_sha256": "a", "code": {"commit": "c1"},
              "driver": {"host": "pod-a", "cpu": {"model": "EPYC", "flags": ["avx2"]}, "libraries": {"torch": "2.13"}}}
    assert record_start(tmp_path, record) == []
    same = json.loads(json.dumps(record)) | {"started": "t1", "config_sha256": "b"}
    same["driver"]["host"] = "pod-b"  # a restarted pod, a --set on resume: not a change of numbers
    assert record_start(tmp_path, same) == []
    moved = json.loads(json.dumps(record))
    moved["driver"]["cpu"]["flags"] = ["avx2", "avx512f"]
    moved["driver"]["libraries"]["torch"] = "2.14"
    assert record_start(tmp_path, moved) == ["driver.cpu.flags: ['avx2'] -> ['avx2', 'avx512f']",
                                             "driver.libraries.torch: 2.13 -> 2.14"]
    assert len(json.loads((tmp_path / "environment.json").read_text())["starts"]) == 3
    assert differences({"a": {"b": 1}}, {"a": {"b": 1, "c": 2}}) == ["a.c: None -> 2"]


def test_weights_digest_names_each_file_and_changes_with_any_weight(tmp_path):
    save_file({"w": torch.zeros(4)}, str(tmp_path / "model.safetensors"))
    first = weights_digest(tmp_path)
    save_file({"w": torch.tensor([0.0, 0.0, 0.0, 1e-30])}, str(tmp_path / "model.safetensors"))
    assert list(first) == ["model.safetensors"] and weights_digest(tmp_path) != first
    assert weights_digest(None) is None and weights_digest(tmp_path / "missing") is None
