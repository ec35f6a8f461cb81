"""The job driver shared by the RL and distillation jobs: command line, config, run directory, resume, recovery.

``jobs/ral_grpo.py`` and ``jobs/ral_distill.py`` are thin wrappers that call `main` with their `JobKind` and the
checkout root (relative config paths, ``sft:`` references and the default ``runs/`` directory are resolved against
it; ``small-real:`` references name the cached small real model). The config is validated, and every rule that can be checked without actors is checked, before Ray is
connected to; a failed step is retried from the last checkpoint with fresh actors, a bounded number of times.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ral_dist.config import ConfigError, RLJobConfig, load_config
from ral_dist.runtime.environment import ensure_numerics, job_record, record_start
from ral_dist.runtime.object_store import RunLocation, reset_staging
from ral_dist.runtime.run_dir import run_path
from ral_dist.vllm.config_check import check_vllm_config


@dataclass(frozen=True)
class JobKind:
    """What distinguishes one job from another for the driver."""

    name: str  # prefix of the default run directory
    config_class: type[RLJobConfig]
    default_config: str  # relative to the checkout root
    controller: Callable[[], type]  # the controller class, imported once the config is valid (a bad one fails fast)
    prepare: Callable[[RLJobConfig, Path], RLJobConfig]  # resolves sft: references, refuses what cannot run


def resolve_student(cfg: RLJobConfig, root: Path) -> RLJobConfig:
    """The config with ``model.checkpoint: sft:CONFIG`` resolved to the cached SFT checkpoint (trained if missing),
    and ``small-real:NAME`` to the cached small real model (built if missing, `ral_dist.models.small_real`)."""
    from ral_dist.models.small_real import resolve_small_real
    from ral_dist.sft.driver import resolve_sft

    checkpoint = resolve_small_real(resolve_sft(cfg.model.checkpoint, root))
    model = cfg.model.model_copy(update={"checkpoint": checkpoint})
    cfg = cfg.model_copy(update={"model": model})
    check_attention_layers(cfg)
    return cfg


def check_attention_layers(cfg: RLJobConfig) -> None:
    """``attention.layers`` against the student's decoder layers, before Ray is connected to. Where the driver
    cannot read the model's config.json (a hub name on a GPU-less head) the actors refuse it at their first
    forward instead, naming the setting too."""
    from ral_dist.models.capture import layer_indices
    from ral_dist.runtime.memory_plan import architecture_for

    try:
        layers = architecture_for(cfg.model).text.layers
    except (OSError, ValueError, KeyError):
        return
    try:
        layer_indices(cfg.attention.layers, layers)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None


def _rl_controller() -> type:
    from ral_dist.actors.controller import Controller

    return Controller


RL_JOB = JobKind("ral", RLJobConfig, "jobs/configs/tiny_cpu.yaml", _rl_controller, resolve_student)


def parse_args(argv: list[str] | None, doc: str | None, default_config: Path) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(default_config))
    p.add_argument("--steps", type=int, default=None, help="override run.steps")
    p.add_argument("--run-dir", default=None, help="where to write the run (default runs/<job>-<time>)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return p.parse_args(argv)


def load_job_config(args: argparse.Namespace, kind: JobKind, root: Path) -> tuple[RLJobConfig, RunLocation]:
    """The validated config (a resumed run's own config.yaml, with the overrides) and the run directory. A run on
    an object store gets an empty staging directory; a resumed one, its files but the checkpoints downloaded."""
    overrides = args.overrides + ([f"run.steps={args.steps}"] if args.steps else [])
    if args.resume:
        location = run_path(args.resume, "--resume")
        if location.url:
            reset_staging(location, pull=True)
            if not (location.path / "config.yaml").is_file():
                raise ConfigError(f"--resume {args.resume}: no config.yaml there (not a run directory)")
        cfg = load_config(kind.config_class, location.path / "config.yaml", overrides)
    else:
        cfg = load_config(kind.config_class, args.config, overrides)
        default = root / "runs" / f"{kind.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        location = run_path(args.run_dir) if args.run_dir else RunLocation(default)
        if location.url:
            reset_staging(location, pull=False)
    check_vllm_config(cfg)  # vllm installed; attention_on=learner needs learner.old_policy=recompute; weight sync
    cfg.reward.check_custom_imports()  # every user reward function imports and has the right signature
    return cfg, location


def _load_data(cfg: RLJobConfig, run_dir):
    """(training samples, heatmap samples, the training split's file): ids and media paths, never pixels (the
    actors decode media where they use them); every skipped row is written to the run directory with its reason."""
    from ral_dist.data.question_limits import limit_questions
    from ral_dist.data.readers import read_split, split_path
    from ral_dist.data.rows import write_skipped

    train, skipped = read_split(cfg.data, "train")
    train, too_long, truncated = limit_questions(train, cfg.data.max_question_chars, cfg.data.long_questions)
    skipped += too_long
    try:
        heatmap_samples = read_split(cfg.data, "val")[0][: cfg.run.heatmap_prompts]
    except FileNotFoundError:  # a dataset with a training split only (Video-R1-260k)
        heatmap_samples = train[: cfg.run.heatmap_prompts]
    if skipped or truncated:
        counts = write_skipped(skipped, run_dir.path / "skipped_rows.jsonl", "train")
        print(f"[ral] skipped {len(skipped)} training rows {counts}, truncated {truncated} questions; every skipped "
              f"row with its reason in {run_dir.path / 'skipped_rows.jsonl'}", flush=True)
    if not train:
        raise SystemExit(f"error: no usable training rows in {split_path(cfg.data, 'train')}")
    return train, heatmap_samples, split_path(cfg.data, "train")


def _run_with_recovery(controller_cls: type, cfg: RLJobConfig, run_dir, train: list, heatmap_samples: list,
                       resume: bool) -> None:
    from ral_dist.actors.controller import RECOVERABLE

    for attempt in range(cfg.run.max_recoveries + 1):
        ctl = controller_cls(cfg, run_dir, train, heatmap_samples, attempt)
        try:
            ctl.start()
            changed = record_start(run_dir.path, job_record(cfg, ctl.environments()))
            run_dir.push_all()  # environment.json, memory_plan.json, skipped rows: at each start
            if changed:
                print(f"[ral] WARNING: this start's environment differs from the run's first (RUN/environment.json): "
                      f"{'; '.join(changed[:12])}", flush=True)
            start_step = 0
            if resume:
                checkpoint = run_dir.latest_checkpoint()
                if checkpoint is None:
                    raise SystemExit(f"error: {run_dir.location} has no checkpoint to resume from")
                start_step = ctl.restore(checkpoint)
                run_dir.truncate_metrics(start_step)
                print(f"[ral] resumed from {checkpoint} at step {start_step}", flush=True)
            run_dir.open_trackers(cfg, start_step)  # run.loggers, (re)opened at the step the run continues from
            ctl.run_steps(start_step)
            return
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


def _warn_about(cfg: RLJobConfig) -> None:
    """What runs, but departs from RAL.md: said before anything starts."""
    if cfg.learner.lambda_attn > 0 and cfg.updates_per_rollout_batch == 1:
        print("[ral] WARNING: one update per rollout batch silences the attention term (RAL.md §3): "
              "set learner.num_minibatches >= 2 or learner.ppo_epochs >= 2", flush=True)
    if cfg.learner.lambda_attn > 0 and cfg.run.mode == "one_step_off" and cfg.rollout.resolved_attention_on == "learner":
        print("[ral] WARNING: one_step_off with rollout.attention_on=learner: p_old of the attention term is the "
              "learner's weights at each step's start, one version newer than the behaviour policy (RAL.md §3); "
              "README: 'Which weights p_old comes from'", flush=True)


def main(kind: JobKind, root: Path, argv: list[str] | None = None, doc: str | None = None) -> Path:
    """Run a job to its last step (or resume it); returns the run directory."""
    args = parse_args(argv, doc, root / kind.default_config)
    try:
        cfg, location = load_job_config(args, kind, root)
    except ConfigError as exc:  # a bad field, or a --run-dir that cannot be written
        raise SystemExit(f"error: {exc}") from None
    _warn_about(cfg)
    ensure_numerics(cfg.model.numerics)  # the driver computes too (the advantages)

    import ray

    from ral_dist.plan import check_at_start
    from ral_dist.runtime.ray_cluster import connect
    from ral_dist.runtime.run_dir import RunDir

    cfg = kind.prepare(cfg, root)
    controller_cls = kind.controller()
    run_dir = RunDir(location.path, location.url)
    train, heatmap_samples, data_dir = _load_data(cfg, run_dir)
    if not args.resume:
        run_dir.write_config(cfg)
    connect(numerics=cfg.model.numerics)
    check_at_start(cfg, run_dir.path)  # before any actor: a config that cannot fit stops here, naming the role
    print(f"[ral] run dir {run_dir.location} | Ray job {ray.get_runtime_context().get_job_id()} | data {data_dir} "
          f"({len(train)} train)", flush=True)
    try:
        _run_with_recovery(controller_cls, cfg, run_dir, train, heatmap_samples, resume=bool(args.resume))
    except BaseException:
        run_dir.close(failed=True)  # the trackers' runs end, marked failed
        run_dir.push_all()  # what the trackers wrote of a failed run is uploaded too
        raise
    run_dir.close()
    if cfg.run.report:
        from ral_dist.evaluation.report import write_report_safely

        write_report_safely(run_dir.path)
    run_dir.push_all()  # the trackers' files and the report
    print(f"[ral] done: {run_dir.location} (metrics.jsonl, heatmaps/, checkpoints/)", flush=True)
    return run_dir.path
