"""The same code, config and seed give the same numbers on another machine (issue 22).

The values pinned here were produced on the machine that wrote this test (AMD EPYC with AVX-512, 2 cores,
``model.numerics: portable``), and again there under a changed outer environment (ATEN_CPU_CAPABILITY=avx512,
OMP_NUM_THREADS=2) and a second job loading both cores. CI derives them afresh on its own clean machine, so a pass
there is the headline's warm start and its first RL steps reproduced on a second machine, bit for bit. A failure
names the first value that differs, and the CPU and libraries of the machine it ran on. (Re-pinned, SFT and RL, when
the optimizer became torch's fused AdamW: its kernels' rounding is the instruction set's, which portable pins.)
"""

import hashlib
import json
import sys
from pathlib import Path

from ral_dist.runtime.environment import process_environment

ROOT = Path(__file__).resolve().parents[1]

# jobs/configs/sft_tiny_cpu.yaml (600 steps): the loss every 20th step, and the checkpoint's weights file
SFT_LOSSES = {20: 5.77630615234375, 100: 0.2877572178840637, 200: 0.1703759729862213, 400: 0.13371217250823975,
              600: 0.10522793978452682}
SFT_SHA256 = "c614c4e4c60ffbefc6f25151f4641c2dcfee25457589ef809c6be90e1046ec5b"
# jobs/configs/tiny_cpu.yaml from that start (seed 0): its first steps, and the weights after them
RL_STEPS = 3
RL_KEYS = ("reward_mean", "accuracy", "loss", "kl", "attn_jsd", "attn_loss")
RL_RECORDS = [  # reward_mean, accuracy, loss, kl, attn_jsd, attn_loss of each step
    (0.8296874999999999, 0.8125, 0.0060643095057457685,
     0.0002611359027469007, 5.4793456468416046e-05, 3.7111908609485655e-06),
    (0.7875, 0.765625, 0.003837558440864086,
     0.001678506436292082, 1.0969635029500768e-05, 1.1268277928799808e-08),
    (0.746875, 0.71875, -0.0003526243381202221,
     0.0013996251564094564, 7.096718728949458e-06, 2.1446089434537519e-07),
]
RL_SHA256 = "b5463a01b7ae524ed2a5d031456704e949b2f73a736ccef4d43c300cd62e3c25"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _first_difference(got: dict, want: dict) -> str | None:
    for key, value in want.items():
        if got.get(key) != value:
            return f"{key}: got {got.get(key)!r}, pinned {value!r}"
    return None


def _where() -> str:
    env = process_environment()
    return json.dumps({k: env[k] for k in ("cpu", "libraries", "python")})


def test_the_warm_start_and_the_first_rl_steps_are_the_pinned_ones(ray_head, tmp_path):
    sft = tmp_path / "sft"
    proc = ray_head.ray("job", "submit", f"--address={ray_head.dashboard}", "--", sys.executable,
                        str(ROOT / "jobs" / "sft.py"), "--output", str(sft), "--set", "eval_samples=0", timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    losses = {h["step"]: h["loss"] for h in json.loads((sft / "sft_log.json").read_text())["history"]}
    assert _first_difference(losses, SFT_LOSSES) is None, (_first_difference(losses, SFT_LOSSES), _where())
    assert _sha256(sft / "model.safetensors") == SFT_SHA256, _where()

    run = tmp_path / "run"
    proc = ray_head.submit("--config", str(ROOT / "jobs" / "configs" / "tiny_cpu.yaml"), "--steps", str(RL_STEPS),
                           "--run-dir", str(run), "--set", f"model.checkpoint={sft}",
                           "--set", f"run.checkpoint_every={RL_STEPS}")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for step, (got, want) in enumerate(zip(records, RL_RECORDS, strict=True)):
        diff = _first_difference({k: got[k] for k in RL_KEYS}, dict(zip(RL_KEYS, want, strict=True)))
        assert diff is None, (f"step {step}", diff, _where())
    assert _sha256(run / "checkpoints" / f"step_{RL_STEPS - 1:06d}" / "model.safetensors") == RL_SHA256, _where()
