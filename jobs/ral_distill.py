"""On-policy (attention) distillation on Ray (RAL.md §5): the student samples, a frozen teacher scores its samples.

    python jobs/ral_distill.py --config jobs/configs/distill_tiny_cpu.yaml [--steps N] [--run-dir DIR] [--set k=v ...]
    python jobs/ral_distill.py --resume RUN_DIR [--steps N]

The student loss is GRPO + distill.mu * KL(student || teacher) + distill.gamma_attn * mean JSD(student attention ||
teacher attention); `--set distill.gamma_attn=0` is the on-policy KD baseline through the same code path. The
driver (run directory, metrics.jsonl, checkpoints, --resume, recovery) is the RL job's. The teacher must share the
student's tokenizer and image processor: a mismatched pair is refused before Ray is connected to.
"""

from pathlib import Path

from ral_dist.distill.job import DISTILL_JOB
from ral_dist.driver import main

if __name__ == "__main__":
    main(DISTILL_JOB, root=Path(__file__).resolve().parents[1], doc=__doc__)
