"""GPU check for a lent machine (CUDA torch + transformers; no vLLM there). Run through bench/gpu_check.sh.

1. The hf engine's path on CUDA: the tiny Qwen2.5-VL greedy-generates a batch, then `forward_responses` (the
   last-layer capture, SDPA everywhere else) gives log-probs and attention rows. Reference: the same weights
   with eager attention and ``output_attentions=True`` (`reference_attention_policy`). fp32 must agree to 1e-4;
   bf16 within bf16 tolerance (max |Δp| <= 2e-2, mean <= 1e-3; log-probs mean |Δ| <= 5e-2).
2. The DeepSpeed learner on one GPU over NCCL (ZeRO-2, bf16): one `train_step` on trajectories the version-0
   policy sampled (p_old recomputed by the learner); finite stats, both mini-batch updates applied, the
   attention term's first-update gradient ~0 (RAL.md §3), parameters moved, weights still on the GPU.

Prints one JSON line per check and exits non-zero when any fails; writes ``--out``. ``--device cpu`` runs the
same checks on the CPU (gloo instead of NCCL) to try the script itself on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from the working tree, uninstalled

import torch  # noqa: E402

from ral_dist.config import DataConfig  # noqa: E402
from ral_dist.data import GroundedVQAConfig  # noqa: E402
from ral_dist.data import generate as generate_samples  # noqa: E402
from ral_dist.models import append_response, get_adapter  # noqa: E402
from ral_dist.models.capture import (  # noqa: E402
    ATTN_IMPLEMENTATION,
    reference_attention_policy,
    response_rows,
    use_capture_attention,
)
from ral_dist.models.generation import eos_mask, forward_responses  # noqa: E402
from ral_dist.models.prompting import visual_prompt  # noqa: E402

FAMILY = "qwen2_5_vl"
TOLERANCE = {  # (max |Δp|, mean |Δp| over valid rows, mean |Δ log-prob|)
    "float32": (1e-4, 1e-5, 1e-4),
    "bfloat16": (2e-2, 1e-3, 5e-2),
}


@torch.no_grad()
def check_capture(device: torch.device, dtype_name: str, n_prompts: int = 4, max_new_tokens: int = 16) -> dict:
    dtype = getattr(torch, dtype_name)
    adapter = get_adapter(FAMILY)
    model, processor = adapter.build_tiny(seed=0)
    use_capture_attention(model)
    model.to(device, dtype).eval()
    tok, eos = processor.tokenizer, adapter.eos_token_ids(processor)
    samples = generate_samples(GroundedVQAConfig(fraction_video=0.5), "val", n_prompts)
    batch = adapter.encode(processor, [visual_prompt(s, DataConfig()) for s in samples])
    batch = dataclasses.replace(batch, inputs={k: v.to(device) for k, v in batch.inputs.items()})

    t0 = time.perf_counter()
    out = model.generate(**batch.inputs, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                         pad_token_id=tok.pad_token_id, suppress_tokens=adapter.banned_token_ids(processor))
    response = out[:, batch.prompt_len:]
    mask = eos_mask(response, eos)
    response = torch.where(mask.bool(), response, torch.full_like(response, tok.pad_token_id))
    fwd = forward_responses(adapter, model, batch, response, mask, tok.pad_token_id, capture=True)
    logprobs, policy = fwd.logprobs, fwd.attention
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0

    model.set_attn_implementation("eager")
    inputs = append_response(batch.inputs, response, mask, tok.pad_token_id)
    eager = model(**inputs, output_attentions=True)
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    rows = response_rows(batch.prompt_len, mask)
    reference = reference_attention_policy(eager.attentions[-1].float().cpu(), rows.cpu(),
                                           inputs["attention_mask"].cpu())
    P, R = batch.prompt_len, response.shape[1]
    ref_lp = torch.log_softmax(eager.logits[:, P - 1 : P - 1 + R].float(), -1)
    ref_lp = ref_lp.gather(-1, response[..., None]).squeeze(-1) * mask

    valid = mask.bool().cpu()
    dp = (policy.float().cpu() - reference).abs()[valid]
    dlp = (logprobs.float() - ref_lp).abs().cpu()[valid]
    row_sums = policy.float().cpu()[valid].sum(-1)
    max_tol, mean_tol, lp_tol = TOLERANCE[dtype_name]
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    result = {"check": f"capture_{dtype_name}", "device": name, "rows": int(valid.sum()),
              "max_abs_dp": float(dp.max()), "mean_abs_dp": float(dp.mean()), "mean_abs_dlogprob": float(dlp.mean()),
              "row_sum_err": float((row_sums - 1).abs().max()), "generate_and_score_s": seconds}
    result["ok"] = (result["max_abs_dp"] <= max_tol and result["mean_abs_dp"] <= mean_tol
                    and result["mean_abs_dlogprob"] <= lp_tol and result["row_sum_err"] <= 1e-3)
    return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_learner(device: torch.device) -> dict:
    from ral_dist.actors.learner import Learner
    from ral_dist.algorithms import group_advantages
    from ral_dist.config import RLJobConfig
    from ral_dist.messages.collate import trajectories_from_generation
    from ral_dist.models import build_policy
    from ral_dist.models.generation import generate

    G, seed = 4, 0
    # trajectories from the version-0 policy, sampled on the CPU (what a rollout worker ships)
    adapter, model, processor = build_policy(FAMILY, None, {}, seed=seed)
    use_capture_attention(model)
    samples = generate_samples(GroundedVQAConfig(), "train", 2)
    gen = generate(adapter, model, processor, [visual_prompt(s, DataConfig()) for s in samples], num_samples=G,
                   max_new_tokens=8, temperature=1.0, capture=True, capture_question=True, seed=seed)
    trajs = trajectories_from_generation(gen, [s for s in samples for _ in range(G)], [i // G for i in range(2 * G)],
                                         version=0, temporal_patch=2, max_new_tokens=8, wire_dtype=torch.float32)
    rewards = torch.tensor([1.0, 0.0, 0.1, 0.9, 0.0, 1.0, 0.3, 0.0])
    advantages = group_advantages(rewards, G).tolist()  # same order as trajs

    config = RLJobConfig.model_validate({
        "run": {"seed": seed}, "model": {"family": FAMILY, "dtype": "bfloat16"},
        "rollout": {"temperature": 1.0, "max_new_tokens": 8},
        # recompute: p_old from the bf16 learner itself (the fp32 rollout's rows differ by bf16 rounding)
        "learner": {"num_ranks": 1, "zero_stage": 2, "lr": 1e-3, "lambda_attn": 1.0, "num_minibatches": 2,
                    "old_policy": "recompute"},
    }).model_dump(mode="json")
    t0 = time.perf_counter()
    learner = Learner(0, 1, "127.0.0.1", _free_port(), config)
    module = learner.ds_engine.module
    before = {n: p.detach().float().clone() for n, p in module.named_parameters()}
    stats = learner.train_step(0, trajs, advantages)
    moved = sum(not torch.equal(before[n], p.detach().float()) for n, p in module.named_parameters())
    on_device = all(p.device.type == device.type for p in module.parameters())
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    result = {"check": f"learner_{backend}_zero2_bf16", "backend": dist.get_backend(), "updates": stats.updates,
              "loss": stats.loss, "attn_grad_norm_by_minibatch": stats.attn_grad_norm_by_minibatch,
              "params_moved": moved, "params_on_device": on_device, "seconds": time.perf_counter() - t0}
    finite = all(torch.isfinite(torch.tensor(getattr(stats, k))) for k in ("loss", "kl", "policy_loss", "attn_loss"))
    by_mb = stats.attn_grad_norm_by_minibatch
    result["ok"] = (result["backend"] == backend and stats.updates == 2 and finite and by_mb[1] > 0
                    and by_mb[0] <= 1e-3 * by_mb[1] and moved > 0 and on_device)
    dist.destroy_process_group()
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(Path(os.environ.get("OUT", ROOT / "bench" / "results")) / "gpu_check.json"))
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: this check is for a GPU machine (--device cpu tries it on the CPU)", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    checks = {"capture_float32": lambda: check_capture(device, "float32"),
              "capture_bfloat16": lambda: check_capture(device, "bfloat16"),
              "learner": lambda: check_learner(device)}
    results = []
    for name, check in checks.items():
        try:
            results.append(check())
        except Exception as exc:  # noqa: BLE001 — report every check, fail at the end
            results.append({"check": name, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]})
        print(json.dumps(results[-1]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"torch": torch.__version__, "device": args.device, "results": results},
                                         indent=1))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
