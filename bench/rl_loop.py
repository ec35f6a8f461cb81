"""The whole RL loop: sync vs one_step_off, weight sync per step, and end-to-end samples/s against TRL.

One real `Controller` (placement group, 2 rollout workers, 2 reward workers, 2 DeepSpeed learner ranks over
gloo; the tiny random Qwen2.5-VL, 16 prompts × G 8, 32 new tokens, 4 mini-batches, ZeRO 0: the tiny job's
shapes) runs blocks of ``--steps`` steps, alternating the mode, and between each pair of blocks TRL's
GRPOTrainer runs the same shapes in the bench environment (bench/trl_grpo.py, a subprocess). The first step
of every block is dropped (in one_step_off it has nothing to overlap with; it also carries the block's
warm-up), so every figure comes from steady-state steps. Each step's metrics.jsonl record gives:

  step_s             one step, as the controller records it (rollout wait, rewards, learn, sync, verification)
  sync_s, sync_bytes the weight push to every rollout worker (object store) and the bytes pushed per worker
  samples/s          trajectories trained per second = n_trajectories / step_s (TRL: per generation round)
  CPU s / sample     CPU seconds that every process of ours (driver, Ray's own, every actor) spent per trained
                     sample, between consecutive step records (TRL: its process, or its launch tree, per round).
                     Unlike samples/s it does not depend on how much of the machine other jobs took:
                     2 / (CPU s per sample) bounds what 2 idle cores could give

Ours uses both cores, so TRL gets them too, in each way it offers (``--trl-configs``, each run once per round):
``1thread`` (one process, one torch thread: the former baseline), ``2threads`` (one process, two intra-op
threads) and ``ddp2`` (two data-parallel processes of one thread under ``accelerate launch``, gloo; each generates
and trains on half of every round, the global shapes unchanged). Which is fastest depends on the machine and its
load, so the headline compares with TRL's best, the configuration of highest median samples/s, and every
configuration's ratio is reported beside it.

Figures: one_step_off / sync step time; sync_s / step_s [<= 5 %]; ours / TRL's best samples/s [>= 1.5x] and ours
/ each TRL configuration; TRL / ours CPU s per sample; each the median over repetitions of the ratio within a
round. TRL runs at the niceness Ray gives its workers (15), so both sides have the same CPU priority against
whatever else runs on the machine.

    .venv/bin/python bench/rl_loop.py [--repeats 3] [--steps 6] [--trl-python .venv-bench/bin/python]
        [--trl-configs 1thread 2threads ddp2] [--quick] [--config jobs/configs/small_real_cpu.yaml --name NAME]

``--config PATH`` measures a job config's model and shapes instead of the tiny setup (e.g. the 135M
jobs/configs/small_real_cpu.yaml): our job is that file (``--set`` applied, its checkpoint resolved as the driver
does) and TRL runs bench/trl_grpo.py ``--config`` on the same file with the same ``--set``s. TRL computes only
the exact-match and format rewards: the config's attention reward terms run on our side alone (see
bench/trl_grpo.py and each TRL run's ``reward_terms_left_out``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import common

from ral_dist.runtime.run_dir import RunDir

GOALS = {"sync_share": "<= 0.05", "e2e": ">= 1.5", "e2e_config": ">= 1.3"}  # issue 20: tiny / the 135M model
TRL_CONFIGS = {"1thread": {"processes": 1, "threads": 1}, "2threads": {"processes": 1, "threads": 2},
               "ddp2": {"processes": 2, "threads": 1}}  # bench/trl_grpo.py's --processes and --threads


class ClockedRunDir(RunDir):
    """A run directory that adds to every step record the CPU seconds of this process tree so far (the private
    Ray cluster's processes, every actor included, are this driver's descendants)."""

    def append_metrics(self, record: dict) -> None:
        super().append_metrics(record)
        record["cpu_at_end"] = common.tree_cpu_seconds()  # the controller keeps this dict in the history it returns


def run_trl(python: str, args, cfg, name: str) -> dict:
    """bench/trl_grpo.py with our job's shapes, in the bench environment, in TRL configuration ``name``; its result
    is the last stdout line (rank 0's alone: transformers prints its own summary line before it)."""
    rc = cfg.rollout
    from_file = ["--config", str(args.config), *(f"--set={s}" for s in args.sets)] if args.config else []
    cmd = [python, str(Path(__file__).with_name("trl_grpo.py")), *from_file, "--steps", str(args.trl_steps),
           "--prompts", str(rc.prompts_per_step), "--group", str(rc.group_size), "--max-new-tokens",
           str(rc.max_new_tokens), "--minibatches", str(cfg.learner.num_minibatches),
           *(a for k, v in TRL_CONFIGS[name].items() for a in (f"--{k}", str(v)))]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=common.ROOT,
                         preexec_fn=lambda: os.nice(args.trl_nice))
    if out.returncode:
        raise SystemExit(f"TRL run failed ({' '.join(cmd)}):\n{out.stderr[-3000:]}")
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "config": name}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="(sync block, one_step_off block, TRL run) rounds")
    p.add_argument("--steps", type=int, default=6, help="steps per block (the first is dropped)")
    p.add_argument("--trl-steps", type=int, default=12,
                   help="TRL optimizer steps per run (num_minibatches per round; the first round is dropped)")
    p.add_argument("--trl-python", default=str(common.ROOT / ".venv-bench" / "bin" / "python"),
                   help="python of the bench environment (TRL); '' skips the TRL comparison")
    p.add_argument("--trl-configs", nargs="+", choices=list(TRL_CONFIGS), default=list(TRL_CONFIGS),
                   help="TRL configurations, each run once per round (default: all)")
    # Ray starts its workers at niceness 15 (RAY_worker_niceness); a TRL process at 0 would get ~30x their CPU
    # weight whenever other work competes for the cores, so by default it runs at the same niceness.
    p.add_argument("--trl-nice", type=int, default=int(os.environ.get("RAY_worker_niceness", 15)),
                   help="niceness of the TRL process (default: that of Ray's workers, 15)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override our job's config, e.g. learner.lambda_attn=0 (TRL gets the same shapes)")
    p.add_argument("--name", default="rl_loop", help="result file bench/results/<name>.json (and .png)")
    p.add_argument("--quick", action="store_true", help="2 rounds of 3-step blocks")
    p.add_argument("--config", default=None, help="a job config (YAML) instead of the tiny setup; TRL runs it too")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.steps, args.trl_steps = 2, 3, 8
    args.trl_configs = list(dict.fromkeys(args.trl_configs)) if args.trl_python else []
    if args.trl_python and not Path(args.trl_python).exists():
        raise SystemExit(f"{args.trl_python} not found: run `make setup-bench`, or pass --trl-python '' to skip TRL")

    from ral_dist.actors.controller import Controller

    if args.config:
        from ral_dist.config import RLJobConfig, load_config
        from ral_dist.driver import resolve_student

        # as the tiny setup: no checkpoint or heatmap inside a measured step (--set still wins)
        quiet = ["run.checkpoint_every=10000", "run.heatmap_every=10000", "run.heatmap_prompts=0"]
        cfg = resolve_student(load_config(RLJobConfig, args.config, quiet + args.sets), common.ROOT)
    else:
        cfg = common.tiny_config(args.sets)
    train = common.train_samples(cfg, cfg.data.sizes["train"])
    ray = common.start_ray()
    blocks: list[dict] = []
    trl_runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ral_bench_") as tmp:
        controller = Controller(cfg, ClockedRunDir(Path(tmp) / "run"), train, [])
        try:
            controller.start()
            start = 0
            for round_ in range(args.repeats):
                for mode in ("sync", "one_step_off"):
                    controller.cfg = cfg.model_copy(update={"run": cfg.run.model_copy(
                        update={"mode": mode, "steps": start + args.steps})})
                    history = controller.run_steps(start)
                    blocks.append({"round": round_, "mode": mode, "steps": history[1:],
                                   "first_cpu_at_end": history[0]["cpu_at_end"]})
                    start += args.steps
                for name in args.trl_configs:
                    trl_runs.append({"round": round_, **run_trl(args.trl_python, args, cfg, name)})
                    print(f"[bench] TRL {name} round {round_}: {trl_runs[-1]['samples_per_s']:.2f} samples/s, "
                          f"{trl_runs[-1]['cpu_s_per_sample']:.4f} CPU s/sample", flush=True)
        finally:
            controller.stop()
            ray.shutdown()

    def per_block(mode: str, key: str) -> list[float]:
        """The block's median of ``key`` over its kept steps, for each block of ``mode`` in round order."""
        return [statistics.median(s[key] for s in b["steps"]) for b in blocks if b["mode"] == mode]

    def samples_per_s(mode: str) -> list[float]:
        return [sum(s["n_trajectories"] for s in b["steps"]) / sum(s["step_s"] for s in b["steps"])
                for b in blocks if b["mode"] == mode]

    def cpu_per_sample(mode: str) -> list[float]:
        """Over each block's kept steps: CPU seconds since the dropped first step's record, per sample."""
        return [(b["steps"][-1]["cpu_at_end"] - b["first_cpu_at_end"]) / sum(s["n_trajectories"] for s in b["steps"])
                for b in blocks if b["mode"] == mode]

    step_s = {m: per_block(m, "step_s") for m in ("sync", "one_step_off")}
    sync_share = [s["sync_s"] / s["step_s"] for b in blocks if b["mode"] == "sync" for s in b["steps"]]
    sync_s = [s["sync_s"] for b in blocks for s in b["steps"]]
    figures = []

    def figure(name: str, values: list[float], goal: str | None = None):
        label = f"{name} [{', '.join(args.sets)}]" if args.sets else name
        figures.append(common.figure(label, common.spread(values), goal))

    figure("step time one_step_off / sync", [o / s for o, s in zip(step_s["one_step_off"], step_s["sync"],
                                                                    strict=True)])
    figure("weight sync share of the step (sync mode)", sync_share, GOALS["sync_share"])
    figure("weight sync s per step", sync_s)
    ours = {m: samples_per_s(m) for m in ("sync", "one_step_off")}
    ours_cpu = {m: cpu_per_sample(m) for m in ("sync", "one_step_off")}
    trl = {c: [r["samples_per_s"] for r in trl_runs if r["config"] == c] for c in args.trl_configs}
    trl_cpu = {c: [r["cpu_s_per_sample"] for r in trl_runs if r["config"] == c] for c in args.trl_configs}
    best = max(trl, key=lambda c: statistics.median(trl[c])) if trl else None

    def ours_over(m: str, c: str) -> list[float]:
        return [o / t for o, t in zip(ours[m], trl[c], strict=True)]

    for m in ("sync", "one_step_off") if best else ():
        figure(f"end-to-end samples/s, ours ({m}) / TRL GRPOTrainer's best ({best})", ours_over(m, best),
               GOALS["e2e_config" if args.config else "e2e"])
    for c in trl:
        for m in ("sync", "one_step_off"):
            figure(f"end-to-end samples/s, ours ({m}) / TRL {c}", ours_over(m, c))
        figure(f"CPU s per sample, TRL {c} / ours (sync)",
               [t / o for o, t in zip(ours_cpu["sync"], trl_cpu[c], strict=True)])
    sync_bytes = blocks[0]["steps"][0]["sync_bytes"]
    result = {
        "setup": {"model": cfg.model.checkpoint or "tiny random Qwen2.5-VL", "config": args.config, "prompts": cfg.rollout.prompts_per_step,
                  "group": cfg.rollout.group_size, "max_new_tokens": cfg.rollout.max_new_tokens,
                  "minibatches": cfg.learner.num_minibatches, "zero_stage": cfg.learner.zero_stage,
                  "lambda_attn": cfg.learner.lambda_attn, "learner_ranks": cfg.learner.num_ranks,
                  "rollout_workers": cfg.rollout.num_workers, "reward_workers": cfg.reward.num_workers,
                  "steps_per_block": args.steps, "kept_steps_per_block": args.steps - 1, "rounds": args.repeats,
                  "trl_steps": args.trl_steps, "trl_configs": {c: TRL_CONFIGS[c] for c in args.trl_configs},
                  "trl_best": best, "trl_nice": args.trl_nice,
                  "verify_sync": cfg.run.verify_sync, "overrides": args.sets},
        "figures": figures,
        "step_s": {m: common.spread(v) for m, v in step_s.items()},
        "phase_s": {m: {k: common.spread(per_block(m, k)) for k in ("rollout_s", "rollout_wait_s", "reward_s",
                                                                     "learn_s", "sync_s")}
                    for m in ("sync", "one_step_off")},
        "sync_bytes_per_worker": sync_bytes,
        "sync_bytes_per_step": sync_bytes * cfg.rollout.num_workers,
        # "trl": TRL's best configuration (the only one before configurations were compared)
        "samples_per_s": {**{f"ours_{m}": common.spread(v) for m, v in ours.items()},
                          **({"trl": common.spread(trl[best])} if best else {}),
                          **{f"trl_{c}": common.spread(v) for c, v in trl.items()}},
        "cpu_s_per_sample": {**{f"ours_{m}": common.spread(v) for m, v in ours_cpu.items()},
                             **({"trl": common.spread(trl_cpu[best])} if best else {}),
                             **{f"trl_{c}": common.spread(v) for c, v in trl_cpu.items()}},
        "trl_runs": trl_runs,
        "blocks": blocks,
        "environment": common.environment(),
    }
    print(f"# RL loop: {args.repeats} rounds of {args.steps}-step blocks per mode (first step of each dropped)"
          + (f", TRL {args.trl_steps} steps per run, each of {', '.join(trl)} once per round" if trl else ""))
    common.print_table([{"mode": m, "step s": result["step_s"][m]["median"],
                         "rollout_wait s": result["phase_s"][m]["rollout_wait_s"]["median"],
                         "learn s": result["phase_s"][m]["learn_s"]["median"],
                         "sync s": result["phase_s"][m]["sync_s"]["median"],
                         "samples/s": result["samples_per_s"][f"ours_{m}"]["median"],
                         "CPU s/sample": result["cpu_s_per_sample"][f"ours_{m}"]["median"]} for m in step_s]
                       + [{"mode": f"TRL {c}" + (" (best)" if c == best else ""),
                           "samples/s": result["samples_per_s"][f"trl_{c}"]["median"],
                           "CPU s/sample": result["cpu_s_per_sample"][f"trl_{c}"]["median"]} for c in trl],
                       ["mode", "step s", "rollout_wait s", "learn s", "sync s", "samples/s", "CPU s/sample"])
    print(f"# weight sync: {sync_bytes / 1e6:.2f} MB per rollout worker, {cfg.rollout.num_workers} workers")
    common.print_figures(figures)
    plot = {f"ours {m}": [cfg.rollout.prompts_per_step * cfg.rollout.group_size / s["step_s"]
                          for b in blocks if b["mode"] == m for s in b["steps"]] for m in step_s}
    for c in trl:
        plot[f"TRL {c}"] = [r["samples_per_round"] / s for r in trl_runs if r["config"] == c for s in r["round_s"]]
    common.plot_times(args.name, plot, ylabel="samples/s (per step)", title="end-to-end samples/s per step")
    common.write_result(args.name, result)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
