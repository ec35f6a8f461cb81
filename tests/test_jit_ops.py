"""A killed JIT build's lock blocks nothing: DeepSpeed's shared-memory op loads past it (`ral_dist.runtime.jit_ops`).

Each case runs in a fresh process on a copy of this environment's built op (made by `make setup`), with torch's
``lock`` file planted exactly as a build killed mid-way leaves it: empty, its owner gone. Without the fix such a
process waits on it forever (the subprocess timeout would fail the test).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ral_dist.paths import torch_extensions_dir

ROOT = Path(__file__).resolve().parents[1]
OP = "deepspeed_shm_comm"

LOAD = """
import sys, torch
from ral_dist.runtime.deepspeed_setup import import_deepspeed
if sys.argv[1] == "no-build":  # entering torch's build path would fail loudly
    import torch.utils.cpp_extension as ext
    ext.load = lambda *a, **k: (_ for _ in ()).throw(AssertionError("entered the build path"))
import_deepspeed(torch.device("cpu"))
from deepspeed.comm.torch import build_shm_op
print("loaded", build_shm_op().__name__, flush=True)
"""


@pytest.fixture()
def extensions(tmp_path):
    built = Path(torch_extensions_dir()) / OP
    if not (built / f"{OP}.so").exists():
        subprocess.run([sys.executable, "-c", "from ral_dist.runtime.deepspeed_setup import prebuild_ops; "
                        "prebuild_ops()"], check=True, cwd=ROOT, timeout=600)
    copy = tmp_path / "ext"
    shutil.copytree(built, copy / OP, ignore=shutil.ignore_patterns("lock", ".ral-build.flock", "ral_build.json"))
    return copy


def _load(extensions: Path, mode: str) -> str:
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(extensions), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", LOAD, mode], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_stale_lock_is_removed_then_the_stamped_op_loads_without_the_build_path(extensions):
    lock = extensions / OP / "lock"
    lock.touch()  # what a killed build leaves
    out = _load(extensions, "build")
    assert f"removed a stale JIT build lock {lock}" in out and "loaded" in out
    assert not lock.exists() and (extensions / OP / "ral_build.json").exists()

    lock.touch()  # killed again; now the stamp says the .so is current: imported directly, no ninja, no torch lock
    out = _load(extensions, "no-build")
    assert "removed a stale JIT build lock" in out and "loaded" in out
    assert not lock.exists()


def test_a_stamp_of_other_sources_is_not_trusted(extensions):
    (extensions / OP / "ral_build.json").write_text('{"op": "deepspeed_shm_comm", "sources_sha256": "old"}')
    with pytest.raises(AssertionError, match="entered the build path"):
        _load(extensions, "no-build")  # a stale stamp sends it to the build (which the no-build mode forbids)
