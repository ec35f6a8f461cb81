"""Cost of the last-layer attention capture against a plain forward and HF's naive ``output_attentions``.

For the tiny Qwen2.5-VL at each total length T (an image prompt, random filler tokens, then ``--rows``
"generated" tokens whose rows are captured), three variants of one forward pass, all under ``torch.no_grad``:

  (a) plain    SDPA everywhere, no capture                            (``model.set_attn_implementation("sdpa")``)
  (b) capture  ``ral_sdpa``: SDPA everywhere + ``q_rows · K^T`` on the last LM layer for the requested rows
  (c) naive    eager attention with ``output_attentions=True`` on every layer (forward only; the reduction
               to the policy is left out of its time, which can only flatter the naive variant)

Time: the variants run interleaved (a, b, c, a, b, c, ...) after a warm-up, so drift of a shared machine hits
them alike; each reports the median. Memory: the extra peak RSS of (b) and (c) over (a), each in a fresh
process (``--child``) — a process's peak RSS only ever grows, so one process per (variant, T) is needed; the
child runs (a) once, reads its peak, runs the variant and reads the peak again. The child for (a) itself gives
the noise floor of that difference (``plain_peak_mb``). Parity: max abs diff of (b)'s policy against the
reference computed from (c)'s attentions.

    .venv/bin/python bench/attention_capture.py --lengths 256 1024 2048 --rows 64 --repeats 11 [--threads 1]

Writes ``--out`` (a JSON list, one row per T) and a ``.meta.json`` sidecar with the environment and goals.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import transformers
from PIL import Image, ImageDraw

from ral_dist.models import VisualPrompt, append_response, get_adapter
from ral_dist.models.capture import (
    ATTN_IMPLEMENTATION,
    CaptureRequest,
    capture_attention,
    reference_attention_policy,
    response_rows,
)

FAMILY = "qwen2_5_vl"
BATCH = 1
VARIANTS = ("plain", "capture", "naive")
IMPLEMENTATION = {"plain": "sdpa", "capture": ATTN_IMPLEMENTATION, "naive": "eager"}
MAX_CAPTURE_OVER_PLAIN = 1.10
MIN_MEMORY_FACTOR = 10.0  # naive extra peak / capture extra peak, at the largest T


class Case:
    """The tiny model and the inputs of one total length T; ``forward`` runs one variant on them."""

    def __init__(self, total_len: int, n_rows: int, seed: int = 0):
        adapter = get_adapter(FAMILY)
        self.model, processor = adapter.build_tiny(seed=seed)
        self.attn = adapter.language_layers(self.model)[-1].self_attn
        image = Image.new("RGB", (112, 112), "white")
        ImageDraw.Draw(image).rectangle((8, 8, 40, 40), fill="red")
        batch = adapter.encode(processor, [VisualPrompt([image], "What colour is the square?")] * BATCH)
        n_filler = total_len - batch.prompt_len - n_rows
        if n_filler < 0:
            raise ValueError(f"T={total_len} is shorter than the prompt ({batch.prompt_len}) + {n_rows} rows")
        # Filler and "response" are random ordinary tokens (ids above every special one, so no image/video pad
        # sneaks in); only the last n_rows positions are captured, the filler just lengthens the prompt.
        tok = processor.tokenizer
        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(max(tok.all_special_ids) + 1, len(tok), (BATCH, n_filler + n_rows), generator=gen)
        self.inputs = append_response(batch.inputs, ids, torch.ones_like(ids), tok.pad_token_id)
        assert self.inputs["input_ids"].shape[1] == total_len
        self.rows = response_rows(total_len - n_rows, torch.ones(BATCH, n_rows, dtype=torch.long))

    def prepare(self, variant: str) -> None:
        # Switching the implementation walks the config tree; done outside the timed region.
        self.model.set_attn_implementation(IMPLEMENTATION[variant])

    @torch.no_grad()
    def forward(self, variant: str):
        """One forward of ``variant`` (already prepared): the capture request, the attentions, or None."""
        if variant == "plain":
            self.model(**self.inputs)
            return None
        if variant == "capture":
            with capture_attention(self.attn, self.rows, self.inputs["attention_mask"]) as request:
                self.model(**self.inputs)
            return request
        return self.model(**self.inputs, output_attentions=True).attentions


def peak_rss_mb() -> float:
    """This process's peak RSS in MB.

    ``ru_maxrss`` is not usable here: Linux carries the parent's high-water RSS over fork + exec into the
    child's ``ru_maxrss``, so a child spawned by a parent that already ran the naive variant starts with a peak
    above anything it does itself (every extra read as ~0). ``VmHWM`` belongs to the address space, which exec
    replaces, so it starts from zero in the child. ``ru_maxrss`` (KiB on Linux) is the fallback off Linux.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(variant: str, total_len: int, n_rows: int, seed: int) -> dict:
    """In a fresh process: extra peak RSS of one ``variant`` forward over a plain one (MB)."""
    case = Case(total_len, n_rows, seed)
    case.prepare("plain")
    case.forward("plain")
    gc.collect()
    base = peak_rss_mb()
    case.prepare(variant)
    result = case.forward(variant)
    peak = peak_rss_mb()
    del result
    return {"variant": variant, "T": total_len, "base_mb": base, "peak_mb": peak, "extra_mb": peak - base}


def measure_memory(variant: str, total_len: int, args) -> float:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", variant, "--lengths", str(total_len),
           "--rows", str(args.rows), "--threads", str(args.threads), "--seed", str(args.seed)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["extra_mb"]


def time_variants(case: Case, warmup: int, repeats: int) -> dict[str, float]:
    """Median wall seconds per variant, and the capture/plain ratios, the variants interleaved.

    ``capture_over_plain`` is the median of the per-round ratios: a capture run is compared with the plain run
    right before it, under the same load, which a ratio of two medians would not guarantee on a shared machine.
    ``capture_over_plain_cpu`` is the same from process CPU time, blind to the time spent descheduled.
    """
    wall: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for i in range(warmup + repeats):
        for variant in VARIANTS:
            case.prepare(variant)
            gc.collect()  # no collection of an earlier variant's garbage inside this timing
            start, start_cpu = time.perf_counter(), time.process_time()
            result = case.forward(variant)
            elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
            del result
            if i >= warmup:
                wall[variant].append(elapsed)
                cpu[variant].append(elapsed_cpu)
    out = {f"{v}_s": statistics.median(t) for v, t in wall.items()}
    out["capture_over_plain"] = statistics.median(c / p for c, p in zip(wall["capture"], wall["plain"], strict=True))
    out["capture_over_plain_cpu"] = statistics.median(
        c / p for c, p in zip(cpu["capture"], cpu["plain"], strict=True))
    return out


def parity(case: Case) -> float:
    case.prepare("capture")
    request: CaptureRequest = case.forward("capture")
    case.prepare("naive")
    reference = reference_attention_policy(case.forward("naive")[-1], case.rows, case.inputs["attention_mask"])
    return (request.policy - reference).abs().max().item()


def environment(args) -> dict:
    case_config = get_adapter(FAMILY).build_tiny(seed=args.seed)[0].config.get_text_config()
    return {
        "family": FAMILY, "batch_size": BATCH, "rows": args.rows, "lengths": args.lengths,
        "repeats": args.repeats, "warmup": args.warmup, "statistic": "median", "dtype": "float32",
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "transformers": transformers.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "device": "cpu",
        "chunk_rows": inspect.signature(capture_attention).parameters["chunk_rows"].default,
        "text_config": {k: getattr(case_config, k) for k in (
            "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size")},
        "time": "wall-clock medians; capture_over_plain = median of per-round capture/plain ratios",
        "memory": "extra peak RSS (VmHWM) of the variant over a plain forward, one fresh process each",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 2048])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--warmup", type=int, default=2)
    # One thread by default: on a machine shared with other jobs, two OpenMP threads on two cores spin at every
    # barrier waiting for a descheduled sibling, and a 10 ms forward reads 0.5 s (seen here); pass --threads
    # on a quiet machine.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/attention_capture.json"))
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    if args.child:
        print(json.dumps(child(args.child, args.lengths[0], args.rows, args.seed)))
        return

    meta = environment(args)
    print(f"# tiny {FAMILY}, batch {BATCH}, {args.rows} captured rows, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), median of {args.repeats} after {args.warmup} warm-up")
    header = (f"{'T':>5} {'plain_s':>9} {'capture_s':>9} {'naive_s':>9} {'cap/plain':>9} "
              f"{'cpu_ratio':>9} {'plain_mb':>8} {'cap_mb':>8} {'naive_mb':>8} {'parity':>9}")
    print(header)
    rows = []
    for total_len in args.lengths:
        case = Case(total_len, args.rows, args.seed)
        timing = time_variants(case, args.warmup, args.repeats)
        diff = parity(case)
        del case
        memory = {v: measure_memory(v, total_len, args) for v in VARIANTS}
        row = {"T": total_len, **timing, "capture_peak_mb": memory["capture"], "naive_peak_mb": memory["naive"],
               "plain_peak_mb": memory["plain"],  # plain over plain: the noise floor of the two above
               "parity_max_abs_diff": diff}
        rows.append(row)
        print(f"{total_len:>5} {row['plain_s']:>9.4f} {row['capture_s']:>9.4f} {row['naive_s']:>9.4f} "
              f"{row['capture_over_plain']:>9.3f} {row['capture_over_plain_cpu']:>9.3f} "
              f"{row['plain_peak_mb']:>8.1f} {row['capture_peak_mb']:>8.1f} {row['naive_peak_mb']:>8.1f} "
              f"{diff:>9.2e}", flush=True)

    largest = max(rows, key=lambda r: r["T"])
    meta["goals"] = {
        "capture_over_plain_max": max(r["capture_over_plain"] for r in rows),
        "capture_over_plain_ok": all(r["capture_over_plain"] <= MAX_CAPTURE_OVER_PLAIN for r in rows),
        f"memory_factor_ok_at_T{largest['T']}":
            largest["capture_peak_mb"] * MIN_MEMORY_FACTOR <= largest["naive_peak_mb"],
    }
    print("# goals:", json.dumps(meta["goals"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    args.out.with_suffix(".meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"# wrote {args.out} and {args.out.with_suffix('.meta.json')}")


if __name__ == "__main__":
    main()
