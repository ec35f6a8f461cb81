"""SFT warm start of the policy on Ray Train + DeepSpeed.

    python jobs/sft.py --config jobs/configs/sft_tiny_cpu.yaml [--output DIR] [--steps N] [--set key=value ...]

Without --output the checkpoint is cached outside the repo, keyed by the config, and reused on the next run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ral_dist.config import ConfigError, SFTJobConfig, dump_config, load_config  # noqa: E402
from ral_dist.paths import cache_dir  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(Path(__file__).parent / "configs" / "sft_tiny_cpu.yaml"))
    p.add_argument("--output", default=None, help="checkpoint directory (default: cached by config)")
    p.add_argument("--steps", type=int, default=None, help="override train.steps")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--force", action="store_true", help="retrain even if the cached checkpoint exists")
    p.add_argument("--where", action="store_true", help="print the checkpoint directory of this config and exit")
    return p.parse_args(argv)


def cached_checkpoint_dir(cfg: SFTJobConfig) -> Path:
    """Keyed by the config and, for a model trained from scratch, the architecture it resolves to: a change of the
    tiny defaults in code must not reuse a checkpoint of the old architecture."""
    keyed = cfg.model_dump(mode="json")
    if cfg.model.checkpoint is None:
        from ral_dist.models import tiny_architecture

        keyed["tiny_architecture"] = tiny_architecture(cfg.model.family, cfg.model.tiny)
    key = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir("sft") / key


def is_checkpoint(path: Path) -> bool:
    return (path / "model.safetensors").exists() and (path / "sft_log.json").exists()


def main(argv=None) -> Path:
    args = parse_args(argv)
    overrides = args.overrides + ([f"train.steps={args.steps}"] if args.steps else [])
    try:
        cfg = load_config(SFTJobConfig, args.config, overrides)
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
    output = Path(args.output) if args.output else cached_checkpoint_dir(cfg)
    if args.where:
        print(output)
        return output
    if is_checkpoint(output) and not args.force:
        print(f"[sft] checkpoint already at {output} (use --force to retrain)")
        return output

    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from ral_dist.data.cache import ensure_dataset
    from ral_dist.evaluation import evaluate
    from ral_dist.models import build_policy
    from ral_dist.ray_cluster import connect
    from ral_dist.sft_trainer import sft_train_loop

    data_dir = Path(cfg.data.dir) if cfg.data.dir else ensure_dataset(cfg.data.task, cfg.data.sizes)
    print(f"[sft] data {data_dir}; {cfg.train.steps} steps x batch {cfg.train.batch_size} on "
          f"{cfg.train.num_workers} workers (ZeRO-{cfg.train.zero_stage}) -> {output}", flush=True)
    connect()
    t0 = time.time()
    trainer = TorchTrainer(
        sft_train_loop,
        train_loop_config={"config": cfg.model_dump(mode="json"), "data_dir": str(data_dir)},
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=False,
                                     resources_per_worker={"CPU": 1}),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(name=f"sft-{output.name}-{int(t0)}", storage_path=str(cache_dir("ray_train"))),
    )
    result = trainer.fit()
    if result.error is not None or result.checkpoint is None:
        raise SystemExit(f"[sft] training failed: {result.error}")
    tmp = output.with_name(output.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    result.checkpoint.to_directory(str(tmp))
    dump_config(cfg, tmp / "sft_config.yaml")

    if cfg.eval_samples:
        from ral_dist.data import read_dataset

        val, _ = read_dataset(data_dir, "val")
        adapter, model, processor = build_policy(cfg.model.family, str(tmp))
        report = evaluate(adapter, model, processor, val[: cfg.eval_samples], mode=cfg.data.prompt_mode)
        report["wall_s"] = time.time() - t0
        (tmp / "eval_val.json").write_text(json.dumps(report, indent=1))
        print(f"[sft] val accuracy {report['accuracy']:.3f} format {report['format_rate']:.3f} "
              f"on-target {report['attention_on_target']} (chance {report['target_fraction']}) n={report['n']}")
    shutil.rmtree(output, ignore_errors=True)
    tmp.rename(output)
    print(f"[sft] checkpoint {output} ({time.time() - t0:.0f}s)")
    return output


if __name__ == "__main__":
    main()
