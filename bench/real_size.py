"""The systems figures at the real size: SmolLM2-135M-Instruct in SmolVLM's architecture, fp32, 1 thread.

Every other systems benchmark runs a 1M-parameter random model, where weights are nothing and overheads are
everything. This one runs jobs/configs/small_real_cpu.yaml (``model.checkpoint: small-real:smollm2-135m``, the
135M-parameter real text tower; built and cached by `make small-real`) on the config's own shapes: one rollout
worker's share of a step (prompts_per_step / num_workers prompts × G, max_new_tokens) and the same trajectories as
one learner rank's share (ZeRO stage from the config, gloo world of 1, 1 torch thread, as the job's actors). All
in-process variants run interleaved in one loop (`common.interleave`: every round runs each once; a ratio is the
median of the per-round ratios, min–max beside it):

  1  rollout with maps / without: the `RolloutWorker`'s own ``_sample`` (the last layer's rows captured in the
     sampling passes, question rows, trajectories with fp16 maps) vs the same ``generate(..., capture=False)``,
     same seed so the same tokens (bench/rollout_capture.py's method). With maps ``generate`` runs one decoding
     pass more (a token's row exists once it is fed back): 1/24 more passes when a row reaches max_new_tokens.
     Goal <= 1.05 (CPU time and wall).
  2  learner step RAL / GRPO: three `Learner`s trained in turn on the same batch (bench/learner_step.py's method):
     ral_norm (lambda_attn 1, the attention term's grad norm measured), ral (lambda_attn 1, not measured) and grpo
     (lambda_attn 0: no attention rows anywhere, its trajectories stripped of theirs as a GRPO rollout sends them).
     "At the default" is 9 ral + 1 ral_norm per 10 steps (``learner.attn_grad_norm_every``). Goal <= 1.15.
  3  weight sync: the job's path in-process: learner rank 0's ``state_dict()`` (the live weights as a `WireState`)
     and the one copy Ray's object store makes of it (pickle 5 out of band, each buffer copied once), then the worker's
     ``update_weights`` (on the CPU the model takes the handed tensors: no copy; with ``run.verify_sync`` one digest,
     the held tensors being the handed ones). Left out: Ray's own bookkeeping of the object, rank 1's own
     ``state_dict()`` and the second worker loading beside the first. Seconds
     and bytes per step; its share of an estimated sync-mode step (rollout with maps + learner at the default +
     sync of the same round); and against the memory-bandwidth floor, one ``Tensor.copy_`` of as many bytes.
     ``--job-steps`` also runs the job itself first (a private Ray cluster: 2 workers, 2 ranks; run before this
     process holds any model, for memory) and reads ``sync_s``, ``step_s`` and ``sync_bytes`` from its step
     records (the first step dropped): the share with everything in. Goal: share <= 5 %.
  4  peak learner memory per rank: the RSS high-water mark (``ru_maxrss``) of a fresh process that builds one
     Learner (policy, frozen reference, DeepSpeed and AdamW states) and takes two steps on the batch (step 0
     measures the attention grad norm, as the job's does), RAL and GRPO; also its RSS once built. One rank holds
     all of ZeRO's partitions: an upper bound on a rank of the 2-rank job.
  5  tokens/s of generation: our ``generate`` with maps on, as the rollout calls it, vs plain transformers
     ``model.generate`` on the same prompts (same seed and sampling distribution, so the same tokens; its own EOS
     stop, nothing captured, no log-probs kept): the floor we cannot beat on this engine. Both timed from the
     prompts' encoding to the token ids; tokens: the response tokens up to and including the first EOS.

    .venv/bin/python bench/real_size.py [--prompts N] [--repeats 7] [--job-steps 5] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import pickle
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import psutil
import torch
from learner_step import DEFAULT_NORM_EVERY, NORM_EVERY, VARIANTS, free_port
from transformers import GenerationConfig

from ral_dist.actors.learner import Learner
from ral_dist.actors.rollout_worker import RolloutWorker
from ral_dist.algorithms import group_advantages
from ral_dist.config import RLJobConfig, load_config
from ral_dist.driver import resolve_student
from ral_dist.models.generation import eos_mask, generate
from ral_dist.models.prompting import visual_prompt

CONFIG = common.ROOT / "jobs" / "configs" / "small_real_cpu.yaml"
GOALS = {"rollout": "<= 1.05", "learner": "<= 1.15", "sync_share": "<= 0.05"}


def job_config(args) -> RLJobConfig:
    """The config file with ``--set`` overrides, its ``small-real:`` checkpoint resolved as the driver does."""
    return resolve_student(load_config(RLJobConfig, args.config, args.sets), common.ROOT)


def learner_config(cfg: RLJobConfig, name: str, norm_every: int | None = None) -> dict:
    """One rank of the job's learner as variant ``name`` of bench/learner_step.py (``norm_every``: its own
    attention grad-norm cadence instead of the variant's)."""
    learner = cfg.learner.model_copy(update={"num_ranks": 1, "lambda_attn": VARIANTS[name],
                                             "attn_grad_norm_every": norm_every or NORM_EVERY[name]})
    return cfg.model_copy(update={"learner": learner}).model_dump(mode="json")


def strip_maps(trajs: list) -> list:
    """The trajectories as a GRPO rollout sends them: no attention rows."""
    return [dataclasses.replace(t, behaviour=dataclasses.replace(t.behaviour, attention=None, question_attention=None))
            for t in trajs]


def gigabytes(n: float) -> float:
    return n / 1e9


# ---------------------------------------------------------------------------------------------- 4: memory
def memory_child(args) -> None:
    """In a fresh process: build one Learner, two steps; print its RSS once built and its high-water mark."""
    cfg = job_config(args)
    trajs, advantages = torch.load(args.batch, weights_only=False)
    name = args.memory_child
    learner = Learner(0, 1, "127.0.0.1", free_port(), learner_config(cfg, name, cfg.learner.attn_grad_norm_every))
    built = psutil.Process().memory_info().rss
    for step in range(2):  # the job's cadence: step 0 measures the attention grad norm (RAL), step 1 does not
        learner.train_step(step, trajs if VARIANTS[name] else strip_maps(trajs), advantages)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"variant": name, "rss_built": built, "peak_rss": peak}))


def peak_memory(args, trajs: list, advantages: list[float]) -> dict[str, dict]:
    """`memory_child` of each variant, one after the other, on the batch sampled here."""
    with tempfile.NamedTemporaryFile(suffix=".pt") as batch:
        torch.save((trajs, advantages), batch.name)
        out = {}
        for name in ("ral", "grpo"):
            cmd = [sys.executable, __file__, "--memory-child", name, "--batch", batch.name, "--config",
                   str(args.config), *(f"--set={s}" for s in args.sets)]
            run = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if run.returncode:
                raise SystemExit(f"memory child {name} failed:\n{run.stderr[-3000:]}")
            out[name] = json.loads(run.stdout.strip().splitlines()[-1])
    return out


# ---------------------------------------------------------------------------------------------- 3: the job itself
def job_run(args, cfg: RLJobConfig) -> list[dict]:
    """The step records of a short real run (sync mode) on a private Ray cluster, the first step dropped."""
    from ral_dist.actors.controller import Controller
    from ral_dist.runtime.run_dir import RunDir

    cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"steps": args.job_steps, "mode": "sync"})})
    train = common.train_samples(cfg, cfg.data.sizes["train"])
    ray = common.start_ray()
    with tempfile.TemporaryDirectory(prefix="ral_bench_") as tmp:
        controller = Controller(cfg, RunDir(Path(tmp) / "run"), train, [])  # no heatmap prompts
        try:
            controller.start()
            history = controller.run_steps(0)  # the last step's checkpoint comes after its record
        finally:
            controller.stop()
            ray.shutdown()
    return history[1:]


# ---------------------------------------------------------------------------------------------- 1, 2, 3, 5
def in_process(cfg: RLJobConfig, worker: RolloutWorker, samples: list, trajs: list, advantages: list[float],
               repeats: int) -> dict:
    """Every in-process variant, interleaved: the rollouts (1, 5), the learner steps (2), the sync and its floor (3)."""
    rc = cfg.rollout
    groups = list(range(len(samples)))
    prompts = [visual_prompt(s, cfg.data) for s in samples]
    port = free_port()
    learners = {name: Learner(0, 1, "127.0.0.1", port, learner_config(cfg, name), threads=1) for name in VARIANTS}
    inputs = {name: trajs if VARIANTS[name] else strip_maps(trajs) for name in VARIANTS}
    step = {"rollout": 0, **dict.fromkeys(VARIANTS, 0), "sync": 0}
    gen_log: dict[str, list] = {"ours": [], "plain": []}  # (tokens, seconds) per call
    sync_parts: dict[str, list[float]] = {"state_dict": [], "update_weights": [], "digests": []}
    eos = worker.adapter.eos_token_ids(worker.processor)
    # suppress_tokens: the same sampling distribution as ours (the image brackets copy the newline's embedding
    # row, and the head is tied: unsuppressed, they are sampled as often as a newline and the tokens diverge)
    plain_config = GenerationConfig(do_sample=True, temperature=rc.temperature, top_p=rc.top_p, top_k=0,
                                    max_new_tokens=rc.max_new_tokens, eos_token_id=eos,
                                    suppress_tokens=worker.adapter.banned_token_ids(worker.processor),
                                    pad_token_id=worker.processor.tokenizer.pad_token_id)

    def seed() -> int:  # the worker's own seed rule: every rollout variant of a round samples the same tokens
        return hash((cfg.run.seed, step["rollout"], groups[0])) % 2**31

    # the worker's module imported `generate`: wrap its name there to time our generate call inside the rollout
    import ral_dist.actors.rollout_worker as rw

    def timed_generate(*a, **kw):
        t0 = time.perf_counter()
        gen = generate(*a, **kw)
        gen_log["ours"].append((int(gen.response_mask.sum()), time.perf_counter() - t0))
        return gen

    rw.generate = timed_generate

    def with_maps():
        out = worker._sample(step["rollout"], samples, groups)
        assert all(t.behaviour.attention is not None and t.behaviour.attention.shape[0] == len(t.response.ids)
                   for t in out)

    def without_maps():
        gen = generate(worker.adapter, worker.model, worker.processor, prompts, num_samples=rc.group_size,
                       max_new_tokens=rc.max_new_tokens, temperature=rc.temperature, top_p=rc.top_p,
                       capture=False, seed=seed())
        assert gen.attention is None

    def plain_generate():
        t0 = time.perf_counter()
        batch = worker.adapter.encode(worker.processor, [q for q in prompts for _ in range(rc.group_size)])
        torch.manual_seed(seed())
        with torch.no_grad():
            ids = worker.model.generate(**batch.inputs, generation_config=plain_config)[:, batch.prompt_len:]
        gen_log["plain"].append((int(eos_mask(ids, eos).sum()), time.perf_counter() - t0))
        step["rollout"] += 1  # the last rollout variant of the round: the next round samples new tokens

    def through_store(wire):
        # what Ray does with a WireState: pickle 5 with its tensors' bytes out of band, each copied once into the
        # store, and unpickled as views of that copy
        buffers: list = []
        stream = pickle.dumps(wire, protocol=5, buffer_callback=buffers.append)
        return pickle.loads(stream, buffers=[bytearray(b.raw()) for b in buffers])

    def train(name):
        def run():
            learners[name].train_step(step[name], inputs[name], advantages)
            step[name] += 1
        return run

    def sync():
        t0 = time.perf_counter()
        state = through_store(learners["ral"].state_dict())
        t1 = time.perf_counter()
        step["sync"] += 1
        worker.update_weights(step["sync"], state)
        sync_parts["state_dict"].append(t1 - t0)
        sync_parts["update_weights"].append(time.perf_counter() - t1)
        sync_parts["digests"].append(worker._check.seconds if worker._check is not None else 0.0)

    state = learners["ral"].state_dict()
    state_bytes = sum(t.numel() * t.element_size() for t in state.values())
    job_bytes = learners["ral"].state_nbytes()  # what the job reports as sync_bytes (every parameter once)
    del state
    src, dst = torch.ones(state_bytes // 4), torch.empty(state_bytes // 4)

    variants = {"maps": with_maps, "no_maps": without_maps, "plain": plain_generate,
                **{name: train(name) for name in VARIANTS}, "sync": sync, "copy": lambda: dst.copy_(src)}
    cpu: dict[str, list[float]] = {}
    times = common.interleave(variants, repeats, cpu=cpu)
    warm = len(gen_log["plain"]) - repeats
    gen_log = {k: v[warm:] for k, v in gen_log.items()}
    sync_parts = {k: v[-repeats:] for k, v in sync_parts.items()}
    for t in (times, cpu):  # the default job's learner step: the grad norm measured on one step in 10
        t["ral_default"] = [(a * (DEFAULT_NORM_EVERY - 1) + b) / DEFAULT_NORM_EVERY
                            for a, b in zip(t["ral"], t["ral_norm"], strict=True)]
    step_estimate = [r + lr + s for r, lr, s in zip(times["maps"], times["ral_default"], times["sync"], strict=True)]
    tps = {k: [n / s for n, s in v] for k, v in gen_log.items()}
    return {"times": times, "cpu": cpu, "tokens_per_s": tps, "tokens": {k: [n for n, _ in v] for k, v in gen_log.items()},
            "sync_parts": sync_parts, "state_bytes": state_bytes, "job_bytes": job_bytes,
            "step_estimate": step_estimate}


# ---------------------------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=CONFIG)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--prompts", type=int, default=None,
                   help="prompts per rollout (× G: the learner's batch); default: one worker's share of a step")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--job-steps", type=int, default=None,
                   help="steps of the real job for figure 3 (the first dropped; 0: no job; default 5, --quick 0)")
    p.add_argument("--quick", action="store_true", help="2 repeats, no job run")
    p.add_argument("--memory-child", choices=["ral", "grpo"], help=argparse.SUPPRESS)
    p.add_argument("--batch", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_child:
        return memory_child(args)
    repeats = 2 if args.quick else args.repeats
    if args.job_steps is None:
        args.job_steps = 0 if args.quick else 5

    cfg = job_config(args)
    rc, lc = cfg.rollout, cfg.learner
    records = job_run(args, cfg) if args.job_steps > 1 else []
    n_prompts = args.prompts or max(1, rc.prompts_per_step // rc.num_workers)
    worker = RolloutWorker(0, cfg.model_dump(mode="json"), threads=1)
    samples = common.train_samples(cfg, n_prompts)
    torch.manual_seed(0)
    trajs = worker._sample(0, samples, list(range(n_prompts)))  # p_old of the initial weights, as the learners start
    advantages = group_advantages(torch.rand(len(trajs), generator=torch.Generator().manual_seed(0)),
                                  rc.group_size).tolist()
    print(f"# {n_prompts} prompts × G {rc.group_size}, {rc.max_new_tokens} new tokens; learner batch "
          f"{len(trajs)} trajectories, {lc.num_minibatches} mini-batches, ZeRO {lc.zero_stage}", flush=True)

    memory = peak_memory(args, trajs, advantages)  # before this process holds the learners: one at a time
    print("# learner RSS GB (once built, peak): " + ", ".join(
        f"{k} {gigabytes(v['rss_built']):.2f}, {gigabytes(v['peak_rss']):.2f}" for k, v in memory.items()), flush=True)

    measured = in_process(cfg, worker, samples, trajs, advantages, repeats)
    del worker
    gc.collect()
    times, cpu, tps, step_estimate = (measured[k] for k in ("times", "cpu", "tokens_per_s", "step_estimate"))
    state_bytes, job_bytes, sync_parts = (measured[k] for k in ("state_bytes", "job_bytes", "sync_parts"))

    F, R, S = common.figure, common.ratio, common.spread
    figures = [
        F("1 rollout with maps / without (CPU time)", R(cpu["maps"], cpu["no_maps"]), GOALS["rollout"]),
        F("1 rollout with maps / without (wall)", R(times["maps"], times["no_maps"]), GOALS["rollout"]),
        F("2 learner step RAL / GRPO, grad norm every 10th (default; CPU time)", R(cpu["ral_default"], cpu["grpo"]),
          GOALS["learner"]),
        F("2 learner step RAL / GRPO, default (wall)", R(times["ral_default"], times["grpo"]), GOALS["learner"]),
        F("2 learner step RAL / GRPO, no grad norm (CPU time)", R(cpu["ral"], cpu["grpo"]), GOALS["learner"]),
        F("2 learner step RAL / GRPO, grad norm every step (CPU time)", R(cpu["ral_norm"], cpu["grpo"])),
        F("3 weight sync GB per worker (as the job's sync_bytes: each parameter once)", S([gigabytes(job_bytes)])),
        F("3 weight sync GB, the state dict counted name by name (the tied embedding twice; it travels once)", S([gigabytes(state_bytes)])),
        F("3 weight sync s (in-process)", S(times["sync"])),
        F("3 weight sync / copy_ of as many bytes", R(times["sync"], times["copy"])),
        F("3 weight sync share of the step (in-process estimate)", R(times["sync"], step_estimate),
          GOALS["sync_share"]),
        F("3 ... without the digests (run.verify_sync false)",
          R([s - d for s, d in zip(times["sync"], sync_parts["digests"], strict=True)],
            [e - d for e, d in zip(step_estimate, sync_parts["digests"], strict=True)])),
    ]
    if records:
        figures += [F("3 weight sync s (job)", S([r["sync_s"] for r in records])),
                    F("3 weight sync share of the step (job)", S([r["sync_s"] / r["step_s"] for r in records]),
                      GOALS["sync_share"])]
    figures += [
        F("4 peak learner RSS GB, RAL", S([gigabytes(memory["ral"]["peak_rss"])])),
        F("4 peak learner RSS GB, GRPO", S([gigabytes(memory["grpo"]["peak_rss"])])),
        F("4 peak learner RSS RAL / GRPO", S([memory["ral"]["peak_rss"] / memory["grpo"]["peak_rss"]])),
        F("5 tokens/s ours (maps) / plain model.generate", R(tps["ours"], tps["plain"])),
    ]
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "setup": {"model": "SmolLM2-135M-Instruct in SmolVLM architecture (small-real:smollm2-135m), fp32",
                  "config": str(args.config.relative_to(common.ROOT) if args.config.is_absolute() else args.config),
                  "sets": args.sets, "prompts": n_prompts, "group": rc.group_size,
                  "max_new_tokens": rc.max_new_tokens, "trajectories": len(trajs),
                  "response_tokens": int(sum(len(t.response.ids) for t in trajs)),
                  "minibatches": lc.num_minibatches, "zero_stage": lc.zero_stage, "repeats": repeats,
                  "torch_threads": 1, "job_steps": args.job_steps},
        "figures": figures,
        "seconds": {k: S(v) for k, v in times.items()}, "cpu_seconds": {k: S(v) for k, v in cpu.items()},
        "sync": {"state_bytes": state_bytes, "job_sync_bytes": job_bytes,
                 "parts_s": {k: S(v) for k, v in sync_parts.items()}, "copy_s": S(times["copy"]),
                 "copy_GB_per_s": gigabytes(state_bytes) / med["copy"], "step_estimate_s": S(step_estimate)},
        "tokens_per_s": {k: S(v) for k, v in tps.items()},
        "tokens": measured["tokens"],
        "memory": memory,
        "job": [{k: r[k] for k in ("step", "step_s", "rollout_s", "rollout_wait_s", "reward_s", "learn_s", "sync_s",
                                   "sync_bytes")} for r in records],
        "raw": times, "raw_cpu": cpu,
        "environment": common.environment(),
    }
    print(f"# {repeats} interleaved rounds; seconds (median): " +
          ", ".join(f"{k} {v:.3g}" for k, v in med.items()))
    print(f"# sync: {gigabytes(state_bytes):.3f} GB in the state dict ({gigabytes(job_bytes):.3f} GB as the job "
          f"reports), parts " + ", ".join(f"{k} {statistics.median(v):.3g}s" for k, v in sync_parts.items()) +
          f"; copy_ {result['sync']['copy_GB_per_s']:.2f} GB/s; tokens/s ours {S(tps['ours'])['median']:.1f}, "
          f"plain {S(tps['plain'])['median']:.1f}")
    for r in result["job"]:
        print(f"# job step {r['step']}: " + ", ".join(f"{k} {v:.3g}" for k, v in r.items() if k != "step"))
    common.print_figures(figures)
    common.write_result("real_size", result)
    return result


if __name__ == "__main__":
    main()
