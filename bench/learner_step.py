"""Learner step: RAL (lambda_attn 1) vs GRPO (lambda_attn 0) on the same batch, mini-batches and ZeRO stage.

Three `Learner`s in one process (one rank each, gloo world of 1, DeepSpeed ZeRO ``--zero-stage``), built from
the same seed, train in turn on the same rollout batch (trajectories sampled once by an in-process
`RolloutWorker` with the same initial weights, so p_old is the behaviour policy's):

  ral_norm     lambda_attn = 1 on a step that also logs the attention term's own gradient norm (RAL.md §3: an
               extra ``autograd.grad`` through the graph; ``learner.attn_grad_norm_every: 1``)
  ral          lambda_attn = 1 on the steps between those measurements
  grpo         lambda_attn = 0: plain GRPO, as the job runs it: no attention rows anywhere (the trajectories carry
               none, the learner captures none; `RLJobConfig.rollout_captures` / `learner_captures`)

The job's default measures the norm on every 10th step (``learner.attn_grad_norm_every``), so its RAL learner
costs (9 ral + 1 ral_norm) / 10 per step: the figure "RAL at the default" is that mix of each round's times.
One rank gets the per-rank shard of the tiny job (64 trajectories of 32 tokens, 4 mini-batches, 1 thread).
With one rank the gradient all-reduce, equal for every variant, is left out, so the ratios are an upper bound
on the 2-rank job's. Goal: ral / grpo <= 1.15.

    .venv/bin/python bench/learner_step.py [--zero-stage 0] [--repeats 15] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import socket

import common
import torch

from ral_dist.actors.learner import Learner
from ral_dist.actors.rollout_worker import RolloutWorker
from ral_dist.algorithms import group_advantages
from ral_dist.messages import LearnerStepStats

GOAL = "<= 1.15"
VARIANTS = {"ral_norm": 1.0, "ral": 1.0, "grpo": 0.0}
NORM_EVERY = {"ral_norm": 1, "ral": 10**9, "grpo": 10**9}  # 10**9: measured on the warm-up step 0 only
DEFAULT_NORM_EVERY = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=8, help="prompts in the batch (the tiny job's per-rank share)")
    p.add_argument("--zero-stage", type=int, default=0, choices=[0, 1, 2])
    p.add_argument("--minibatches", type=int, default=4)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--quick", action="store_true", help="4 repeats")
    args = p.parse_args(argv)
    repeats = 4 if args.quick else args.repeats

    port = free_port()
    learners, configs = {}, {}
    for name, lam in VARIANTS.items():
        cfg = common.tiny_config(learner={"num_ranks": 1, "zero_stage": args.zero_stage, "lambda_attn": lam,
                                          "num_minibatches": args.minibatches,
                                          "attn_grad_norm_every": NORM_EVERY[name]})
        learners[name] = Learner(0, 1, "127.0.0.1", port, cfg.model_dump(mode="json"), threads=1)
        configs[name] = cfg

    cfg = configs["ral"]  # a RAL rollout: the trajectories carry the behaviour policy's rows (p_old)
    worker = RolloutWorker(0, cfg.model_dump(mode="json"), threads=1)
    samples = common.train_samples(cfg, args.prompts)
    trajs = worker._sample(0, samples, list(range(args.prompts)))
    G = cfg.rollout.group_size
    rewards = torch.Generator().manual_seed(0)
    advantages = group_advantages(torch.rand(len(trajs), generator=rewards), G).tolist()
    bare = [dataclasses.replace(t, behaviour=dataclasses.replace(t.behaviour, attention=None, question_attention=None))
            for t in trajs]  # what a GRPO job's rollout sends
    inputs = {k: bare if VARIANTS[k] == 0 else trajs for k in VARIANTS}
    stats: dict[str, list[LearnerStepStats]] = {k: [] for k in VARIANTS}
    step = {k: 0 for k in VARIANTS}

    def train(name):
        def run():
            stats[name].append(learners[name].train_step(step[name], inputs[name], advantages))
            step[name] += 1
        return run

    cpu: dict[str, list[float]] = {}
    times = common.interleave({k: train(k) for k in VARIANTS}, repeats, cpu=cpu)
    for t in (times, cpu):  # the default job's step: the measurement on one step in DEFAULT_NORM_EVERY
        t["ral_default"] = [(a * (DEFAULT_NORM_EVERY - 1) + b) / DEFAULT_NORM_EVERY
                            for a, b in zip(t["ral"], t["ral_norm"], strict=True)]
    figures = [common.figure(f"learner step RAL / GRPO, {label} (ZeRO {args.zero_stage}, {clock})",
                             common.ratio(t[name], t["grpo"]), GOAL)
               for name, label in (("ral_default", f"grad norm every {DEFAULT_NORM_EVERY}th step (default)"),
                                   ("ral_norm", "grad norm every step"), ("ral", "no grad-norm measurement"))
               for clock, t in (("wall", times), ("CPU time", cpu))]
    last = {k: v[-1] for k, v in stats.items()}
    result = {
        "setup": {"model": "tiny random Qwen2.5-VL", "ranks": 1, "zero_stage": args.zero_stage,
                  "trajectories": len(trajs), "tokens": int(sum(len(t.response.ids) for t in trajs)),
                  "minibatches": args.minibatches, "ppo_epochs": 1, "beta": cfg.learner.beta,
                  "repeats": repeats, "torch_threads": 1},
        "figures": figures,
        "seconds": {k: common.spread(v) for k, v in times.items()},
        "cpu_seconds": {k: common.spread(v) for k, v in cpu.items()},
        "grad_norm_share_of_ral_norm_step_cpu": 1 - common.ratio(cpu["ral"], cpu["ral_norm"])["median"],
        "last_stats": {k: {s: getattr(v, s) for s in ("loss", "attn_loss", "attn_jsd", "attn_grad_norm", "updates")}
                       for k, v in last.items()},
        "raw": times, "raw_cpu": cpu,
        "environment": common.environment(),
    }
    print(f"# learner step: {len(trajs)} trajectories, {args.minibatches} mini-batches, ZeRO {args.zero_stage}, "
          f"1 rank, 1 thread, {repeats} interleaved repeats")
    common.print_table([{"variant": k, "step s": result["seconds"][k]["median"],
                         "step CPU s": result["cpu_seconds"][k]["median"], "attn_loss": last[k].attn_loss,
                         "attn_grad_norm": last[k].attn_grad_norm} for k in VARIANTS],
                       ["variant", "step s", "step CPU s", "attn_loss", "attn_grad_norm"])
    common.print_figures(figures)
    name = f"learner_step_zero{args.zero_stage}"
    common.plot_times(name, times, title=f"learner step, ZeRO {args.zero_stage}")
    common.write_result(name, result)
    return result


if __name__ == "__main__":
    main()
