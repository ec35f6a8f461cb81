"""The systems summary tables, one per model size (figure, measured, repeats, goal, met?, machine load at the end,
command), from bench/results/*.json.

    .venv/bin/python bench/summary.py      # prints the Markdown table and writes bench/results/systems_summary.md

bench/RESULTS.md's "## Systems" section carries this table as measured; rerun after `make bench` to refresh it.
"""

from __future__ import annotations

import json
import sys

import common

# per model size: result file → the command that regenerates it
SOURCES = {
    "tiny random Qwen2.5-VL (1.04 M parameters; bench/common.py TINY_SYSTEMS: 16 prompts × G 8, 32 new tokens)": {
        "rl_loop": "python bench/rl_loop.py --repeats 7",
        "rl_loop_grpo": "python bench/rl_loop.py --set learner.lambda_attn=0 --name rl_loop_grpo",
        "prompt_sharing": "python bench/prompt_sharing.py --repeats 9",
        "rollout_capture": "python bench/rollout_capture.py",
        "learner_step_zero0": "python bench/learner_step.py --repeats 9",
        "learner_step_zero2": "python bench/learner_step.py --zero-stage 2",
        "rollout_scaling": "python bench/rollout_scaling.py",
    },
    "SmolLM2-135M-Instruct in SmolVLM's architecture (fp32; jobs/configs/small_real_cpu.yaml: 2 prompts × G 4, "
    "24 new tokens)": {
        "rl_loop_135m": "python bench/rl_loop.py --config jobs/configs/small_real_cpu.yaml --repeats 7 --steps 5 "
                        "--trl-steps 6 --trl-configs 2threads ddp2 --name rl_loop_135m",
        "real_size": "python bench/real_size.py",
    },
}


def rows(sources: dict[str, str]) -> list[dict]:
    out = []
    for name, command in sources.items():
        path = common.RESULTS / f"{name}.json"
        if not path.exists():
            continue
        result = json.loads(path.read_text())
        load = result.get("environment", {}).get("load_avg_1m_at_end")
        for fig in result["figures"]:
            out.append({**fig, "command": command, "load": load})
    return out


def fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) >= 0.01 else f"{v:.2g}"


def markdown(table: list[dict]) -> str:
    lines = ["| figure | measured: median [min–max] | n | goal | met? | load | command |",
             "|---|---|---|---|---|---|---|"]
    for r in table:
        met = "—" if not r.get("goal") else ("yes" if r["met"] else "**no**")
        load = f"{r['load']:.1f}" if r.get("load") is not None else "—"
        lines.append(f"| {r['figure']} | {fmt(r['value'])} [{fmt(r['min'])}–{fmt(r['max'])}] | {r.get('n', '—')} | "
                     f"{r.get('goal') or '—'} | {met} | {load} | `{r['command']}` |")
    return "\n".join(lines) + "\n"


def main() -> int:
    tables = {size: rows(sources) for size, sources in SOURCES.items()}
    if not any(tables.values()):
        print(f"no results under {common.RESULTS}: run `make bench` first", file=sys.stderr)
        return 1
    text = "\n".join(f"### {size}\n\n{markdown(table)}" for size, table in tables.items() if table)
    print(text, end="")
    (common.RESULTS / "systems_summary.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
