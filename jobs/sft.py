"""SFT warm start of the policy on Ray Train + DeepSpeed.

    python jobs/sft.py --config jobs/configs/sft_tiny_cpu.yaml [--output DIR] [--steps N] [--set key=value ...]

Without --output the checkpoint is cached outside the repo, keyed by the config, and reused on the next run.
"""

import argparse
from pathlib import Path

from ral_dist.config import ConfigError, SFTJobConfig, load_config
from ral_dist.sft.driver import cached_checkpoint_dir, train_or_reuse


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(Path(__file__).parent / "configs" / "sft_tiny_cpu.yaml"))
    p.add_argument("--output", default=None, help="checkpoint directory (default: cached by config)")
    p.add_argument("--steps", type=int, default=None, help="override train.steps")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--force", action="store_true", help="retrain even if the cached checkpoint exists")
    p.add_argument("--where", action="store_true", help="print the checkpoint directory of this config and exit")
    args = p.parse_args(argv)
    try:
        cfg = load_config(SFTJobConfig, args.config, args.overrides + ([f"train.steps={args.steps}"] if args.steps
                                                                        else []))
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
    if args.where:
        print(cached_checkpoint_dir(cfg) if args.output is None else args.output)
        return Path(args.output) if args.output else cached_checkpoint_dir(cfg)
    return train_or_reuse(cfg, Path(args.output) if args.output else None, force=args.force)


if __name__ == "__main__":
    main()
