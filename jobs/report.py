"""The report of a run directory: report.html (self-contained, the PNGs inline) and the PNGs beside it.

    python jobs/report.py RUN_DIR

Training curves (reward, accuracy, KL, attention JSD, seconds per phase), validation curves, accuracy per question
type and a grid of attention heatmaps at the first, middle and last step (`ral_dist/evaluation/report.py`). The RL
job writes it at its end (run.report); this rewrites it at any time, also while the run goes on.
"""

import argparse
from pathlib import Path

from ral_dist.evaluation.report import write_report


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path)
    args = p.parse_args(argv)
    if not (args.run_dir / "metrics.jsonl").exists():
        raise SystemExit(f"error: {args.run_dir} has no metrics.jsonl (is it a run directory?)")
    path = write_report(args.run_dir)
    print(f"report: {path}")
    return path


if __name__ == "__main__":
    main()
