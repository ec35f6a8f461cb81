"""Attention maps inside the rollout: the RolloutWorker's rollout with the maps vs the same rollout without them.

  maps     ``RolloutWorker._sample`` as the job runs it: hf ``generate`` (G samples per prompt) with the last
           layer's attention rows (response + question tokens) captured in the sampling passes, log-probs from the
           same passes, then unpadding into trajectories (fp16 maps on the wire)
  no_maps  the same sampling (same seed, so the same tokens) and log-probs without the capture
           (``generate(..., capture=False)``): what a GRPO rollout costs

The worker runs in-process (1 torch thread, as the Ray actor does) on the tiny random Qwen2.5-VL, with the
per-worker batch of the tiny job (16 prompts / 2 workers × G 8, 32 new tokens). Goal: maps / no_maps <= 1.10.

    .venv/bin/python bench/rollout_capture.py [--prompts 4] [--repeats 15] [--quick]
"""

from __future__ import annotations

import argparse

import common
import torch

from ral_dist.actors.rollout_worker import RolloutWorker
from ral_dist.models.generation import generate
from ral_dist.models.prompting import visual_prompt

GOAL = "<= 1.10"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=8, help="prompts per rollout call (one worker's share)")
    p.add_argument("--group", type=int, default=8, help="G")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--quick", action="store_true", help="5 repeats")
    args = p.parse_args(argv)
    repeats = 5 if args.quick else args.repeats

    cfg = common.tiny_config(rollout={"group_size": args.group, "max_new_tokens": args.max_new_tokens})
    worker = RolloutWorker(0, cfg.model_dump(mode="json"), threads=1)
    samples = common.train_samples(cfg, args.prompts)
    groups = list(range(args.prompts))
    rc = cfg.rollout
    step = {"i": 0}
    phases: dict[str, list[dict]] = {"maps": [], "no_maps": []}

    def seed() -> int:  # the worker's own seed rule, so both variants sample the same tokens in a round
        return hash((cfg.run.seed, step["i"], groups[0])) % 2**31

    def with_maps():
        trajs = worker._sample(step["i"], samples, groups)
        assert all(t.behaviour.attention is not None and t.behaviour.attention.shape[0] == len(t.response.ids)
                   for t in trajs)

    def without_maps():
        gen = generate(worker.adapter, worker.model, worker.processor,
                       [visual_prompt(s, cfg.data) for s in samples], num_samples=rc.group_size,
                       max_new_tokens=rc.max_new_tokens, temperature=rc.temperature, top_p=rc.top_p,
                       capture=False, seed=seed())
        assert gen.attention is None
        phases["no_maps"].append(gen.seconds)
        step["i"] += 1  # the next round samples new tokens; both variants of a round share them

    # generate's own phase split (sampling / after sampling) for the maps variant, by wrapping the function it calls
    # (the rollout worker's module imported `generate` from ral_dist.models.generation: patch its own name)
    import ral_dist.actors.rollout_worker as rw

    def recording_generate(*a, **kw):
        gen = generate(*a, **kw)
        phases["maps"].append(gen.seconds)
        return gen

    rw.generate = recording_generate
    torch.manual_seed(0)
    cpu: dict[str, list[float]] = {}
    times = common.interleave({"maps": with_maps, "no_maps": without_maps}, repeats, cpu=cpu)
    warm = len(phases["maps"]) - repeats
    phases = {k: v[warm:] for k, v in phases.items()}

    # after sampling: log-probs and rows assembled from what the passes kept
    scoring = {k: common.spread([s["attention_capture"] for s in v]) for k, v in phases.items()}
    sampling = {k: common.spread([s["generation"] for s in v]) for k, v in phases.items()}
    n_seq = args.prompts * args.group
    figures = [common.figure("rollout with maps / without (wall)", common.ratio(times["maps"], times["no_maps"]), GOAL),
               common.figure("rollout with maps / without (CPU time)", common.ratio(cpu["maps"], cpu["no_maps"]), GOAL)]
    result = {
        "setup": {"model": "tiny random Qwen2.5-VL (text 4 layers, hidden 128)", "engine": "hf",
                  "prompts": args.prompts, "group": args.group, "sequences": n_seq,
                  "max_new_tokens": args.max_new_tokens, "repeats": repeats, "torch_threads": 1},
        "figures": figures,
        "seconds": {k: common.spread(v) for k, v in times.items()},
        "cpu_seconds": {k: common.spread(v) for k, v in cpu.items()},
        "sampling_s": sampling, "after_sampling_s": scoring,
        "maps_share_of_rollout": (common.spread(times["maps"])["median"] - common.spread(times["no_maps"])["median"])
        / common.spread(times["maps"])["median"],
        "raw": times, "raw_cpu": cpu,
        "environment": common.environment(),
    }
    print(f"# rollout of {args.prompts} prompts × G {args.group}, {args.max_new_tokens} new tokens, 1 thread, "
          f"{repeats} interleaved repeats")
    common.print_table([{"variant": k, "rollout s": result["seconds"][k]["median"],
                         "rollout CPU s": result["cpu_seconds"][k]["median"], "sampling s": sampling[k]["median"],
                         "after sampling s": scoring[k]["median"]} for k in times],
                       ["variant", "rollout s", "rollout CPU s", "sampling s", "after sampling s"])
    common.print_figures(figures)
    common.plot_times("rollout_capture", times, title="rollout with / without attention maps")
    common.write_result("rollout_capture", result)
    return result


if __name__ == "__main__":
    main()
