"""The benchmarks' statistics and result files (bench/common.py, bench/summary.py): what RESULTS.md's table reads."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import common  # noqa: E402
import summary  # noqa: E402


def test_spread_and_per_round_ratio_are_exact():
    assert common.spread([3.0, 1.0, 2.0, 5.0]) == {"median": 2.5, "min": 1.0, "max": 5.0, "q1": 1.25, "q3": 4.5,
                                                   "n": 4}
    # each round's ratio, not the ratio of medians: 2/1, 3/2, 12/4 -> median 2.0
    r = common.ratio([2.0, 3.0, 12.0], [1.0, 2.0, 4.0])
    assert (r["median"], r["min"], r["max"]) == (2.0, 1.5, 3.0)
    with pytest.raises(ValueError):
        common.ratio([1.0], [1.0, 2.0])  # unpaired rounds are an error, not a silent truncation


def test_goals_and_result_file(tmp_path, monkeypatch):
    assert common.goal_met(1.10, "<= 1.10") and not common.goal_met(1.11, "<= 1.10")
    assert common.goal_met(1.7, ">= 1.7") and not common.goal_met(1.69, ">= 1.7")
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    monkeypatch.setattr(summary.common, "RESULTS", tmp_path)
    common.write_result("rollout_scaling", {"figures": [
        {"figure": "speedup", "value": 1.25, "min": 0.5, "max": 1.9, "n": 21, "goal": ">= 1.7"},
        {"figure": "seconds", "value": 0.004, "min": 0.003, "max": 0.005, "goal": None}],
        "environment": {"load_avg_1m_at_end": 1.04}})
    common.write_result("real_size", {"figures": [{"figure": "sync share", "value": 0.02, "min": 0.01, "max": 0.03,
                                                   "n": 4, "goal": "<= 0.05"}]})
    saved = json.loads((tmp_path / "rollout_scaling.json").read_text())
    assert [f.get("met") for f in saved["figures"]] == [False, None]
    assert summary.main() == 0
    table = (tmp_path / "systems_summary.md").read_text().splitlines()
    assert table[0].startswith("### tiny random Qwen2.5-VL") and table[-5].startswith("### SmolLM2-135M")
    assert table[4] == "| speedup | 1.25 [0.5–1.9] | 21 | >= 1.7 | **no** | 1.0 | `python bench/rollout_scaling.py` |"
    assert table[5] == "| seconds | 0.004 [0.003–0.005] | — | — | — | 1.0 | `python bench/rollout_scaling.py` |"
    assert table[-1] == "| sync share | 0.02 [0.01–0.03] | 4 | <= 0.05 | yes | — | `python bench/real_size.py` |"
