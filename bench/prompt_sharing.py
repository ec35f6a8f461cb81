"""One prompt pass per prompt (`ral_dist.models.prompt_sharing`): the work it removes, rollout and learner.

A GRPO batch holds each prompt G times and the prompt is most of each sequence (the tiny job: 86 of 118 tokens,
16 of them visual). Two in-process A/B pairs on the tiny job's per-worker / per-rank shapes (8 prompts × G 8,
32 new tokens, 1 thread), interleaved:

  rollout   `generate` with the shared prefill (each prompt prefilled once, its cache repeated G times) / one
            prefill per sample (``share_prompts=False``); same seed, so the same tokens
  learner   a RAL learner step (64 trajectories, 4 mini-batches, ZeRO 0) whose mini-batches hold whole prompts and
            run each once (`learner.minibatch_grouping: prompt`, the default) / one that draws mini-batches by
            trajectory and runs every sequence whole (``minibatch_grouping: none``, sharing off: the learner before);
            every call is step 0, which also measures the attention term's gradient norm (a second backward), in both

Both ratios are of CPU time (blind to time descheduled on a shared machine) and of wall time.

    .venv/bin/python bench/prompt_sharing.py [--repeats 9] [--quick]
"""

from __future__ import annotations

import argparse

import common
import torch
from learner_step import free_port

from ral_dist.actors.learner import Learner
from ral_dist.actors.rollout_worker import RolloutWorker
from ral_dist.algorithms import group_advantages
from ral_dist.models.generation import generate
from ral_dist.models.prompting import visual_prompt


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=8, help="prompts (one worker's / one rank's share)")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--quick", action="store_true", help="3 repeats")
    args = p.parse_args(argv)
    repeats = 3 if args.quick else args.repeats
    torch.set_num_threads(1)

    cfg = common.tiny_config(learner={"num_ranks": 1, "num_minibatches": 4})
    rc = cfg.rollout
    worker = RolloutWorker(0, cfg.model_dump(mode="json"), threads=1)
    samples = common.train_samples(cfg, args.prompts)
    prompts = [visual_prompt(s, cfg.data) for s in samples]

    def sample(share: bool):
        return lambda: generate(worker.adapter, worker.model, worker.processor, prompts, num_samples=rc.group_size,
                                max_new_tokens=rc.max_new_tokens, temperature=rc.temperature, seed=0,
                                capture_question=True, share_prompts=share)

    trajs = worker._sample(0, samples, list(range(args.prompts)))
    advantages = group_advantages(torch.rand(len(trajs), generator=torch.Generator().manual_seed(0)),
                                  rc.group_size).tolist()
    port = free_port()
    learners = {}
    for name, grouping in (("shared", "prompt"), ("whole", "none")):
        learner_cfg = common.tiny_config(learner={"num_ranks": 1, "num_minibatches": 4,
                                                  "minibatch_grouping": grouping})
        learners[name] = Learner(0, 1, "127.0.0.1", port, learner_cfg.model_dump(mode="json"), threads=1)
    learners["whole"].shares_prompts = False
    step = {"i": 0}

    def learn(name: str):
        def run():
            learners[name].train_step(step["i"], trajs, advantages)
        return run

    cpu: dict[str, list[float]] = {}
    times = common.interleave({"rollout_shared": sample(True), "rollout_whole": sample(False),
                               "learner_shared": learn("shared"), "learner_whole": learn("whole")}, repeats, cpu=cpu)
    figures = [common.figure(f"{part}: one pass per prompt / one per sequence ({clock})",
                             common.ratio(t[f"{part}_shared"], t[f"{part}_whole"]))
               for part in ("rollout", "learner") for clock, t in (("CPU time", cpu), ("wall", times))]
    result = {"setup": {"model": "tiny random Qwen2.5-VL", "prompts": args.prompts, "group": rc.group_size,
                        "max_new_tokens": rc.max_new_tokens, "trajectories": len(trajs),
                        "prompt_tokens": trajs[0].prompt.length, "minibatches": 4, "repeats": repeats,
                        "torch_threads": 1},
              "figures": figures, "seconds": {k: common.spread(v) for k, v in times.items()},
              "cpu_seconds": {k: common.spread(v) for k, v in cpu.items()}, "raw": times, "raw_cpu": cpu,
              "environment": common.environment()}
    print(f"# one prompt pass per prompt: {args.prompts} prompts x G {rc.group_size}, {repeats} interleaved repeats")
    common.print_table([{"variant": k, "s": result["seconds"][k]["median"], "CPU s": result["cpu_seconds"][k]["median"]}
                        for k in times], ["variant", "s", "CPU s"])
    common.print_figures(figures)
    common.plot_times("prompt_sharing", times, title="one prompt pass per prompt (shared) / per sequence (whole)")
    common.write_result("prompt_sharing", result)
    return result


if __name__ == "__main__":
    main()
