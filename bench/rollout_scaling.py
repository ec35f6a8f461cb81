"""Rollout throughput with 1 and 2 rollout workers (Ray actors, hf engine, 1 torch thread each).

The same step's prompts (16 prompts × G 8, 32 new tokens: the tiny job's rollout) go to one worker, or split
over two as the controller splits them; each variant's time runs from the calls' launch until every batch is
back in the driver (sampling with the attention maps captured, unpadding, the object store). The two
variants alternate on the same warm actors. Goal: 2 workers / 1 worker >= 1.7x samples/s — on 2 cores that
other jobs share, the second worker can at best get the second core. A third variant, one worker with half the
prompts, tells how far the work is compute-bound: if half the batch takes nearly the full batch's time, a decode
step costs per step rather than per sequence, and splitting the batch over workers cannot halve it.

    .venv/bin/python bench/rollout_scaling.py [--prompts 16] [--group 8] [--repeats 21] [--quick]
"""

from __future__ import annotations

import argparse

import common
import numpy as np

from ral_dist.actors.rollout_worker import RolloutWorker

GOAL = ">= 1.7"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=common.TINY_SYSTEMS["rollout"]["prompts_per_step"])
    p.add_argument("--group", type=int, default=common.TINY_SYSTEMS["rollout"]["group_size"])
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=21)
    p.add_argument("--quick", action="store_true", help="4 repeats")
    args = p.parse_args(argv)
    repeats = 4 if args.quick else args.repeats

    cfg = common.tiny_config(rollout={"prompts_per_step": args.prompts, "group_size": args.group,
                                      "max_new_tokens": args.max_new_tokens})
    samples = common.train_samples(cfg, args.prompts)
    ray = common.start_ray()
    try:
        actor = ray.remote(RolloutWorker).options(num_cpus=cfg.rollout.cpus_per_worker)
        workers = [actor.remote(i, cfg.model_dump(mode="json")) for i in range(2)]
        ray.get([w.get_version.remote() for w in workers])
        step = {"i": 0}
        n_seq = args.prompts * args.group

        def rollout(n_workers: int, n_prompts: int = args.prompts):
            def run():
                chunks = np.array_split(np.arange(n_prompts), n_workers)
                returns = cfg.learner.num_ranks + 1  # the chunk's accounting, then each learner rank's share
                refs = [w.rollout.options(num_returns=returns).remote(step["i"], [samples[g] for g in c], c.tolist())
                        for w, c in zip(workers[:n_workers], chunks, strict=True)]
                got = sum(len(shard) for chunk in refs for shard in ray.get(chunk[1:]))
                assert got == n_prompts * args.group, f"{got} trajectories, expected {n_prompts * args.group}"
                step["i"] += 1
            return run

        times = common.interleave({"1 worker": rollout(1), "2 workers": rollout(2),
                                   "1 worker, half batch": rollout(1, args.prompts // 2)}, repeats)
    finally:
        ray.shutdown()
    # the per-round time ratio 1 worker / 2 workers is the throughput ratio 2 workers / 1 worker
    figures = [common.figure("rollout samples/s, 2 workers / 1", common.ratio(times["1 worker"], times["2 workers"]),
                             GOAL),
               common.figure("rollout time, half batch / full batch (1 worker)",
                             common.ratio(times["1 worker, half batch"], times["1 worker"]))]
    seconds = {k: common.spread(v) for k, v in times.items()}
    result = {
        "setup": {"model": "tiny random Qwen2.5-VL", "engine": "hf", "prompts": args.prompts, "group": args.group,
                  "max_new_tokens": args.max_new_tokens, "repeats": repeats, "torch_threads_per_worker": 1},
        "figures": figures,
        "seconds": seconds,
        "samples_per_s": {k: n_seq / (2 if "half" in k else 1) / v["median"] for k, v in seconds.items()},
        "raw": times,
        "environment": common.environment(),
    }
    print(f"# rollout of {args.prompts} prompts × G {args.group}, {args.max_new_tokens} new tokens, "
          f"{repeats} interleaved repeats")
    common.print_table([{"variant": k, "step s": seconds[k]["median"], "samples/s": result["samples_per_s"][k]}
                        for k in times], ["variant", "step s", "samples/s"])
    common.print_figures(figures)
    common.plot_times("rollout_scaling", times, title="rollout step, 1 vs 2 workers")
    common.write_result("rollout_scaling", result)
    return result


if __name__ == "__main__":
    main()
