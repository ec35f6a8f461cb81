"""RAL (GRPO + the attention policy loss) on Ray: rollout workers, reward workers, DeepSpeed learners.

    python jobs/ral_grpo.py --config jobs/configs/tiny_cpu.yaml [--steps N] [--run-dir DIR] [--set key=value ...]
    python jobs/ral_grpo.py --resume RUN_DIR [--steps N]

Runs on the cluster it is submitted to (`ray job submit`, RAY_ADDRESS) or starts a local one. `lambda_attn=0`
(`--set learner.lambda_attn=0`) is plain GRPO through the same code path. `model.checkpoint: sft:CONFIG` starts
from the SFT warm start of that config (trained first if it is not cached).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ral_dist.config import ConfigError, RLJobConfig, load_config  # noqa: E402
from ral_dist.vllm_config_check import check_vllm_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None, doc: str = __doc__, default_config: Path = ROOT / "jobs" / "configs" / "tiny_cpu.yaml"):
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(default_config))
    p.add_argument("--steps", type=int, default=None, help="override run.steps")
    p.add_argument("--run-dir", default=None, help="where to write the run (default runs/ral-<time>)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return p.parse_args(argv)


def load_job_config(args, config_cls: type[RLJobConfig] = RLJobConfig, run_prefix: str = "ral"
                    ) -> tuple[RLJobConfig, Path]:
    overrides = args.overrides + ([f"run.steps={args.steps}"] if args.steps else [])
    if args.resume:
        run_dir = Path(args.resume)
        cfg = load_config(config_cls, run_dir / "config.yaml", overrides)
    else:
        cfg = load_config(config_cls, args.config, overrides)
        run_dir = (Path(args.run_dir) if args.run_dir
                   else ROOT / "runs" / f"{run_prefix}-{time.strftime('%Y%m%d-%H%M%S')}")
    check_vllm_config(cfg)  # vllm installed; attention_on=learner needs learner.old_policy=recompute
    if cfg.rollout.prompts_per_step < cfg.rollout.num_workers:
        raise ConfigError("rollout.prompts_per_step must be >= rollout.num_workers")
    return cfg, run_dir


def resolve_sft(ckpt: str | None) -> str | None:
    """`sft:CONFIG` → the cached SFT checkpoint of that config (trained now if missing); anything else as is."""
    if ckpt and ckpt.startswith("sft:"):
        sys.path.insert(0, str(ROOT / "jobs"))
        import sft

        sft_config = ckpt[len("sft:"):]
        return str(sft.main(["--config", str(ROOT / sft_config if not Path(sft_config).is_absolute() else sft_config)]))
    return ckpt


def resolve_checkpoint(cfg: RLJobConfig) -> RLJobConfig:
    """The config with `model.checkpoint: sft:CONFIG` resolved (`resolve_sft`)."""
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"checkpoint": resolve_sft(cfg.model.checkpoint)})})


def main(argv=None, *, config_cls: type[RLJobConfig] = RLJobConfig, controller: Callable[[], type] | None = None,
         prepare: Callable[[RLJobConfig], RLJobConfig] | None = None, doc: str = __doc__,
         default_config: Path = ROOT / "jobs" / "configs" / "tiny_cpu.yaml", run_prefix: str = "ral") -> Path:
    """The job driver, shared with jobs/ral_distill.py: ``config_cls`` and ``controller`` (a function returning the
    controller class, imported late) pick the job; ``prepare`` checks or completes the config (sft: checkpoints
    resolved) before Ray is connected to."""
    args = parse_args(argv, doc, default_config)
    try:
        cfg, run_dir_path = load_job_config(args, config_cls, run_prefix)
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
    if cfg.learner.lambda_attn > 0 and cfg.updates_per_rollout_batch == 1:
        print("[ral] WARNING: one update per rollout batch silences the attention term (RAL.md §3): "
              "set learner.num_minibatches >= 2 or learner.ppo_epochs >= 2", flush=True)

    import ray

    from ral_dist.controller import RECOVERABLE, Controller
    from ral_dist.data import read_dataset
    from ral_dist.data.cache import ensure_dataset
    from ral_dist.data.question_limits import limit_questions
    from ral_dist.ray_cluster import connect
    from ral_dist.run_dir import RunDir

    cfg = resolve_checkpoint(cfg)
    if prepare is not None:
        cfg = prepare(cfg)
    controller_cls = controller() if controller is not None else Controller
    data_dir = Path(cfg.data.dir) if cfg.data.dir else ensure_dataset(cfg.data.task, cfg.data.sizes)
    train, skipped = read_dataset(data_dir, "train")
    train, too_long, truncated = limit_questions(train, cfg.data.max_question_chars, cfg.data.long_questions)
    skipped += too_long
    val, _ = read_dataset(data_dir, "val")
    run_dir = RunDir(run_dir_path)
    if skipped or truncated:
        run_dir.write_skipped_rows(skipped)
        print(f"[ral] skipped {len(skipped)} training rows, truncated {truncated} questions; every skipped row "
              f"with its reason in {run_dir.path / 'skipped_rows.jsonl'}: "
              + "; ".join(f"line {s.line} ({s.id}): {s.reason}" for s in skipped[:10]), flush=True)
    if not train:
        raise SystemExit(f"error: no usable training rows in {data_dir}")
    if not args.resume:
        run_dir.write_config(cfg)
    connect()
    ctx = ray.get_runtime_context()
    print(f"[ral] run dir {run_dir.path} | Ray job {ctx.get_job_id()} | data {data_dir} ({len(train)} train)",
          flush=True)
    resume = bool(args.resume)
    for attempt in range(cfg.run.max_recoveries + 1):
        ctl = controller_cls(cfg, run_dir, train, val[: cfg.run.heatmap_prompts], attempt)
        try:
            ctl.start()
            start_step = 0
            if resume:
                checkpoint = run_dir.latest_checkpoint()
                if checkpoint is None:
                    raise SystemExit(f"error: {run_dir.path} has no checkpoint to resume from")
                start_step = ctl.restore(checkpoint)
                run_dir.truncate_metrics(start_step)
                print(f"[ral] resumed from {checkpoint} at step {start_step}", flush=True)
            ctl.run_steps(start_step)
            break
        except RECOVERABLE as exc:
            # A learner rank (or a whole actor group) died, or a wait timed out: start fresh actors from the
            # last checkpoint rather than hang, a bounded number of times.
            if attempt == cfg.run.max_recoveries or run_dir.latest_checkpoint() is None:
                raise
            print(f"[ral] step failed ({type(exc).__name__}: {str(exc)[:300]}); recovering from the last "
                  f"checkpoint (recovery {attempt + 1}/{cfg.run.max_recoveries})", flush=True)
            resume = True
        finally:
            ctl.stop()
    print(f"[ral] done: {run_dir.path} (metrics.jsonl, heatmaps/, checkpoints/)", flush=True)
    return run_dir.path


if __name__ == "__main__":
    main()
