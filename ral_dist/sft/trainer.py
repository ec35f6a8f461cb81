"""SFT warm start on Ray Train: each worker wraps the policy in DeepSpeed and trains on its slice of the batch.

The data order is a seeded permutation per epoch, identical on every worker; worker r takes its contiguous
slice of each global batch. Rank 0 reports progress (with an ETA) and writes the Hugging Face checkpoint,
which reaches the driver as a Ray Train checkpoint (so it also works when workers run on other nodes).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import ray.train
import torch
import torch.distributed as dist

from ral_dist.config import SFTJobConfig
from ral_dist.data.readers import read_split
from ral_dist.models import build_policy, freeze_vision_tower
from ral_dist.runtime.deepspeed_setup import deepspeed_config, full_state_dict, init_engine, set_lr
from ral_dist.runtime.schedule import batch_indices, cosine_lr, format_eta
from ral_dist.sft.batch import sft_batch


def sft_train_loop(loop_config: dict) -> None:
    cfg = SFTJobConfig.model_validate(loop_config["config"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(loop_config.get("threads_per_worker", 1))
    tc = cfg.train
    if tc.batch_size % world:
        raise ValueError(f"train.batch_size {tc.batch_size} is not divisible by {world} workers")
    micro = tc.batch_size // world

    adapter, model, processor = build_policy(cfg.model.family, cfg.model.checkpoint, cfg.model.tiny, seed=tc.seed)
    if cfg.model.freeze_vision:
        freeze_vision_tower(model)
    model.train()
    samples, skipped = read_split(cfg.data, "train")
    if rank == 0 and skipped:
        print(f"[sft] skipped {len(skipped)} malformed rows, e.g. line {skipped[0].line}: {skipped[0].reason}")
    ds_config = deepspeed_config(tc.zero_stage, micro, tc.grad_clip, bf16=cfg.model.dtype == "bfloat16")
    # the per-op AdamW keeps the warm start issue 22 reproduced on a second machine bit for bit
    # (tests/test_reproducibility.py); the learner's fused one is faster at real sizes, other in the last bit
    engine, optimizer = init_engine(model, tc.lr, tc.weight_decay, ds_config, betas=tc.adam_betas, fused=False)

    history: list[dict] = []
    running, t0 = [], time.time()
    for step in range(tc.steps):
        idx = batch_indices(step, tc.batch_size, len(samples), tc.seed)[rank * micro : (rank + 1) * micro]
        inputs, labels, _ = sft_batch(adapter, processor, [samples[i] for i in idx], cfg.data)
        lr = cosine_lr(step, tc.steps, tc.lr, tc.warmup_steps, tc.min_lr_ratio)
        set_lr(optimizer, lr)
        loss = engine(**inputs, labels=labels).loss
        engine.backward(loss)
        engine.step()
        running.append(loss.detach())
        if (step + 1) % tc.log_every == 0 or step + 1 == tc.steps:
            mean_loss = torch.stack(running).mean()
            dist.all_reduce(mean_loss)
            mean_loss = float(mean_loss) / world
            running = []
            elapsed = time.time() - t0
            eta = elapsed / (step + 1) * (tc.steps - step - 1)
            history.append({"step": step + 1, "loss": mean_loss, "lr": lr, "elapsed_s": elapsed})
            if rank == 0:
                print(f"[sft] step {step + 1}/{tc.steps} loss {mean_loss:.4f} lr {lr:.2e} "
                      f"{(step + 1) / elapsed:.2f} steps/s elapsed {format_eta(elapsed)} ETA {format_eta(eta)}",
                      flush=True)
            ray.train.report({"step": step + 1, "loss": mean_loss})

    state = full_state_dict(engine)
    if rank == 0:
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
            processor.save_pretrained(tmp)
            (Path(tmp) / "sft_log.json").write_text(json.dumps({"history": history, "skipped": len(skipped),
                                                                "train_s": time.time() - t0}, indent=1))
            ray.train.report({"step": tc.steps, "loss": history[-1]["loss"], "done": True},
                             checkpoint=ray.train.Checkpoint.from_directory(tmp))
    else:
        ray.train.report({"step": tc.steps, "loss": history[-1]["loss"], "done": True})
