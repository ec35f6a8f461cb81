"""``python -m ral_dist.plan --config CONFIG [--set k=v] [--gpu-gib 80]``: the memory plan of a job.

Prints, per role and per GPU, what the planner (`ral_dist.runtime.memory_plan`) expects each actor to hold, and
exits 1 naming the role when one cannot fit (2 for a config it cannot read). Without ``--gpu-gib`` the budget is
the visible GPU's memory; on a machine without one nothing is fitted (exit 0). Every job also plans at its start
(`check_at_start`, ``run.memory_check``): on a GPU node of the cluster when it has one, where the checkpoint's
config.json and the GPU's memory are what the actors will see.

    python -m ral_dist.plan --config jobs/configs/qwen25vl_7b.yaml \\
        --model-config tests/fixtures/qwen2_5_vl_7b_config.json --gpu-gib 80
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from ral_dist.config import ConfigError, RLJobConfig, load_config
from ral_dist.distill_config import DistillJobConfig
from ral_dist.runtime.memory_arch import architecture, load_config_json
from ral_dist.runtime.memory_plan import (
    GIB,
    SAFETY_MARGIN,
    MemoryPlan,
    PlanError,
    architecture_for,
    plan_memory,
)


def _gib(b: int) -> str:
    return f"{b / GIB:.2f}"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def format_table(plan: MemoryPlan) -> str:
    """The plan as the CLI prints it: the model and sequence, one block per role, one line per GPU."""
    a, p, mb = plan.arch, plan.prompt, plan.micro_batch
    act = plan.activation
    lines = [
        f"model {a.family} ({a.source}): {_count(a.params.total)} parameters ({_count(a.params.vision)} vision), "
        f"{plan.dtype}",
        f"sequence: {p.prompt_tokens} prompt tokens (visual: video {p.video_tokens} / image {p.image_tokens}, "
        f"text {p.text_tokens}) + {p.new_tokens} new = {p.seq_len}; a step: {plan.step_tokens / 1e6:.2f} M tokens",
        f"learner micro-batch: {mb.n_seqs} sequence(s) x {mb.seq_len} tokens (micro_batch_tokens "
        f"{plan.micro_batch_tokens}, gradient checkpointing {'on' if plan.checkpointing else 'off'}), log-probs "
        f"in chunks of {plan.logprob_chunk} positions",
        f"activation peak {_gib(act.peak)} GiB (memory_arch.ActivationPeak): saved layers {_gib(act.layers)}, "
        f"vision {_gib(act.vision)}, head {_gib(act.head)}, capture {_gib(act.capture)}, inputs "
        f"{_gib(act.inputs)}; transients: head backward {_gib(act.head_backward)}, last layer's backward "
        f"{_gib(act.layer_backward)}, frozen vision forward {_gib(act.vision_forward)}",
        "",
        f"{'role':<9}{'actors':>7}{'GPUs':>6}  {'item (one actor, GiB)':<24}{'GiB':>9}",
    ]
    for r in plan.roles:
        rows = [(k, v) for k, v in r.items.items() if v] + ([("vLLM's share", r.claimed)] if r.claimed else [])
        rows.append(("total", r.estimate + r.claimed))
        for i, (item, b) in enumerate(rows):
            head = f"{r.role:<9}{r.actors:>7}{r.gpus_per_actor:>6g}" if i == 0 else " " * 22
            lines.append(f"{head}  {item:<24}{_gib(b):>9}")
        lines += [" " * 24 + f"({note})" for note in r.notes]
        lines += [" " * 24 + f"PROBLEM: {problem}" for problem in r.problems]
    lines += ["", f"{'GPU':<9}{'count':>6}  {'actors':<22}{'estimate':>9}{'+' + format(SAFETY_MARGIN, '.0%'):>7}"
                  f"{'vLLM':>7}{'need':>8}{'budget':>8}  fits"]
    for g in plan.gpus:
        actors = " + ".join(f"{k} x{v}" for k, v in g.actors.items())
        budget = _gib(g.budget) if g.budget else "-"
        fits = {None: "unchecked", True: "yes", False: "NO"}[g.fits]
        lines.append(f"{g.name:<9}{g.count:>6}  {actors:<22}{_gib(g.estimate):>9}"
                     f"{_gib(round(g.estimate * SAFETY_MARGIN)):>7}{_gib(g.claimed):>7}{_gib(g.need):>8}"
                     f"{budget:>8}  {fits}")
    cpu = [r.role for r in plan.roles if r.gpus_per_actor == 0]
    if cpu:
        lines.append(f"on CPU (per process, not fitted): {', '.join(cpu)}")
    return "\n".join(lines)


def _config(path: str, overrides: list[str]):
    tree = yaml.safe_load(Path(path).read_text()) or {}
    cls = DistillJobConfig if isinstance(tree, dict) and "teacher" in tree else RLJobConfig
    return load_config(cls, path, overrides)


def _plan_here(config: dict, config_class: type, gpu_gib: float | None) -> dict:
    """The plan where this runs (the GPU budget: ``gpu_gib``, else the visible GPU's, if any), its table and its
    verdict."""
    plan = plan_memory(config_class.model_validate(config), gpu_gib=gpu_gib)
    try:
        plan.check()
        problem = None
    except PlanError as exc:
        problem = str(exc)
    return {"table": format_table(plan), "plan": plan.to_dict(), "problem": problem}


def check_at_start(cfg, run_path: Path) -> None:
    """Plan the job before any actor starts; write ``memory_plan.json`` to the run directory. A role that cannot
    fit on GPUs of known memory stops the job (``run.memory_check: strict``); without GPUs, or with ``warn``, the
    verdict is printed and the job goes on. A plan that cannot be made (no config.json readable) is a warning."""
    if cfg.run.memory_check == "skip":
        return
    import ray

    from ral_dist.runtime.ray_cluster import wait_all

    config, gpu_gib = cfg.model_dump(mode="json"), cfg.run.gpu_memory_gib
    try:
        if gpu_gib is None and ray.is_initialized() and ray.cluster_resources().get("GPU", 0) >= 1:
            # the driver may run on a GPU-less head (KubeRay): ask a GPU node
            ref = ray.remote(num_cpus=0, num_gpus=1)(_plan_here).remote(config, type(cfg), None)
            result = wait_all([ref], "the memory plan on a GPU node", cfg.run.timeout_s)[0]
        else:
            result = _plan_here(config, type(cfg), gpu_gib)
    except (OSError, ValueError, KeyError, TimeoutError, ray.exceptions.RayError) as exc:
        print(f"[ral] WARNING: no memory plan ({type(exc).__name__}: {str(exc)[:300]})", flush=True)
        return
    run_path.mkdir(parents=True, exist_ok=True)
    (run_path / "memory_plan.json").write_text(json.dumps(result["plan"] | {"problem": result["problem"]},
                                                          indent=1) + "\n")
    print("[ral] memory plan (python -m ral_dist.plan):\n" + result["table"], flush=True)
    if result["problem"] is None:
        return
    if result["plan"]["gpu_bytes"] is not None and cfg.run.memory_check == "strict":
        raise SystemExit(f"error: the job cannot fit: {result['problem']} (run.memory_check=warn starts it anyway)")
    print(f"[ral] WARNING: the memory plan does not fit: {result['problem']}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ral_dist.plan", description="The memory plan of a job per role and "
                                 "per GPU; exits 1 naming a role that cannot fit.")
    ap.add_argument("--config", required=True, help="job YAML (jobs/configs/...)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    ap.add_argument("--gpu-gib", type=float, help="GPU memory budget in GiB (default: the visible GPU's)")
    ap.add_argument("--model-config", help="the policy's config.json (default: model.checkpoint's, or the tiny)")
    ap.add_argument("--teacher-config", help="the teacher's config.json (distillation)")
    ap.add_argument("--micro-batch-tokens", type=int, help="what-if learner.micro_batch_tokens")
    ap.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction,
                    help="what-if model.gradient_checkpointing")
    ap.add_argument("--json", help="also write the plan (MemoryPlan.to_dict) here")
    args = ap.parse_args(argv)
    try:
        cfg = _config(args.config, args.set)
    except (ConfigError, OSError, yaml.YAMLError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    what_if = {}
    if args.micro_batch_tokens is not None:
        what_if["micro_batch_tokens"] = args.micro_batch_tokens
    if args.gradient_checkpointing is not None:
        what_if["gradient_checkpointing"] = args.gradient_checkpointing
    arch = architecture(load_config_json(args.model_config), args.model_config) if args.model_config else None
    teacher = None
    if hasattr(cfg, "teacher"):
        teacher = architecture_for(cfg.teacher, args.teacher_config)
    plan = plan_memory(cfg, arch, gpu_gib=args.gpu_gib, teacher_arch=teacher, **what_if)
    print(format_table(plan))
    if args.json:
        Path(args.json).write_text(json.dumps(plan.to_dict(), indent=1) + "\n")
    try:
        plan.check()
    except PlanError as exc:
        print(f"\ndoes not fit: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
