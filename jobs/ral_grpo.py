"""RAL (GRPO + the attention policy loss) on Ray: rollout workers, reward workers, DeepSpeed learners.

    python jobs/ral_grpo.py --config jobs/configs/tiny_cpu.yaml [--steps N] [--run-dir DIR] [--set key=value ...]
    python jobs/ral_grpo.py --resume RUN_DIR [--steps N]

Runs on the cluster it is submitted to (`ray job submit`, RAY_ADDRESS) or starts a local one. `lambda_attn=0`
(`--set learner.lambda_attn=0`) is plain GRPO through the same code path. `model.checkpoint: sft:CONFIG` starts
from the SFT warm start of that config (trained first if it is not cached). The driver is
`ral_dist/driver.py`.
"""

from pathlib import Path

from ral_dist.driver import RL_JOB, main

if __name__ == "__main__":
    main(RL_JOB, root=Path(__file__).resolve().parents[1], doc=__doc__)
