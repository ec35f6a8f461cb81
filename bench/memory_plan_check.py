"""The memory planner's figures against measured peak memory: one learner-style micro-batch on CPU.

    .venv/bin/python bench/memory_plan_check.py          # the sweep (a few minutes on 2 cores)
    .venv/bin/python bench/memory_plan_check.py --quick  # the cases tests/test_memory_plan.py checks

Prints planned vs measured activation peaks per case, then the planner's table for Qwen2.5-VL-3B / 7B / 32B
under jobs/configs/qwen25vl_7b.yaml on 8 x 80 GiB (README-ready), and writes bench/results/memory_plan_check.json.

What is measured: the bytes the c10 CPU allocator hands out while the micro-batch is made and goes forward and
backward (torch.profiler with ``profile_memory=True``: every allocation event carries the allocator's running
total; the peak is its maximum minus its value before the first event). Gradient buffers exist before (zeros,
as after the first micro-batch of an accumulation), so the backward adds into them and the peak is the
activation peak alone: the planner's ``activation_peak``. Weights are counted from the parameters.

The micro-batch goes through the learner's own code (`learner_forward_backward`): prompts of one image each +
right-padded responses of unequal lengths, `ral_dist.models.generation.forward_responses` over the real
Qwen2.5-VL with the capture attention (the hidden states of the response positions only, log-probs through
``lm_head`` in checkpointed chunks of positions, the last layer's attention rows in checkpointed chunks of rows)
and the real RAL loss (clipped surrogate + k3 KL + attention JSD).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from ral_dist.algorithms.ral_loss import ral_loss  # noqa: E402
from ral_dist.models import (  # noqa: E402
    enable_gradient_checkpointing,
    freeze_vision_tower,
    get_adapter,
    tiny_architecture,
)
from ral_dist.models.base import VisualPrompt  # noqa: E402
from ral_dist.models.generation import forward_responses  # noqa: E402
from ral_dist.runtime.memory_arch import (  # noqa: E402
    CAPTURE_CHUNK_ROWS,
    LOGPROB_CHUNK_POSITIONS,
    ForwardShape,
    activation_peak,
    architecture,
    load_config_json,
)

# A random Qwen2.5-VL of 62M parameters, the "mid-size" check: 8 LM layers of width 512 (GQA 8 / 2, head 64),
# a 32k vocabulary, a 4-block ViT of width 256.
MID_SIZE = {"text": {"hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 8, "num_attention_heads": 8,
                     "num_key_value_heads": 2, "vocab_size": 32000,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12]}},
            "vision": {"depth": 4, "hidden_size": 256, "intermediate_size": 512, "num_heads": 4,
                       "fullatt_block_indexes": [3]}}
MODELS = {"tiny": {}, "mid": MID_SIZE}
# (model, image side in px, response tokens, frozen vision): the tiny trains its vision tower as the tiny jobs do
SETUPS = {"tiny": ("tiny", 224, 128, False), "mid": ("mid", 448, 256, True)}
# (setup, sequences per micro-batch, gradient checkpointing, dtype). The test's: two micro-batch budgets per model
# (the mid-size one's single sequence is unpadded: no mask, GQA kept), checkpointing off and on.
QUICK = [(setup, seqs, ckpt, "float32") for setup, budgets in (("tiny", (2, 4)), ("mid", (1, 2)))
         for seqs in budgets for ckpt in (False, True)]
SWEEP = (QUICK + [(setup, seqs, ckpt, "float32") for setup, budgets in (("tiny", (1, 8)), ("mid", (4, 8)))
                  for seqs in budgets for ckpt in (False, True)]
         + [(setup, 2, ckpt, "bfloat16") for setup in ("tiny", "mid") for ckpt in (False, True)])
FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"


def build_model(tiny: dict, checkpointing: bool, freeze_vision: bool, dtype: str = "float32", seed: int = 0):
    adapter = get_adapter("qwen2_5_vl")
    model, processor = adapter.build_tiny(seed=seed, attn_implementation="ral_sdpa", **json.loads(json.dumps(tiny)))
    model.to(getattr(torch, dtype)).train()
    if freeze_vision:
        freeze_vision_tower(model)
    if checkpointing:
        enable_gradient_checkpointing(model)
    return adapter, model, processor


def learner_batch(adapter, processor, n_seqs: int, image_side: int, response_len: int, seed: int = 0):
    """Prompts of one ``image_side`` px image each, responses of ``response_len`` minus 0..n_seqs-1 tokens (so
    the micro-batch is padded as a learner's is)."""
    from PIL import Image

    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (n_seqs, image_side, image_side, 3), generator=gen, dtype=torch.uint8)
    prompts = [VisualPrompt([Image.fromarray(p.numpy())], "What colour is the top left cell?") for p in pixels]
    batch = adapter.encode(processor, prompts)
    n_vocab = len(processor.tokenizer)
    ids = torch.randint(16, n_vocab, (n_seqs, response_len), generator=gen)
    mask = (torch.arange(response_len)[None] < (response_len - torch.arange(n_seqs))[:, None]).long()
    return batch, ids, mask


def learner_forward_backward(adapter, model, batch, response_ids, response_mask, pad_id: int,
                             banned: list[int]) -> torch.Tensor:
    """One micro-batch as the learner runs it: `forward_responses` (hidden states of the response positions,
    log-probs in checkpointed chunks, the attention rows in checkpointed chunks), the RAL loss, backward."""
    fwd = forward_responses(adapter, model, batch, response_ids, response_mask, pad_id, banned=banned)
    with torch.no_grad():
        p_old = torch.softmax(torch.randn_like(fwd.attention), -1) * (fwd.attention > 0)
        old = fwd.logprobs.detach() + 0.01
    adv = torch.linspace(-1, 1, response_ids.shape[0])
    terms = ral_loss(fwd.logprobs, old, old - 0.02, response_mask, adv, fwd.attention, p_old, response_mask,
                     beta=0.04, lambda_attn=1.0)
    terms.total.backward()
    return terms.total.detach()


def measure(tiny: dict, n_seqs: int, image_side: int, response_len: int, checkpointing: bool,
            freeze_vision: bool, dtype: str = "float32") -> dict:
    """Peak bytes allocated over one micro-batch's forward + backward, above weights and gradient buffers."""
    torch.manual_seed(0)
    adapter, model, processor = build_model(tiny, checkpointing, freeze_vision, dtype)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)

    def micro_batch():
        # the batch is made inside: its pixels are part of what a micro-batch holds
        batch, ids, mask = learner_batch(adapter, processor, n_seqs, image_side, response_len)
        learner_forward_backward(adapter, model, batch, ids, mask, processor.tokenizer.pad_token_id,
                                 adapter.banned_token_ids(processor))
        return batch.prompt_len, int(batch.inputs["image_grid_thw"].prod(-1).sum()) // n_seqs

    (prompt_len, patches), peak = common.peak_allocated(micro_batch)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    return {"prompt_len": prompt_len, "response_len": response_len, "n_seqs": n_seqs, "patches": patches,
            "measured_activation_peak": peak, "weights": weights, "grads": grads,
            "params": sum(p.numel() for p in model.parameters())}


def check(setup: str, n_seqs: int, checkpointing: bool, dtype: str = "float32") -> dict:
    """One case: measured vs planned activation peak (and weights) of a micro-batch of ``n_seqs`` sequences."""
    model, side, response_len, frozen = SETUPS[setup]
    r = measure(MODELS[model], n_seqs, side, response_len, checkpointing, frozen, dtype)
    arch = architecture(tiny_architecture("qwen2_5_vl", MODELS[model]), source=setup)
    s = 2 if dtype == "bfloat16" else 4
    shape = ForwardShape(n_seqs, r["prompt_len"] + response_len, response_len, r["patches"])
    plan = activation_peak(arch, shape, s, checkpointing, not frozen)
    return r | {"setup": setup, "dtype": dtype, "checkpointing": checkpointing, "tokens": shape.n_tokens,
                "planned_activation_peak": plan.peak, "planned_weights": arch.params.total * s,
                "ratio": plan.peak / r["measured_activation_peak"],
                "total_ratio": (plan.peak + 2 * arch.params.total * s) / (r["measured_activation_peak"]
                                                                         + r["weights"] + r["grads"])}


def readme_table(gpu_gib: float = 80.0) -> tuple[str, list[dict]]:
    """The planner on jobs/configs/qwen25vl_7b.yaml as shipped (micro_batch_tokens 8192, gradient checkpointing,
    attention_on auto = learner: no replica beside vLLM) with each Qwen2.5-VL size, GPUs of ``gpu_gib``."""
    from ral_dist.config import RLJobConfig, load_config
    from ral_dist.runtime.memory_plan import GIB, PlanError, plan_memory

    cfg = load_config(RLJobConfig, Path(__file__).resolve().parents[1] / "jobs/configs/qwen25vl_7b.yaml")
    lines = ["| policy | parameters | learner rank (ZeRO-3 / 4): weights + grads + Adam + reference + DeepSpeed "
             "+ activations = GiB | need (+10 %) | vLLM worker (90 %): weights GiB, KV tokens | fits |",
             "|---|---|---|---|---|---|"]
    rows = []
    for size in ("3b", "7b", "32b"):
        path = FIXTURES / f"qwen2_5_vl_{size}_config.json"
        arch = architecture(load_config_json(path), source=path.name)
        plan = plan_memory(cfg, arch, gpu_gib=gpu_gib)
        learner, rollout = plan.roles[0], plan.roles[1]
        need = next(g.need for g in plan.gpus if g.name == "learner")
        try:
            plan.check()
            verdict = "yes"
        except PlanError as exc:
            verdict = "no: " + ", ".join(exc.roles)
        parts = " + ".join(f"{learner.items[k] / GIB:.1f}" for k in ("weights", "gradients", "optimizer",
                                                                    "reference", "deepspeed", "activations"))
        lines.append(f"| Qwen2.5-VL-{size.upper()} | {arch.params.total / 1e9:.2f} B | {parts} = "
                     f"{learner.estimate / GIB:.1f} | {need / GIB:.1f} | {arch.params.total * 2 / GIB:.1f}, "
                     f"{rollout.kv_tokens / 1e6:.2f} M | {verdict} |")
        rows.append({"model": size, "verdict": verdict, "plan": plan.to_dict()})
    return "\n".join(lines), rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the cases the test checks")
    args = ap.parse_args()
    cases = [check(*case) for case in (QUICK if args.quick else SWEEP)]
    columns = ["setup", "dtype", "checkpointing", "n_seqs", "tokens", "measured_MB", "planned_MB", "ratio"]
    common.print_table([c | {"measured_MB": c["measured_activation_peak"] / 1e6,
                             "planned_MB": c["planned_activation_peak"] / 1e6} for c in cases], columns)
    table, plans = readme_table()
    print("\n" + table)
    worst = max(abs(c["ratio"] - 1) for c in cases)
    common.write_result("memory_plan_check", {
        "cases": cases, "readme_table": table, "plans": plans, "environment": common.environment(),
        "logprob_chunk_positions": LOGPROB_CHUNK_POSITIONS, "capture_chunk_rows": CAPTURE_CHUNK_ROWS,
        "figures": [{"figure": "largest |planned / measured - 1| of the activation peak", "value": worst,
                     "goal": "<= 0.15"}]})


if __name__ == "__main__":
    main()
