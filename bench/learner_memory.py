"""Learner peak memory at a fixed mini-batch against ``learner.micro_batch_tokens`` and gradient checkpointing.

One `Learner` per variant (one gloo rank, DeepSpeed ZeRO-0, fp32, 1 thread) on the 62M-parameter random
Qwen2.5-VL of bench/memory_plan_check.py (vision tower frozen, as the paper trains), all on the same rollout batch:
2 prompts of one 448 px image (256 visual tokens) x G 4 responses of up to 128 tokens, sampled once by an
in-process `RolloutWorker` with the same weights, trained as one mini-batch. Each learner takes a warm-up step (DeepSpeed's gradient buffers and AdamW's moments exist from then
on), then its second step is measured: the peak bytes the CPU allocator held above its level before that step
(`common.peak_allocated`), i.e. what the update itself needs on top of the weights and optimizer state. The budget
is in units of the longest sequence L: None (the whole mini-batch in one forward), 4 L, 2 L, 1 L (one sequence per
forward). The updates are equal whatever the budget (tests/test_learner_scale.py pins it to 1e-6); only the memory
changes.

    .venv/bin/python bench/learner_memory.py [--quick]
"""

from __future__ import annotations

import argparse
import functools
import gc
import socket

import common
import torch
from memory_plan_check import MID_SIZE

from ral_dist.actors.learner import Learner
from ral_dist.actors.rollout_worker import RolloutWorker
from ral_dist.algorithms import group_advantages

PROMPTS, GROUP, NEW_TOKENS, CANVAS = 2, 4, 128, 448
SEQS_PER_FORWARD = (None, 4, 2, 1)  # the budget in longest sequences; None: no budget


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(micro_batch_tokens: int | None, checkpointing: bool, model: dict):
    return common.tiny_config(
        model={"tiny": model, "freeze_vision": True, "gradient_checkpointing": checkpointing},
        data={"task": {"seed": 0, "canvas": CANVAS, "grid": 2}, "sizes": {"train": 16, "val": 4, "test": 4}},
        rollout={"group_size": GROUP, "max_new_tokens": NEW_TOKENS},
        learner={"num_ranks": 1, "num_minibatches": 1, "ppo_epochs": 1, "beta": 0.04, "lambda_attn": 1.0,
                 "micro_batch_tokens": micro_batch_tokens, "attn_grad_norm_every": 10**9})


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the tiny model instead of the 62M one")
    args = p.parse_args(argv)
    model = {} if args.quick else MID_SIZE
    torch.set_num_threads(1)

    base = config(None, False, model)
    worker = RolloutWorker(0, base.model_dump(mode="json"), threads=1)
    trajs = worker._sample(0, common.train_samples(base, PROMPTS), list(range(PROMPTS)))
    del worker
    advantages = group_advantages(torch.linspace(0, 1, len(trajs)), GROUP).tolist()
    longest = max(t.prompt.length + len(t.response.ids) for t in trajs)
    tokens = sum(t.prompt.length + len(t.response.ids) for t in trajs)

    port, rows = free_port(), []
    for checkpointing in (False, True):
        for seqs in SEQS_PER_FORWARD:
            budget = None if seqs is None else seqs * longest
            learner = Learner(0, 1, "127.0.0.1", port, config(budget, checkpointing, model).model_dump(mode="json"))
            learner.train_step(0, trajs, advantages)  # warm-up: gradient buffers and AdamW's moments
            stats, peak = common.peak_allocated(functools.partial(learner.train_step, 1, trajs, advantages))
            rows.append({"checkpointing": checkpointing, "seqs_per_forward": seqs or len(trajs),
                         "micro_batch_tokens": budget, "peak_MB": peak / 1e6, "loss": stats.loss})
            del learner
            gc.collect()

    common.print_table(rows, ["checkpointing", "micro_batch_tokens", "seqs_per_forward", "peak_MB", "loss"])
    whole = {r["checkpointing"]: r["peak_MB"] for r in rows if r["micro_batch_tokens"] is None}
    figures = [{"figure": f"peak, one sequence per forward / whole mini-batch (checkpointing {c})",
                "value": next(r["peak_MB"] for r in rows if r["checkpointing"] == c
                              and r["seqs_per_forward"] == 1) / whole[c], "goal": "< 1"} for c in (False, True)]
    figures.append({"figure": "peak, checkpointing on / off, whole mini-batch", "value": whole[True] / whole[False],
                    "goal": "< 1"})
    common.print_figures(figures)
    plot(rows)
    result = {"rows": rows, "figures": figures, "trajectories": len(trajs), "longest_sequence": longest,
              "mini_batch_tokens": tokens, "model": "tiny" if args.quick else "mid (62M, bench/memory_plan_check.py)",
              "environment": common.environment()}
    common.write_result("learner_memory_quick" if args.quick else "learner_memory", result)
    return result


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for checkpointing, marker in ((False, "o"), (True, "s")):
        mine = [r for r in rows if r["checkpointing"] == checkpointing]
        ax.plot([r["seqs_per_forward"] for r in mine], [r["peak_MB"] for r in mine], marker=marker,
                label=f"gradient checkpointing {'on' if checkpointing else 'off'}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequences per forward (micro_batch_tokens / longest sequence)")
    ax.set_ylabel("step peak above weights, MB")
    ax.set_title("Learner memory at a fixed mini-batch of 8 sequences", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(common.RESULTS / "learner_memory.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
