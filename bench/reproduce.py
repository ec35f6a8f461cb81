"""The small-scale reproduction (issue 10, RAL.md §6): GRPO vs RAL, on-policy KD vs KD + attention distillation.

    python bench/reproduce.py [--config jobs/configs/tiny_cpu.yaml] [--steps 100] [--seeds 0 1 2]
                              [--variants grpo ral_1 ral_5_layer0 …] [--out runs/reproduction] [--name reproduction]

Every variant starts from the same SFT checkpoint with the same budget of steps; each (variant, seed) is one real
job (`jobs/ral_grpo.py` or `jobs/ral_distill.py` on a private local Ray cluster) followed by `jobs/eval.py` on the
val and test splits of its final checkpoint. Finished runs are reused (their eval JSON exists), so an interrupted
sweep continues where it stopped. Writes bench/results/NAME.json, learning curves (bench/results/NAME_curves.png)
and prints the summary table (mean ± std over seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
RAL_CONFIG = "jobs/configs/tiny_cpu.yaml"  # --config: the harder task is jobs/configs/tiny_grid3_cpu.yaml
DISTILL_CONFIG = "jobs/configs/distill_tiny_cpu.yaml"
ATTENTION_REWARDS = "reward.weights={task: 0.8, format: 0.1, sparsity: 0.05, consistency: 0.05}"

# name -> overrides of the RL job's config (--config)
RL_VARIANTS: dict[str, list[str]] = {
    "grpo": ["learner.lambda_attn=0"],
    "ral_0.5": ["learner.lambda_attn=0.5"],
    "ral_1": ["learner.lambda_attn=1.0"],
    "ral_5": ["learner.lambda_attn=5.0"],
    "grpo_attn_rewards": ["learner.lambda_attn=0", ATTENTION_REWARDS],
    "ral_1_attn_rewards": ["learner.lambda_attn=1.0", ATTENTION_REWARDS],
}
# ral_<lambda>_layer<k>: the attention policy at decoder layer k (the one with the most attention on target after
# SFT: `jobs/eval.py --per-layer`), e.g. ral_5_layer0 (issue 22)
LAYER_VARIANT = re.compile(r"ral_(\d+(?:\.\d+)?)_layer(\d+)")
# name -> overrides of the distillation job's config (DISTILL_CONFIG; the 2x2 task only)
DISTILL_VARIANTS: dict[str, list[str]] = {"kd": ["distill.gamma_attn=0"], "kd_attn": ["distill.gamma_attn=0.5"]}


def variant(name: str, config: str) -> tuple[str, str, list[str]]:
    """(job script, config, overrides) of a variant name."""
    if name in DISTILL_VARIANTS:
        return "jobs/ral_distill.py", DISTILL_CONFIG, DISTILL_VARIANTS[name]
    if name in RL_VARIANTS:
        return "jobs/ral_grpo.py", config, RL_VARIANTS[name]
    m = LAYER_VARIANT.fullmatch(name)
    if m is None:
        raise SystemExit(f"unknown variant {name!r}: one of {[*RL_VARIANTS, *DISTILL_VARIANTS]} or ral_<lambda>_layer<k>")
    return "jobs/ral_grpo.py", config, [f"learner.lambda_attn={m[1]}", f"attention.layers=[{m[2]}]"]


EVAL_KEYS = ("accuracy", "format_rate", "attention_on_target", "sparsity", "consistency")
CURVE_KEYS = ("accuracy", "reward_mean", "attention_on_target", "attn_jsd", "attn_grad_norm", "attn_grad_share",
              "kl", "teacher_attn_jsd")


def run(cmd: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env={**os.environ,
                              "RAY_ADDRESS": ""})  # a private local cluster per run, never a shared one
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")


def evaluate(checkpoint: Path, config: str, out: Path, log: Path, limit: int | None) -> dict:
    """Greedy val and test accuracy of a checkpoint on ``config``'s task, with its attention on target at every
    decoder layer (``per_layer``)."""
    report = {}
    for split in ("val", "test"):
        path = out / f"eval_{split}.json"
        if not path.exists():
            run([sys.executable, "jobs/eval.py", "--checkpoint", str(checkpoint), "--split", split,
                 "--json", str(path), "--config", config, "--per-layer"] + (["--limit", str(limit)] if limit else []),
                log)
        got = json.loads(path.read_text())
        report[split] = {k: got[k] for k in EVAL_KEYS} | {
            "per_layer": {layer: kinds["image"]["attention_on_target"] for layer, kinds in got["per_layer"].items()}}
    return report


def one_run(name: str, config: str, seed: int, steps: int, out_root: Path, limit: int | None) -> dict:
    script, config, overrides = variant(name, config)
    out = out_root / f"{name}-s{seed}"
    log = out_root / "logs" / f"{name}-s{seed}.log"
    t0 = time.time()
    if not (out / "eval_test.json").exists():
        if not (out / "checkpoints").exists() or not list((out / "checkpoints").glob(f"step_{steps - 1:06d}")):
            args = [sys.executable, script, "--config", config, "--steps", str(steps), "--run-dir", str(out),
                    "--set", f"run.seed={seed}", "--set", f"run.checkpoint_every={steps}",
                    "--set", "learner.attn_grad_norm_every=1"]  # the term's gradient norm on every step's curve
            for o in overrides:
                args += ["--set", o]
            run(args, log)
    wall = time.time() - t0
    checkpoint = out / "checkpoints" / f"step_{steps - 1:06d}"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("kind", "step") == "step"]  # not the validation rows (run.val_every)
    result = {"variant": name, "seed": seed, "run_dir": str(out), "steps": len(rows),
              "train_s": float(sum(r["step_s"] for r in rows)),
              "curves": {k: [r.get(k) for r in rows] for k in CURVE_KEYS},
              **evaluate(checkpoint, config, out, log, limit)}
    result["wall_s_this_call"] = wall
    return result


def start_checkpoint(config: str) -> Path:
    """The SFT checkpoint every RL variant starts from (resolved the way the job resolves it)."""
    sys.path.insert(0, str(ROOT))  # ral_dist of this checkout, also when it is not installed
    from ral_dist.config import RLJobConfig, load_config
    from ral_dist.sft.driver import resolve_sft

    return Path(resolve_sft(load_config(RLJobConfig, ROOT / config).model.checkpoint, ROOT))


def _mean_std(values: list[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def _difference(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean of ``a`` minus mean of ``b`` and the standard error of that difference (unpaired)."""
    (ma, sa), (mb, sb) = _mean_std(a), _mean_std(b)
    if min(len(a), len(b)) < 2:  # one seed has no spread: no standard error
        return ma - mb, float("nan")
    return ma - mb, float(np.sqrt(sa**2 / len(a) + sb**2 / len(b)))


def _grad_share(run: dict) -> float:
    """The attention term's share of the update's gradient, mean over the run's measured steps (NaN: not RAL)."""
    shares = [v for v in run["curves"].get("attn_grad_share", []) if v is not None and np.isfinite(v)]
    return float(np.mean(shares)) if shares else float("nan")


def summarize(results: list[dict], baseline: dict) -> tuple[dict, str]:
    """Mean ± std over seeds per variant; against GRPO (where it ran) the difference of the means ± its standard
    error; the attention on target at the last layer and at layer 0; the attention term's gradient share."""
    summary: dict = {"sft_start": baseline}
    lines = ["| variant | seeds | val acc | test acc | val Δ vs GRPO ± SE | test Δ vs GRPO ± SE | val on-target (last) "
             "| val on-target (layer 0) | attn grad share | train min/run |",
             "|---|---|---|---|---|---|---|---|---|---|",
             f"| SFT start | – | {baseline['val']['accuracy']:.3f} | {baseline['test']['accuracy']:.3f} | – | – | "
             f"{baseline['val']['attention_on_target']:.3f} | {baseline['val']['per_layer']['0']:.3f} | – | – |"]
    grpo = [r for r in results if r["variant"] == "grpo"]
    for name in dict.fromkeys(r["variant"] for r in results):
        runs = [r for r in results if r["variant"] == name]
        entry = {f"{split}_{k}": _mean_std([r[split][k] for r in runs]) for split in ("val", "test")
                 for k in EVAL_KEYS}
        entry["val_on_target_layer0"] = _mean_std([r["val"]["per_layer"]["0"] for r in runs])
        entry["attn_grad_share"] = _mean_std([_grad_share(r) for r in runs])
        entry["seeds"] = [r["seed"] for r in runs]
        entry["train_min_per_run"] = float(np.mean([r["train_s"] for r in runs]) / 60)
        spread = len(runs) > 1  # one seed has no spread to show
        cells = [f"{entry[k][0]:.3f}" + (f" ± {entry[k][1]:.3f}" if spread else "") for k in (
                 "val_accuracy", "test_accuracy")]
        for split in ("val", "test"):
            if grpo and name != "grpo":
                entry[f"{split}_vs_grpo"] = _difference([r[split]["accuracy"] for r in runs],
                                                        [r[split]["accuracy"] for r in grpo])
                diff, se = entry[f"{split}_vs_grpo"]
                cells.append(f"{diff:+.3f}" + (f" ± {se:.3f}" if np.isfinite(se) else ""))
            else:
                cells.append("–")
        cells += [f"{entry[k][0]:.3f}" for k in ("val_attention_on_target", "val_on_target_layer0")]
        share = entry["attn_grad_share"][0]
        cells.append(f"{share:.4f}" if np.isfinite(share) else "–")
        summary[name] = entry
        lines.append(f"| {name} | {len(runs)} | {' | '.join(cells)} | {entry['train_min_per_run']:.1f} |")
    return summary, "\n".join(lines)


def plot(results: list[dict], path: Path, window: int = 10) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def curve(r: dict, key: str) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in r["curves"][key]], dtype=float)

    # a panel per curve that some run has (teacher_attn_jsd only with a distillation variant)
    keys = [k for k in ("accuracy", "attention_on_target", "attn_jsd", "attn_grad_share", "kl", "teacher_attn_jsd")
            if any(not np.isnan(curve(r, k)).all() for r in results)]
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4))
    names = list(dict.fromkeys(r["variant"] for r in results))
    colours = dict(zip(names, plt.cm.tab10.colors, strict=False))  # one colour per variant in every panel
    for name in names:
        for ax, key in zip(axes, keys, strict=True):
            per_seed = [curve(r, key) for r in results if r["variant"] == name]
            if all(np.isnan(c).all() for c in per_seed):  # e.g. teacher_attn_jsd of an RL variant
                continue
            n = min(len(c) for c in per_seed)
            mean = np.nanmean(np.stack([c[:n] for c in per_seed]), axis=0)
            smooth = np.convolve(mean, np.ones(window) / window, mode="valid") if n >= window else mean
            ax.plot(np.arange(len(smooth)) + (n - len(smooth)), smooth, label=name, color=colours[name])
            ax.set_title(f"train {key} (mean over seeds, {window}-step avg)")
            ax.set_xlabel("step")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)  # one plot per finished run: a long sweep would otherwise keep every figure open


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--config", default=RAL_CONFIG, help="the RL variants' job config (its SFT start is every "
                   "variant's)")
    p.add_argument("--variants", nargs="+", default=[*RL_VARIANTS, *DISTILL_VARIANTS])
    p.add_argument("--out", default=str(ROOT / "runs" / "reproduction"))
    p.add_argument("--eval-limit", type=int, default=None, help="first N samples of each split only")
    p.add_argument("--name", default="reproduction", help="bench/results/NAME.json and NAME_curves.png")
    args = p.parse_args(argv)
    out_root = Path(args.out)
    t0 = time.time()

    baseline = evaluate(start_checkpoint(args.config), args.config, out_root / "sft_start", out_root / "logs" / "sft_start.log",
                        args.eval_limit)
    results = []
    for seed in args.seeds:  # seed-major: a cut-short sweep still has every variant at its first seeds
        for name in args.variants:
            r = one_run(name, args.config, seed, args.steps, out_root, args.eval_limit)
            results.append(r)
            print(f"[reproduce] {name} seed {seed}: val acc {r['val']['accuracy']:.3f} test acc "
                  f"{r['test']['accuracy']:.3f} on-target {r['val']['attention_on_target']:.3f} "
                  f"({r['train_s'] / 60:.1f} min of training)", flush=True)
            summary, table = summarize(results, baseline)  # written after every run: a cut sweep keeps its part
            RESULTS.mkdir(parents=True, exist_ok=True)
            (RESULTS / f"{args.name}.json").write_text(json.dumps(
                {"steps": args.steps, "seeds": args.seeds, "variants": args.variants, "summary": summary,
                 "runs": results, "train_s_all_runs": sum(r["train_s"] for r in results),
                 # a rerun reuses finished runs, so this invocation's wall can be far below the sweep's
                 "wall_s_this_call": time.time() - t0}, indent=1))
            plot(results, RESULTS / f"{args.name}_curves.png")
    print(table)


if __name__ == "__main__":
    main()
