"""The distillation job for the driver (`ral_dist.driver`): its config, its controller, and the pair check
that refuses a teacher that does not fit the student before Ray is connected to."""

from __future__ import annotations

from pathlib import Path

from ral_dist.distill_config import DistillJobConfig
from ral_dist.driver import JobKind, resolve_student


def prepare(cfg: DistillJobConfig, root: Path) -> DistillJobConfig:
    """Resolve the student's and the teacher's `sft:` checkpoints, then refuse a teacher that does not match."""
    from ral_dist.distill.pairing import TeacherMismatchError, check_job_pair
    from ral_dist.sft.driver import resolve_sft

    cfg = resolve_student(cfg, root)
    cfg = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(
        update={"checkpoint": resolve_sft(cfg.teacher.checkpoint, root)})})
    try:
        check_job_pair(cfg)
    except TeacherMismatchError as exc:
        raise SystemExit(f"error: {exc}") from None
    return cfg


def _controller() -> type:
    from ral_dist.distill.controller import DistillController

    return DistillController


DISTILL_JOB = JobKind("distill", DistillJobConfig, "jobs/configs/distill_tiny_cpu.yaml", _controller, prepare)
