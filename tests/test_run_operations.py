"""Operating a run without a cluster: the run.* settings, checkpoint commits and retention, trackers that fail,
the heatmap figure, validation records and the report of a run without validation or heatmaps."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from ral_dist.actors.validation import Validation
from ral_dist.config import ConfigError, RLJobConfig, load_config
from ral_dist.data import GroundedVQAConfig
from ral_dist.data.grounded_vqa import generate
from ral_dist.evaluation.heatmaps import heatmap_figure
from ral_dist.evaluation.report import SIZES, grid_size, write_report
from ral_dist.evaluation.validation import val_record
from ral_dist.rewards import reward_terms
from ral_dist.runtime import checkpoints
from ral_dist.runtime.run_dir import RunDir
from ral_dist.runtime.trackers import scalars

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("override, field", [
    ("run.loggers=[tensorboard]", "run.loggers"), ("run.loggers=[jsonl,comet]", "run.loggers.1"),
    ("run.loggers=[jsonl,mlflow,mlflow]", "run.loggers"), ("run.keep_best=1", "run.keep_best"),
    ("run.keep_checkpoints=0", "run.keep_checkpoints"), ("run.keep_optimizer_state=first", "run.keep_optimizer_state"),
    ("run.val_every=0", "run.val_every"), ("run.val_alert_drop=2", "run.val_alert_drop")])
def test_bad_run_settings_fail_naming_the_field(override, field):
    with pytest.raises(ConfigError, match=rf"{field}:"):
        load_config(RLJobConfig, None, [override])


def test_validation_is_due_every_n_steps_and_at_the_last(tmp_path):
    cfg = load_config(RLJobConfig, None, ["run.steps=6", "run.val_every=2", "data.sizes={train: 8, val: 4, test: 4}"])
    validation = Validation(cfg, RunDir(tmp_path / "run"))
    assert len(validation.samples) == 4  # the val split, never the training one
    assert [s for s in range(6) if validation.due(s)] == [0, 2, 4, 5]
    off = Validation(load_config(RLJobConfig, None, ["run.steps=6"]), RunDir(tmp_path / "off"))
    assert off.samples == [] and not any(off.due(s) for s in range(6))


def test_val_record_means_every_metric_per_type_and_leaves_out_what_does_not_apply():
    terms = reward_terms(None)
    rows = [{"id": "a", "qtype": "color_at", "accuracy": 1.0, "format_rate": 1.0, "sparsity": 0.2, "consistency": 0.9,
             "attention_on_target": 0.5, "target_fraction": 0.25, "response_length": 10},
            {"id": "b", "qtype": "count", "accuracy": 0.0, "format_rate": 1.0, "sparsity": 0.4, "consistency": 0.7,
             "attention_on_target": math.nan, "target_fraction": math.nan, "response_length": 20}]
    r = val_record(4, 5, rows, terms, 1.25)
    assert (r["kind"], r["step"], r["policy_version"], r["n"], r["val_s"]) == ("val", 4, 5, 2, 1.25)
    assert r["accuracy"] == 0.5 and r["response_length"] == 15 and r["attention_on_target"] == 0.5
    assert r["per_type"]["count"]["attention_on_target"] is None and r["per_type"]["color_at"]["n"] == 1
    assert scalars(r)["val/per_type/color_at/accuracy"] == 1.0 and "val/per_type/count/attention_on_target" not in \
        scalars(r)


def _checkpoint(root: Path, step: int, name: str | None = None, optimizer: bool = True) -> Path:
    path = root / (name or f"step_{step:06d}")
    path.mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, str(path / "model.safetensors"))
    (path / "config.json").write_text("{}")
    if optimizer:
        (path / "deepspeed" / "latest").mkdir(parents=True)
        (path / "deepspeed" / "latest" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"x")
    return path


def test_a_checkpoint_is_renamed_into_place_only_when_complete(tmp_path):
    root = tmp_path / "checkpoints"
    partial = _checkpoint(root, 2, ".partial-step_000002")
    (partial / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")  # cut off
    with pytest.raises(RuntimeError, match="incomplete: model.safetensors"):
        checkpoints.commit(partial, root / "step_000002", {"step": 2})
    assert not (root / "step_000002").exists() and checkpoints.latest(root) is None
    partial = _checkpoint(root, 3, ".partial-step_000003")
    checkpoints.commit(partial, root / "step_000003", {"step": 3, "next_step": 4})
    assert checkpoints.latest(root) == root / "step_000003" and not partial.exists()
    assert json.loads((root / "step_000003" / checkpoints.STATE).read_text())["next_step"] == 4


def test_retention_keeps_the_newest_and_the_best_and_the_optimizer_state_only_in_the_newest(tmp_path):
    root = tmp_path / "checkpoints"
    for step in range(6):
        checkpoints.commit(_checkpoint(root, step, f".partial-step_{step:06d}"), root / f"step_{step:06d}",
                           {"step": step})
    _checkpoint(root, 6, ".partial-step_000006")  # a kill in the middle of the next save
    accuracy = {0: 0.2, 2: 0.9, 4: 0.5, 5: 0.4}
    assert checkpoints.kept(list(range(6)), 2, 1, accuracy) == {2, 4, 5}
    assert checkpoints.kept(list(range(6)), 2, 1, {0: 0.5, 2: 0.5}) == {2, 4, 5}  # a tie goes to the later step
    assert checkpoints.kept(list(range(6)), None, 0, {}) == set(range(6))
    deleted = checkpoints.prune(root, 2, 1, "last", accuracy)
    assert sorted(p.name for p in root.iterdir()) == ["step_000002", "step_000004", "step_000005"]
    assert ".partial-step_000006" in deleted and "step_000003" in deleted
    assert [p.parent.name for p in root.glob("*/deepspeed")] == ["step_000005"]
    assert checkpoints.latest(root) == root / "step_000005"  # resumable: the newest keeps its optimizer state


def test_a_tracker_that_fails_is_reported_once_and_disabled(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "tensorboard").write_text("a file where TensorBoard wants its directory")
    monkeypatch.setitem(sys.modules, "wandb", None)  # the package is not installed
    cfg = load_config(RLJobConfig, None, ["run.loggers=[jsonl,tensorboard,mlflow,wandb]"])
    run_dir = RunDir(run)
    run_dir.open_trackers(cfg)
    assert list(run_dir.trackers.active) == ["mlflow"]
    mlflow = run_dir.trackers.active["mlflow"]
    monkeypatch.setattr(mlflow, "log_scalars", lambda *a: 1 / 0)  # and one that fails later
    for step in range(3):
        run_dir.append_metrics({"step": step, "accuracy": 0.5})
    run_dir.close()
    out = capsys.readouterr().out
    assert out.count("logger tensorboard could not start") == 1
    assert out.count("logger wandb could not start: ModuleNotFoundError") == 1 and "ral_dist[trackers]" in out
    assert out.count("logger mlflow failed: ZeroDivisionError") == 1 and "training goes on" in out
    assert len(run_dir.metrics()) == 3  # metrics.jsonl is written whatever the trackers do


def test_heatmap_figure_reads_without_the_code():
    s = generate(GroundedVQAConfig(seed=0), "val", 1)[0]
    attention = torch.zeros(16)
    attention[5] = 1.0
    answer = "<think>" + "the asked cell holds a shape " * 6 + "</think><answer>red</answer>"
    fig = heatmap_figure(s.images, attention, (1, 4, 4), 1, s.question, answer, s.answer, s.regions, s.frame_hw)
    width, height = fig.canvas.get_width_height()
    assert width >= 700 and height >= 400  # two 300-pixel panels, colour bar, the text under them
    text = "".join(t.get_text() for t in fig.texts).replace("\n", " ")
    assert s.question in text and "Ground truth: " + s.answer in text and "red</answer>" in text
    assert len(fig.axes) == 3 and fig.axes[-1].get_ylabel() == "share of the answer's visual attention"
    assert len(fig.axes[1].patches) == len(s.regions) >= 1  # the ground-truth box on the overlay
    video = heatmap_figure(s.images * 4, torch.rand(2 * 16), (2, 4, 4), 2, s.question, "red", s.answer)
    assert len(video.axes) == 2 * 2 + 1  # frames above their overlays, one column per temporal patch


def test_report_of_a_run_without_validation_or_heatmaps(tmp_path):
    run = RunDir(tmp_path / "run")
    for step in range(3):
        run.append_metrics({"step": step, "reward_mean": 0.1 * step, "reward_task": 0.1, "accuracy": 0.2, "kl": None,
                            "attn_jsd": 0.01, "rollout_wait_s": 1.0, "learn_s": 2.0, "step_s": 3.0,
                            "per_type": {"color_at": {"accuracy": 0.2, "reward": 0.1, "n": 4}}})
    html = write_report(run.path).read_text()
    for name, size in {**SIZES, "heatmaps.png": grid_size(0)}.items():
        assert Image.open(run.path / name).size == size and f'href="{name}"' in html
    proc = subprocess.run([sys.executable, str(ROOT / "jobs" / "report.py"), str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and "has no metrics.jsonl" in proc.stderr
