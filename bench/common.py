"""What the systems benchmarks share: the tiny setup they all measure, A/B interleaving, statistics, output.

Every figure is a ratio of variants measured side by side: the variants run interleaved (A, B, A, B, ...) so
the drift of a shared machine hits them alike, and a ratio is the median of the per-round ratios (each B
against the A right before it), with the spread (min–max and the quartiles) beside it.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))  # `python bench/x.py` from a checkout

# The systems setup: the embedded default's shapes (jobs/configs/tiny_cpu.yaml) on a tiny random Qwen2.5-VL of
# the SFT checkpoint's architecture. A random model seldom samples EOS (TRL logged 92 % of responses clipped at
# max_new_tokens), so every repeat does nearly the same work.
TINY_SYSTEMS = {
    "model": {"family": "qwen2_5_vl", "checkpoint": None},
    "data": {"task": {"seed": 0, "canvas": 112, "grid": 2}, "sizes": {"train": 512, "val": 16, "test": 16},
             "prompt": {"mode": "think"}},
    "rollout": {"num_workers": 2, "prompts_per_step": 16, "group_size": 8, "temperature": 1.0,
                "max_new_tokens": 32, "cpus_per_worker": 0.25},
    "reward": {"num_workers": 2, "cpus_per_worker": 0.1},
    "learner": {"num_ranks": 2, "zero_stage": 0, "lr": 5e-4, "ppo_epochs": 1, "num_minibatches": 4,
                "beta": 0.04, "lambda_attn": 1.0, "cpus_per_rank": 0.5},
    "run": {"steps": 4, "mode": "sync", "checkpoint_every": 10_000, "heatmap_every": 10_000,
            "heatmap_prompts": 0, "timeout_s": 600, "max_recoveries": 0},
}


def tiny_config(sets: list[str] | None = None, **overrides):
    """An `RLJobConfig` of `TINY_SYSTEMS` with ``section={field: value}`` overrides, then ``key.path=value`` sets
    (as the jobs' ``--set``)."""
    from ral_dist.config import RLJobConfig, _set_path, parse_overrides

    tree = json.loads(json.dumps(TINY_SYSTEMS))
    for section, values in overrides.items():
        tree[section].update(values)
    for key, value in parse_overrides(sets):
        _set_path(tree, key, value)
    return RLJobConfig.model_validate(tree)


def train_samples(cfg, n: int) -> list:
    """``n`` training samples of the config's task (the cached dataset, generated on first use)."""
    from ral_dist.data import read_dataset
    from ral_dist.data.cache import ensure_dataset

    samples, _ = read_dataset(ensure_dataset(cfg.data.task, cfg.data.sizes), "train")
    return samples[:n]


def interleave(variants: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
               cpu: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """Wall seconds of each variant per round; rounds run the variants in turn, the first ``warmup`` dropped.

    ``cpu``, when given, receives this process's CPU seconds per variant and round: blind to the time the
    process spent descheduled, the steadier measure on a shared machine (meaningful for in-process variants).
    """
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(warmup + repeats):
        for name, fn in variants.items():
            gc.collect()  # no collection of the previous variant's garbage inside this timing
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
            if round_ >= warmup:
                times[name].append(elapsed)
                if cpu is not None:
                    cpu.setdefault(name, []).append(elapsed_cpu)
    return times


def tree_cpu_seconds(root=None) -> float:
    """CPU seconds (user + system, every thread) so far of ``root`` (a psutil.Process; default this one) and all its
    descendants: a Ray driver's private cluster, or an accelerate launcher's ranks."""
    import psutil

    root = root or psutil.Process()
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def figure(name: str, ratios: dict, goal: str | None = None) -> dict:
    """A figure row from a `spread` of ratios."""
    return {"figure": name, "value": ratios["median"], "min": ratios["min"], "max": ratios["max"],
            "q1": ratios["q1"], "q3": ratios["q3"], "n": ratios["n"], "goal": goal}


def spread(values: list[float]) -> dict:
    """Median, min, max and quartiles of a list of measurements."""
    values = sorted(values)
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {"median": statistics.median(values), "min": values[0], "max": values[-1], "q1": q[0], "q3": q[2],
            "n": len(values)}


def ratio(numerator: list[float], denominator: list[float]) -> dict:
    """Spread of the per-round ratios numerator[i] / denominator[i] (same round, same load)."""
    return spread([a / b for a, b in zip(numerator, denominator, strict=True)])


def environment(**extra) -> dict:
    import torch
    import transformers

    return {"cpu_count": os.cpu_count(), "load_avg_1m_at_end": os.getloadavg()[0], "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "device": "cpu",
            "note": "shared 2-core machine: other jobs ran beside these measurements", **extra}


def goal_met(value: float, goal: str) -> bool:
    """``goal`` is '<= x' or '>= x'."""
    op, bound = goal.split()
    return value <= float(bound) if op == "<=" else value >= float(bound)


def peak_allocated(fn: Callable[[], object]) -> tuple[object, int]:
    """(fn(), the peak bytes the c10 CPU allocator held above its level when fn started). torch.profiler with
    ``profile_memory=True``: every allocation event carries the allocator's running total."""
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    with tempfile.NamedTemporaryFile(suffix=".json") as trace:
        prof.export_chrome_trace(trace.name)
        events = [e["args"] for e in json.loads(Path(trace.name).read_text())["traceEvents"]
                  if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0]
    base = events[0]["Total Allocated"] - events[0]["Bytes"]
    return result, max(e["Total Allocated"] for e in events) - base


def write_result(name: str, result: dict) -> Path:
    """bench/results/<name>.json; ``result["figures"]`` = [{figure, value, goal, ...}] gets ``met`` filled in."""
    for fig in result.get("figures", []):
        if fig.get("goal"):
            fig["met"] = goal_met(fig["value"], fig["goal"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"# wrote {path}")
    return path


def print_table(rows: list[dict], columns: list[str]) -> None:
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    widths = [max(len(c), *(len(cell(r.get(c, ""))) for r in rows)) for c in columns]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for r in rows:
        print("  ".join(cell(r.get(c, "")).rjust(w) for c, w in zip(columns, widths, strict=True)), flush=True)


def print_figures(figures: list[dict]) -> None:
    rows = [{"figure": f["figure"], "median": f["value"], "min": f.get("min", ""), "max": f.get("max", ""),
             "goal": f.get("goal") or "-"} for f in figures]
    print_table(rows, ["figure", "median", "min", "max", "goal"])


def plot_times(name: str, times: dict[str, list[float]], ylabel: str = "seconds", title: str = "") -> Path:
    """bench/results/<name>.png: every repeat of every variant (a box and its points), side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(times), 3.4))
    labels = list(times)
    ax.boxplot([times[k] for k in labels], tick_labels=labels, showfliers=False)
    for i, k in enumerate(labels, start=1):
        ax.scatter([i] * len(times[k]), times[k], s=10, alpha=0.6)
    ax.set_ylabel(ylabel)
    ax.set_title(title or name, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = RESULTS / f"{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def start_ray():
    """A private local Ray cluster on 127.0.0.1 (never the one RAY_ADDRESS names: benchmarks own their cores)."""
    import ray

    from ral_dist.runtime.ray_cluster import connect

    os.environ.pop("RAY_ADDRESS", None)
    connect(num_cpus=os.cpu_count())
    return ray
