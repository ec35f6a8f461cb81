"""The systems summary table (figure, measured, goal, met?, command) from bench/results/*.json.

    .venv/bin/python bench/summary.py      # prints the Markdown table and writes bench/results/systems_summary.md

bench/RESULTS.md's "## Systems" section carries this table as measured; rerun after `make bench` to refresh it.
"""

from __future__ import annotations

import json
import sys

import common

# result file → the command that regenerates it
SOURCES = {
    "rollout_capture": "python bench/rollout_capture.py",
    "learner_step_zero0": "python bench/learner_step.py",
    "learner_step_zero2": "python bench/learner_step.py --zero-stage 2",
    "rollout_scaling": "python bench/rollout_scaling.py",
    "rl_loop": "python bench/rl_loop.py",
    "rl_loop_grpo": "python bench/rl_loop.py --set learner.lambda_attn=0 --name rl_loop_grpo",
}


def rows() -> list[dict]:
    out = []
    for name, command in SOURCES.items():
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
    lines = ["| figure | measured: median [min–max] | goal | met? | command |", "|---|---|---|---|---|"]
    for r in table:
        met = "—" if not r.get("goal") else ("yes" if r["met"] else "**no**")
        lines.append(f"| {r['figure']} | {fmt(r['value'])} [{fmt(r['min'])}–{fmt(r['max'])}] | "
                     f"{r.get('goal') or '—'} | {met} | `{r['command']}` |")
    return "\n".join(lines) + "\n"


def main() -> int:
    table = rows()
    if not table:
        print(f"no results under {common.RESULTS}: run `make bench` first", file=sys.stderr)
        return 1
    text = markdown(table)
    print(text, end="")
    (common.RESULTS / "systems_summary.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
