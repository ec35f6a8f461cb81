"""The SFT warm start on Ray Train (2 workers, DeepSpeed over gloo) and jobs/eval.py on its checkpoint."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ral_dist.models import adapter_for_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def test_short_sft_run_gives_a_reloadable_checkpoint_whose_loss_decreased(tmp_path):
    out = tmp_path / "ckpt"
    cmd = [sys.executable, "jobs/sft.py", "--output", str(out), "--steps", "12",
           "--set", "train.log_every=3", "--set", "train.batch_size=8", "--set", "train.lr=3e-3",
           "--set", "train.warmup_steps=2", "--set", "train.zero_stage=2", "--set", "eval_samples=4",
           "--set", "data.sizes={train: 96, val: 8, test: 8}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ETA" in proc.stdout + proc.stderr  # progress line

    log = json.loads((out / "sft_log.json").read_text())
    losses = [h["loss"] for h in log["history"]]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert (out / "model.safetensors").exists() and (out / "eval_val.json").exists()

    adapter = adapter_for_checkpoint(out)
    model, processor = adapter.load(out)  # transformers from_pretrained + our processor
    assert sum(p.numel() for p in model.parameters()) > 0
    assert not any(torch.isnan(p).any() for p in model.parameters())

    report_path = tmp_path / "eval.json"
    proc = subprocess.run([sys.executable, "jobs/eval.py", "--checkpoint", str(out), "--split", "val",
                           "--json", str(report_path), "--heatmaps", str(tmp_path / "heat"), "--per-layer"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(report_path.read_text())
    for key in ("accuracy", "attention_on_target", "format_rate", "n", "per_type"):
        assert key in report
    assert report["n"] == 8 and 0.0 <= report["accuracy"] <= 1.0
    assert 0.0 <= report["attention_on_target"] <= 1.0
    assert len(list((tmp_path / "heat").glob("*.png"))) == 4
    # --per-layer: attention on target at every decoder layer, beside its chance level; the last layer's image
    # figure is the report's own attention_on_target (the default attention.layers)
    n_layers = model.config.text_config.num_hidden_layers
    per_layer = report["per_layer"]
    assert list(per_layer) == [str(layer) for layer in range(n_layers)] and "layer" in proc.stdout
    for by_kind in per_layer.values():
        for figures in by_kind.values():
            assert 0 <= figures["attention_on_target"] <= 1 and 0 < figures["target_fraction"] < 1
    last = per_layer[str(n_layers - 1)]
    on_target = sum(f["attention_on_target"] * f["n"] for f in last.values()) / sum(f["n"] for f in last.values())
    assert on_target == pytest.approx(report["attention_on_target"], abs=1e-5)
