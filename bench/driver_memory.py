"""How much memory the job driver's dataset takes: resident set size after the driver's data loading
(`ral_dist.driver._load_data`: reading, validating, probing media headers) for a Video-R1-schema dataset of N video
rows (the synthetic task exported with mp4 files), each N in a fresh process.

    python bench/driver_memory.py [--rows 200 2000]

Before issue 18 the driver decoded every training frame into its own memory, so its RSS grew with the frames;
now samples carry paths and the growth is that of the row objects. Writes bench/results/driver_memory.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import common

PROBE = """
import json, resource, sys
import psutil
from ral_dist.config import RLJobConfig
from ral_dist.driver import _load_data
from ral_dist.runtime.run_dir import RunDir
cfg = RLJobConfig.model_validate({"data": {"format": "video_r1", "dir": sys.argv[1], "files": {"train": "train.json",
                                  "val": "val.json"}}})
before = psutil.Process().memory_info().rss
train, _, _ = _load_data(cfg, RunDir(sys.argv[2]))
after = psutil.Process().memory_info().rss
print(json.dumps({"rows": len(train), "rss_before_mb": before / 2**20, "rss_after_mb": after / 2**20,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(rows: int, work: Path) -> dict:
    data = work / f"video_r1_{rows}"
    subprocess.run([sys.executable, "-m", "ral_dist.data.convert", "--export-synthetic", "--out", str(data),
                    "--sizes", f"train={rows},val=4", "--stage", "4", "--fraction-video", "1.0"], check=True,
                   capture_output=True, cwd=common.ROOT)
    out = subprocess.run([sys.executable, "-c", PROBE, str(data), str(work / f"run_{rows}")], check=True,
                         capture_output=True, text=True, cwd=common.ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[200, 2000])
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(n, Path(tmp)) for n in args.rows]
    for r in rows:
        r["growth_mb"] = r["rss_after_mb"] - r["rss_before_mb"]
    common.print_table(rows, ["rows", "rss_before_mb", "rss_after_mb", "growth_mb", "peak_mb"])
    first, last = rows[0], rows[-1]
    per_row_kb = (last["growth_mb"] - first["growth_mb"]) * 1024 / max(1, last["rows"] - first["rows"])
    print(f"driver growth per extra video row: {per_row_kb:.1f} KB (its 4 decoded 112x112 RGB frames would be "
          "147 KB)")
    common.write_result("driver_memory", {"rows": rows, "growth_per_row_kb": per_row_kb,
                                          "environment": common.environment()})


if __name__ == "__main__":
    main()
