"""The SFT warm start as a job: a checkpoint per config, trained once on Ray Train + DeepSpeed and cached.

`train_or_reuse` is what ``python jobs/sft.py`` runs; `resolve_sft` turns a model reference ``sft:CONFIG`` of an RL
or distillation config into that config's cached checkpoint (trained first if it is missing).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from ral_dist.config import SFTJobConfig, dump_config, load_config
from ral_dist.paths import cache_dir

SFT_PREFIX = "sft:"


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


def train_or_reuse(cfg: SFTJobConfig, output: Path | None = None, force: bool = False) -> Path:
    """The checkpoint of ``cfg`` at ``output`` (default: its cache entry), trained unless it is already there."""
    output = output or cached_checkpoint_dir(cfg)
    if is_checkpoint(output) and not force:
        print(f"[sft] checkpoint already at {output} (use --force to retrain)")
        return output

    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from ral_dist.data.readers import split_path
    from ral_dist.runtime.environment import ensure_numerics
    from ral_dist.runtime.ray_cluster import connect
    from ral_dist.sft.trainer import sft_train_loop

    data_dir = split_path(cfg.data, "train")  # generated here once, when it is the synthetic task
    print(f"[sft] data {data_dir}; {cfg.train.steps} steps x batch {cfg.train.batch_size} on "
          f"{cfg.train.num_workers} workers (ZeRO-{cfg.train.zero_stage}) -> {output}", flush=True)
    ensure_numerics(cfg.model.numerics)
    connect(numerics=cfg.model.numerics)
    t0 = time.time()
    trainer = TorchTrainer(
        sft_train_loop,
        train_loop_config={"config": cfg.model_dump(mode="json")},
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=False,
                                     resources_per_worker={"CPU": 1}),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(name=f"sft-{output.name}-{int(t0)}", storage_path=str(cache_dir("ray_train"))),
    )
    result = trainer.fit()
    if result.error is not None or result.checkpoint is None:
        raise SystemExit(f"[sft] training failed: {result.error}")
    tmp = output.with_name(f"{output.name}.partial-{os.getpid()}")  # per process: is_checkpoint never looks here
    shutil.rmtree(tmp, ignore_errors=True)
    result.checkpoint.to_directory(str(tmp))
    dump_config(cfg, tmp / "sft_config.yaml")
    if cfg.eval_samples:
        _evaluate(cfg, tmp, t0)
    shutil.rmtree(output, ignore_errors=True)
    tmp.rename(output)
    print(f"[sft] checkpoint {output} ({time.time() - t0:.0f}s)")
    return output


def _evaluate(cfg: SFTJobConfig, checkpoint: Path, t0: float) -> None:
    from ral_dist.data.readers import read_split
    from ral_dist.evaluation.greedy import evaluate
    from ral_dist.models import build_policy

    val, _ = read_split(cfg.data, "val")
    adapter, model, processor = build_policy(cfg.model.family, str(checkpoint))
    report = evaluate(adapter, model, processor, val[: cfg.eval_samples], cfg.data)
    report["wall_s"] = time.time() - t0
    (checkpoint / "eval_val.json").write_text(json.dumps(report, indent=1))
    print(f"[sft] val accuracy {report['accuracy']:.3f} format {report['format_rate']:.3f} "
          f"on-target {report['attention_on_target']} (chance {report['target_fraction']}) n={report['n']}")


def resolve_sft(checkpoint: str | None, root: Path) -> str | None:
    """``sft:CONFIG`` (a path relative to ``root``, the directory holding jobs/) -> the cached SFT checkpoint of that
    config, trained now if missing; anything else as is."""
    if not checkpoint or not checkpoint.startswith(SFT_PREFIX):
        return checkpoint
    config = Path(checkpoint[len(SFT_PREFIX):])
    return str(train_or_reuse(load_config(SFTJobConfig, config if config.is_absolute() else root / config)))
