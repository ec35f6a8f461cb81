"""Size the embedded default: SFT a tiny Qwen2.5-VL from scratch on the synthetic grounded VQA task.

Trains one recipe (model dims, task stage, batch, lr with linear warmup + cosine decay) on a pre-generated,
pre-encoded train set, and every ``--eval-every`` steps prints the train loss, the greedy val accuracy
(``exact_match`` on the ``<answer>`` tag) and the elapsed training wall time (evaluation excluded). With
``--probe`` it also fits a linear probe (colour of the asked cell, from the merged visual tokens over the target
region, i.e. what the language model receives) at init and at the end: does the visual signal reach the LM?

    .venv/bin/python bench/sft_sizing.py --steps 600 --batch 32 --lr 2e-3 --stage 0 --out /tmp/run.json

Writes ``--out``: the recipe, the curve (step, train seconds, loss, val accuracy) and the final numbers.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from ral_dist.algorithms import exact_match
from ral_dist.config import DataConfig
from ral_dist.data import GroundedVQAConfig, Sample, generate, region_token_mask
from ral_dist.models import get_adapter
from ral_dist.models.generation import generate as generate_responses
from ral_dist.models.prompting import visual_prompt
from ral_dist.models.qwen_vl import TINY_ROPE_THETA
from ral_dist.runtime.schedule import cosine_lr
from ral_dist.sft.batch import IGNORE_INDEX, sft_batch

FAMILY = "qwen2_5_vl"


@dataclass
class Item:
    """One pre-encoded SFT example: its unpadded token row, labels and pixels."""

    input_ids: torch.Tensor  # [L]
    labels: torch.Tensor  # [L]
    mm_token_type_ids: torch.Tensor  # [L]
    pixel_values: torch.Tensor  # [P, D]
    image_grid_thw: torch.Tensor  # [1, 3]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=32, help="global batch size")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=50, help="linear warmup steps")
    p.add_argument("--min-lr-ratio", type=float, default=0.1, help="cosine floor as a fraction of --lr")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--hidden", type=int, default=128, help="LM hidden size")
    p.add_argument("--layers", type=int, default=4, help="LM layers")
    p.add_argument("--heads", type=int, default=4, help="LM attention heads (hidden / heads >= 32)")
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--intermediate", type=int, default=0, help="LM MLP width (0: 2 x hidden)")
    p.add_argument("--vision-hidden", type=int, default=64)
    p.add_argument("--vision-depth", type=int, default=2)
    p.add_argument("--vision-heads", type=int, default=2)
    p.add_argument("--patch", type=int, default=14, help="vision patch size (merge 2 follows)")
    p.add_argument("--stage", type=int, default=0, help="curriculum stage of GroundedVQAConfig.at_stage")
    p.add_argument("--canvas", type=int, default=112)
    p.add_argument("--grid", type=int, default=2)
    p.add_argument("--mode", choices=("think", "answer_only"), default="think")
    p.add_argument("--n-train", type=int, default=6000)
    p.add_argument("--n-val", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--max-new-tokens", type=int, default=0, help="0: longest val target + 4")
    p.add_argument("--time-budget", type=float, default=0.0, help="stop training after this many seconds (0: off)")
    p.add_argument("--probe", action="store_true", help="linear probe on the merged visual tokens, init and end")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


# ============================================================================================== setup


def task_config(args) -> GroundedVQAConfig:
    return GroundedVQAConfig.at_stage(args.stage, canvas=args.canvas, grid=args.grid, seed=args.seed)


def build_model(args):
    adapter = get_adapter(FAMILY)
    processor = adapter.build_processor(patch_size=args.patch)
    text = dict(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
                num_key_value_heads=args.kv_heads, intermediate_size=args.intermediate or 2 * args.hidden)
    head_dim = args.hidden // args.heads
    if head_dim < 32:
        raise SystemExit(f"head_dim {head_dim} < 32 (hidden {args.hidden}, heads {args.heads})")
    # mrope sections (t, h, w) must sum to head_dim / 2; keep Qwen's 1:1.5:1.5-ish split
    half = head_dim // 2
    t_sec = half // 4
    h_sec = (half - t_sec) // 2
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": TINY_ROPE_THETA,
                               "mrope_section": [t_sec, h_sec, half - t_sec - h_sec]}
    vision = dict(depth=args.vision_depth, hidden_size=args.vision_hidden, intermediate_size=2 * args.vision_hidden,
                  num_heads=args.vision_heads, patch_size=args.patch,
                  window_size=4 * args.patch, fullatt_block_indexes=[args.vision_depth - 1])
    config = adapter.tiny_config(processor, text=text, vision=vision)
    config._attn_implementation = "sdpa"
    torch.manual_seed(args.seed)
    model = adapter.model_class()(config)
    return adapter, model, processor


def encode_items(adapter, processor, samples: list[Sample], mode: str, chunk: int = 64) -> list[Item]:
    """Encode once with ``sft_batch`` and split into unpadded per-sample rows (collated again per batch)."""
    items = []
    for start in range(0, len(samples), chunk):
        inputs, labels, _ = sft_batch(adapter, processor, samples[start : start + chunk], DataConfig(prompt={"mode": mode}))
        sizes = inputs["image_grid_thw"].prod(-1).tolist()
        pixels = torch.split(inputs["pixel_values"], sizes)
        for b in range(len(sizes)):
            keep = inputs["attention_mask"][b].bool()  # left-padded prompt + right-padded response
            items.append(Item(inputs["input_ids"][b, keep], labels[b, keep], inputs["mm_token_type_ids"][b, keep],
                              pixels[b], inputs["image_grid_thw"][b : b + 1]))
    return items


def collate(items: list[Item], pad_id: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Left-pad whole rows (the 3-D RoPE index follows the attention mask)."""
    width = max(len(it.input_ids) for it in items)
    n = len(items)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    mm = torch.zeros((n, width), dtype=torch.long)
    for b, it in enumerate(items):
        k = len(it.input_ids)
        ids[b, width - k :], labels[b, width - k :], mm[b, width - k :] = it.input_ids, it.labels, it.mm_token_type_ids
        mask[b, width - k :] = 1
    inputs = {"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": mm,
              "pixel_values": torch.cat([it.pixel_values for it in items]),
              "image_grid_thw": torch.cat([it.image_grid_thw for it in items])}
    return inputs, labels


def lr_lambda(args):
    """The SFT trainer's schedule as a LambdaLR multiplier (linear warm-up, cosine to min_lr_ratio)."""
    return lambda step: cosine_lr(step, args.steps, 1.0, args.warmup, args.min_lr_ratio)


# ============================================================================================== measuring


@torch.no_grad()
def evaluate(adapter, model, processor, samples: list[Sample], mode: str, max_new_tokens: int,
             chunk: int = 100) -> dict:
    model.eval()
    hits: dict[str, list[float]] = defaultdict(list)
    answered, texts = 0, []
    for start in range(0, len(samples), chunk):
        part = samples[start : start + chunk]
        gen = generate_responses(adapter, model, processor, [visual_prompt(s, DataConfig(prompt={"mode": mode})) for s in part], greedy=True,
                                 max_new_tokens=max_new_tokens, capture=False)
        for s, text in zip(part, gen.texts, strict=True):
            score = exact_match(text, s.answer)
            hits[s.qtype].append(score.value)
            answered += score.reason is None
            texts.append(text)
    model.train()
    flat = [v for vs in hits.values() for v in vs]
    return {"acc": sum(flat) / len(flat), "answered": answered / len(flat),
            "by_qtype": {q: round(sum(v) / len(v), 3) for q, v in sorted(hits.items())}, "example": texts[0]}


@torch.no_grad()
def visual_features(model, items: list[Item], samples: list[Sample], chunk: int = 64):
    """Merged visual tokens (the LM's visual inputs) mean-pooled over each sample's target region."""
    feats = []
    for start in range(0, len(items), chunk):
        part = items[start : start + chunk]
        grids = torch.cat([it.image_grid_thw for it in part])
        out = model.model.get_image_features(torch.cat([it.pixel_values for it in part]), grids).pooler_output
        for it, s, tokens in zip(part, samples[start : start + chunk], out, strict=True):
            t, gh, gw = (int(v) for v in it.image_grid_thw[0])
            m = model.config.vision_config.spatial_merge_size
            mask = region_token_mask(s.regions, s.n_frames, s.frame_hw, (t, gh // m, gw // m))
            feats.append(tokens[mask].mean(0))
    return torch.stack(feats)


@torch.no_grad()
def lm_features(model, items: list[Item], samples: list[Sample], pad_id: int, chunk: int = 64):
    """The LM's last-layer hidden state at the last prompt token (before any response token)."""
    feats = []
    for start in range(0, len(items), chunk):
        prompts = []
        for it in items[start : start + chunk]:
            k = int((it.labels == IGNORE_INDEX).sum())  # prompt length (labels score the response only)
            prompts.append(Item(it.input_ids[:k], it.labels[:k], it.mm_token_type_ids[:k], it.pixel_values,
                                it.image_grid_thw))
        inputs, _ = collate(prompts, pad_id)
        feats.append(model(**inputs, output_hidden_states=True).hidden_states[-1][:, -1])
    return torch.cat(feats)


def linear_probe(model, train: tuple[list[Item], list[Sample]], val: tuple[list[Item], list[Sample]],
                 where: str, pad_id: int) -> float:
    """Val accuracy of a logistic-regression probe for the answer (colour): from the target region's merged
    visual tokens (``where="visual"``) or from the LM's last hidden state at the end of the prompt ("lm")."""
    was_training = model.training
    model.eval()
    if where == "visual":
        xs = [visual_features(model, *split) for split in (train, val)]
    else:
        xs = [lm_features(model, *split, pad_id) for split in (train, val)]
    model.train(was_training)
    classes = sorted({s.answer for s in train[1]})
    ys = [torch.tensor([classes.index(s.answer) if s.answer in classes else -1 for s in split[1]])
          for split in (train, val)]
    mu, sd = xs[0].mean(0), xs[0].std(0) + 1e-6
    xs = [(x - mu) / sd for x in xs]
    head = torch.nn.Linear(xs[0].shape[1], len(classes))
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=1e-3)
    with torch.enable_grad():
        for _ in range(300):
            loss = torch.nn.functional.cross_entropy(head(xs[0]), ys[0])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return float((head(xs[1]).argmax(-1) == ys[1]).float().mean())


# ============================================================================================== main


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t_setup = time.perf_counter()
    cfg = task_config(args)
    train_samples = generate(cfg, "train", args.n_train)
    val_samples = generate(cfg, "val", args.n_val)
    adapter, model, processor = build_model(args)
    n_params = sum(p.numel() for p in model.parameters())
    train_items = encode_items(adapter, processor, train_samples, args.mode)
    pad_id = processor.tokenizer.pad_token_id
    n_visual = int((train_items[0].mm_token_type_ids == 1).sum())
    max_new = args.max_new_tokens or max(int((it.labels != IGNORE_INDEX).sum()) for it in train_items) + 4
    setup_s = time.perf_counter() - t_setup
    print(f"params {n_params / 1e6:.2f}M  visual tokens {n_visual}  seq len {len(train_items[0].input_ids)}  "
          f"setup {setup_s:.1f}s  max_new_tokens {max_new}", flush=True)

    probe = {}
    if args.probe:
        probe_train = (train_items[:1000], train_samples[:1000])
        probe_val = (encode_items(adapter, processor, val_samples, args.mode), val_samples)
        for where in ("visual", "lm"):
            probe[f"{where}@init"] = linear_probe(model, probe_train, probe_val, where, pad_id)
        print(f"probe {probe}", flush=True)

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(args))
    rng = random.Random(args.seed)
    order: list[int] = []
    curve, losses = [], []
    train_s = encode_s = cpu_s = 0.0
    model.train()
    step = 0
    for step in range(1, args.steps + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        if len(order) < args.batch:
            order = list(range(len(train_items)))
            rng.shuffle(order)
        idx, order = order[: args.batch], order[args.batch :]
        inputs, labels = collate([train_items[i] for i in idx], pad_id)
        t1 = time.perf_counter()
        loss = model(**inputs, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        sched.step()
        t2 = time.perf_counter()
        cpu_s += time.process_time() - c0
        encode_s += t1 - t0
        train_s += t2 - t0
        losses.append(loss.item())
        over_budget = args.time_budget and train_s > args.time_budget
        if step % args.eval_every == 0 or step == args.steps or over_budget:
            te = time.perf_counter()
            ev = evaluate(adapter, model, processor, val_samples, args.mode, max_new)
            eval_s = time.perf_counter() - te
            mean_loss = sum(losses[-args.eval_every :]) / len(losses[-args.eval_every :])
            curve.append({"step": step, "train_s": round(train_s, 1), "cpu_s": round(cpu_s, 1), "loss": round(mean_loss, 4),
                          "val_acc": round(ev["acc"], 4), "answered": round(ev["answered"], 3),
                          "by_qtype": ev["by_qtype"], "lr": sched.get_last_lr()[0]})
            print(f"step {step:5d}  train {train_s:6.1f}s (cpu {cpu_s:6.1f}s)  loss {mean_loss:.4f}  val_acc {ev['acc']:.3f}  "
                  f"answered {ev['answered']:.2f}  {ev['by_qtype']}  (eval {eval_s:.1f}s) "
                  f"e.g. {ev['example']!r}", flush=True)
        if over_budget:
            print(f"time budget {args.time_budget}s reached at step {step}", flush=True)
            break

    if args.probe:
        for where in ("visual", "lm"):
            probe[f"{where}@final"] = linear_probe(model, probe_train, probe_val, where, pad_id)
        print(f"probe {probe}", flush=True)
    summary = {
        "recipe": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "task": cfg.model_dump(), "params": n_params, "visual_tokens": n_visual,
        "steps_done": step, "setup_s": round(setup_s, 1), "train_s": round(train_s, 1),
        "cpu_s": round(cpu_s, 1), "collate_s": round(encode_s, 1), "s_per_step": round(train_s / max(step, 1), 3),
        "final_val_acc": curve[-1]["val_acc"] if curve else None,
        "best_val_acc": max(c["val_acc"] for c in curve) if curve else None,
        "curve": curve, "probe": probe, "host": platform.node(), "torch": torch.__version__,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
