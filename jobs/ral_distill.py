"""On-policy (attention) distillation on Ray (RAL.md §5): the student samples, a frozen teacher scores its samples.

    python jobs/ral_distill.py --config jobs/configs/distill_tiny_cpu.yaml [--steps N] [--run-dir DIR] [--set k=v ...]
    python jobs/ral_distill.py --resume RUN_DIR [--steps N]

The student loss is GRPO + distill.mu * KL(student || teacher) + distill.gamma_attn * mean JSD(student attention ||
teacher attention); `--set distill.gamma_attn=0` is the on-policy KD baseline through the same code path. The job
driver (run directory, metrics.jsonl, checkpoints, --resume, recovery) is jobs/ral_grpo.py's. The teacher must
share the student's tokenizer and image processor: a mismatched pair is refused before Ray is connected to.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ral_grpo  # noqa: E402

from ral_dist.config import DistillJobConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def prepare(cfg: DistillJobConfig) -> DistillJobConfig:
    """Resolve the teacher's `sft:` checkpoint, then refuse a teacher that does not match the student."""
    from ral_dist.teacher import TeacherMismatchError, check_job_pair

    teacher = cfg.teacher.model_copy(update={"checkpoint": ral_grpo.resolve_sft(cfg.teacher.checkpoint)})
    cfg = cfg.model_copy(update={"teacher": teacher})
    try:
        check_job_pair(cfg)
    except TeacherMismatchError as exc:
        raise SystemExit(f"error: {exc}") from None
    return cfg


def _controller() -> type:
    from ral_dist.distill_controller import DistillController

    return DistillController


def main(argv=None) -> Path:
    return ral_grpo.main(argv, config_cls=DistillJobConfig, controller=_controller, prepare=prepare, doc=__doc__,
                         default_config=ROOT / "jobs" / "configs" / "distill_tiny_cpu.yaml", run_prefix="distill")


if __name__ == "__main__":
    main()
