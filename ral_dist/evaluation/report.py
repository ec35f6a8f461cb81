"""The run report: ``report.html`` (self-contained: the PNGs inline) and the PNGs beside it, drawn from a run
directory's metrics.jsonl and heatmaps/ (``python jobs/report.py RUN_DIR``; the RL job writes it at its end).

Figures (fixed sizes, `SIZES`): training curves over steps (reward by term, accuracy, KL, attention JSD, seconds per
phase), validation curves, accuracy per question type, and a grid of the heatmaps of the same validation images at
the first, middle and last step that drew them.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import time
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

DPI = 100
CURVE = (8.0, 4.5)
SIZES = {  # PNG name -> (width, height) in pixels; the heatmap grid's height grows with its rows (`grid_size`)
    "reward.png": (800, 450), "accuracy.png": (800, 450), "kl.png": (800, 450), "attention_jsd.png": (800, 450),
    "phase_times.png": (800, 450), "validation.png": (1200, 450), "per_type_accuracy.png": (800, 450),
}
GRID_CELL_IN = (5.0, 3.4)
GRID_SAMPLES = 4
PHASES = ("rollout_wait_s", "reward_s", "learn_s", "sync_s")
VAL_CURVES = ("accuracy", "format_rate", "attention_on_target", "target_fraction", "sparsity", "consistency")


def grid_size(rows: int) -> tuple[int, int]:
    """Pixels of heatmaps.png with ``rows`` sample rows (3 columns: first, middle, last step)."""
    return int(3 * GRID_CELL_IN[0] * DPI), int((max(rows, 1) * GRID_CELL_IN[1] + 0.6) * DPI)


def _figure(size: tuple[float, float], ncols: int = 1) -> tuple[Figure, list]:
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, list(fig.subplots(1, ncols, squeeze=False)[0])


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for r in records:
        value = r.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            steps.append(r["step"])
            values.append(float(value))
    return steps, values


def _curves(title: str, records: list[dict], keys: list[tuple[str, str]], ylabel: str) -> Figure:
    fig, (ax,) = _figure(CURVE)
    drawn = 0
    for key, label in keys:
        steps, values = _series(records, key)
        if steps:
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=label)
            drawn += 1
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "no data in metrics.jsonl", ha="center", va="center", transform=ax.transAxes)
    return fig


def _phase_times(train: list[dict]) -> Figure:
    fig, (ax,) = _figure(CURVE)
    steps = [r["step"] for r in train]
    bottom = np.zeros(len(steps))
    for phase in PHASES:
        values = np.array([float(r.get(phase) or 0.0) for r in train])
        ax.bar(steps, values, bottom=bottom, label=phase.removesuffix("_s"), width=0.8)
        bottom += values
    ax.set(title="Seconds per step by phase", xlabel="step", ylabel="s")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return fig


def _validation(val: list[dict]) -> Figure:
    fig, (ax, ax_len) = _figure((12.0, 4.5), ncols=2)
    for key in VAL_CURVES:
        steps, values = _series(val, key)
        if steps:
            style = "--" if key == "target_fraction" else "-"
            label = "on target: chance" if key == "target_fraction" else key
            ax.plot(steps, values, style, marker="o", markersize=3, label=label)
    ax.set(title="Validation (greedy on the val split; step -1: before training)", xlabel="after step", ylim=(0, 1.02))
    steps, values = _series(val, "response_length")
    ax_len.plot(steps, values, marker="o", markersize=3, color="tab:gray")
    ax_len.set(title="Validation response length", xlabel="after step", ylabel="tokens")
    for a in (ax, ax_len):
        a.grid(alpha=0.3)
    if val:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    else:
        ax.text(0.5, 0.5, "no validation in this run (run.val_every)", ha="center", va="center", transform=ax.transAxes)
    return fig


def _per_type(train: list[dict], val: list[dict]) -> Figure:
    """First and last validation's accuracy per question type (without validation: the first and last tenth of
    the training steps' rollout accuracy)."""
    fig, (ax,) = _figure(CURVE)
    if val:
        groups = [(f"validation after step {val[0]['step']}", [val[0]]), (f"after step {val[-1]['step']}", [val[-1]])]
    else:
        tenth = max(1, len(train) // 10)
        groups = [("training, first steps", train[:tenth]), ("training, last steps", train[-tenth:])]
    qtypes = sorted({q for _, rs in groups for r in rs for q in r.get("per_type", {})})
    width = 0.8 / max(len(groups), 1)
    for g, (label, rs) in enumerate(groups):
        means = [np.nanmean([r["per_type"][q]["accuracy"] if r.get("per_type", {}).get(q, {}).get("accuracy")
                             is not None else np.nan for r in rs] or [np.nan]) for q in qtypes]
        ax.bar(np.arange(len(qtypes)) + g * width, means, width, label=label)
    ax.set_xticks(np.arange(len(qtypes)) + width * (len(groups) - 1) / 2, qtypes, rotation=20, fontsize=8)
    ax.set(title="Accuracy per question type", ylabel="accuracy", ylim=(0, 1.05))
    ax.grid(alpha=0.3, axis="y")
    if qtypes:
        ax.legend(fontsize=8)
    return fig


def heatmap_grid_inputs(run_dir: Path) -> tuple[list[Path], list[str]]:
    """The first, middle and last heatmaps/step_* directories and the sample ids every one of them holds."""
    dirs = sorted(p for p in (run_dir / "heatmaps").glob("step_*") if any(p.glob("*.png")))
    if not dirs:
        return [], []
    chosen = list(dict.fromkeys([dirs[0], dirs[len(dirs) // 2], dirs[-1]]))
    common = set.intersection(*({p.stem for p in d.glob("*.png")} for d in chosen))
    return chosen, sorted(common)[:GRID_SAMPLES]


def _heatmap_grid(run_dir: Path) -> Figure:
    dirs, ids = heatmap_grid_inputs(run_dir)
    w, h = grid_size(len(ids))
    fig = Figure(figsize=(w / DPI, h / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    if not ids:
        fig.text(0.5, 0.5, "no heatmaps in this run (run.heatmap_prompts)", ha="center", va="center")
        return fig
    axes = fig.subplots(len(ids), 3, squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - 0.45 / (h / DPI), bottom=0.01, wspace=0.02, hspace=0.08)
    for col in range(3):
        d = dirs[min(col, len(dirs) - 1)]
        axes[0, col].set_title(f"step {int(d.name.removeprefix('step_'))}", fontsize=12)
        for row, sample_id in enumerate(ids):
            ax = axes[row, col]
            ax.imshow(np.asarray(Image.open(d / f"{sample_id}.png").convert("RGB")))
            ax.set_axis_off()
    return fig


def _figures(run_dir: Path, train: list[dict], val: list[dict]) -> dict[str, tuple[Figure, str]]:
    terms = sorted(k for k in (train[-1] if train else {})
                   if k.startswith("reward_") and k not in ("reward_mean", "reward_notes", "reward_s"))
    val_acc = [{"step": r["step"], "val_accuracy": r.get("accuracy")} for r in val]
    return {
        "reward.png": (_curves("Reward (step mean over the sampled responses)", train,
                               [("reward_mean", "total"), *[(k, k.removeprefix("reward_")) for k in terms]], "reward"),
                       "Mean reward of each term and the weighted total the advantages use."),
        "accuracy.png": (_curves("Accuracy", train + val_acc,
                                 [("accuracy", "sampled responses (training)"), ("val_accuracy", "validation")],
                                 "accuracy"), "Exact-match accuracy of the rollouts, and of greedy validation."),
        "kl.png": (_curves("KL to the reference policy (k3)", train, [("kl", "KL")], "nats"),
                   "How far the policy moved from the reference."),
        "attention_jsd.png": (_curves("Attention JSD (learner vs behaviour policy)", train,
                                      [("attn_jsd", "JSD"), ("attn_loss", "attention loss")], "nats"),
                              "RAL's attention term (RAL.md §3)."),
        "phase_times.png": (_phase_times(train), "Where each step's time goes."),
        "per_type_accuracy.png": (_per_type(train, val), "Accuracy per question type."),
        "validation.png": (_validation(val), "Validation metrics and response length."),
        "heatmaps.png": (_heatmap_grid(run_dir), "The answer tokens' attention on the same validation images at the "
                                                 "first, middle and last step that drew heatmaps."),
    }


def write_report(run_dir: str | Path) -> Path:
    """Write every PNG and report.html into ``run_dir``; returns the HTML's path."""
    run_dir = Path(run_dir)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in records if r.get("kind", "step") == "step"]
    val = [r for r in records if r.get("kind") == "val"]
    sections = []
    for name, (fig, caption) in _figures(run_dir, train, val).items():
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI)
        (run_dir / name).write_bytes(buf.getvalue())
        data = base64.b64encode(buf.getvalue()).decode()
        half = fig.get_figwidth() * DPI <= 800  # the curves two to a row, the wide figures alone
        sections.append(f'<figure class="{"half" if half else "full"}"><img src="data:image/png;base64,{data}" '
                        f'alt="{name}"><figcaption>{html.escape(caption)} <a href="{name}">{name}</a></figcaption>'
                        "</figure>")
    out = run_dir / "report.html"
    out.write_text(_html(run_dir, train, val, sections))
    return out


def _html(run_dir: Path, train: list[dict], val: list[dict], sections: list[str]) -> str:
    def cell(value) -> str:
        return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else html.escape(str(value))

    best = max((r["accuracy"] for r in val if r.get("accuracy") is not None), default=None)
    rows = [("steps recorded", len(train)), ("last step", train[-1]["step"] if train else None),
            ("rollout accuracy, last step", train[-1].get("accuracy") if train else None),
            ("validation accuracy, last", val[-1].get("accuracy") if val else None),
            ("validation accuracy, best", best),
            ("seconds of training", sum(float(r.get("step_s") or 0) for r in train))]
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{cell(v)}</td></tr>" for k, v in rows)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>ral_dist run {html.escape(run_dir.name)}</title>
<style>body{{font-family:sans-serif;max-width:1300px;margin:2em auto}} th{{text-align:left;padding-right:2em}}
main{{display:grid;grid-template-columns:1fr 1fr;gap:1.5em 1em}} figure{{margin:0}} .full{{grid-column:1 / 3}}
img{{max-width:100%;border:1px solid #ddd}} figcaption{{font-size:90%}}</style></head>
<body><h1>ral_dist run {html.escape(run_dir.name)}</h1>
<p>{html.escape(str(run_dir.resolve()))} &middot; written {time.strftime('%Y-%m-%d %H:%M:%S')}</p>
<table>{table}</table>
<main>{''.join(sections)}</main>
</body></html>
"""


def write_report_safely(run_dir: str | Path) -> Path | None:
    """`write_report` at a job's end: a failure is printed, never fails the finished run."""
    try:
        path = write_report(run_dir)
    except Exception as exc:  # noqa: BLE001 — the run is done; its report is a convenience
        print(f"[ral] report failed: {type(exc).__name__}: {exc}", flush=True)
        return None
    print(f"[ral] report: {path}", flush=True)
    return path
