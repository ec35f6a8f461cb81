"""Greedy evaluation of a checkpoint on a dataset split.

    python jobs/eval.py --checkpoint DIR --split val --json OUT.json [--data-dir DIR] [--limit N] [--heatmaps DIR]

Without --data-dir the dataset is the one the checkpoint was trained on (its sft_config.yaml), else the default
generated task. Writes accuracy, format_rate, attention_on_target (and its chance level target_fraction),
sparsity, consistency, n and per_type to the JSON file.
"""

import argparse
import json
import time
from pathlib import Path

from ral_dist.evaluation.greedy import evaluate_checkpoint


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--json", required=True, help="where to write the metrics")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--mode", choices=["think", "answer_only"], default=None, help="prompt format (default: as trained)")
    p.add_argument("--limit", type=int, default=None, help="first N samples only")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--heatmaps", default=None, help="directory for a few attention heatmaps (PNG)")
    args = p.parse_args(argv)
    t0 = time.time()
    report = evaluate_checkpoint(args.checkpoint, args.split, args.data_dir, args.mode, args.limit,
                                 batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                                 heatmap_dir=args.heatmaps)
    report["eval_s"] = round(time.time() - t0, 2)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"[eval] {args.split}: accuracy {report['accuracy']:.3f} format {report['format_rate']:.3f} "
          f"on-target {report['attention_on_target']} (chance {report['target_fraction']}) n={report['n']} "
          f"-> {args.json}")
    return report


if __name__ == "__main__":
    main()

