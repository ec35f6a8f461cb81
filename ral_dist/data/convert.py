"""Command line: convert a Video-R1 file to our normalised JSONL, or export the synthetic task in the Video-R1 schema.

    python -m ral_dist.data.convert --from video_r1 --json Video-R1-260k.json --root DIR --out OUT [--split train]
        OUT/{split}.jsonl: our Sample fields (media paths as in the file, ``root`` absolute), the rows that load;
        OUT/{split}.skipped.jsonl: the others with their reasons. Prints the counts per reason.

    python -m ral_dist.data.convert --export-synthetic --out OUT [--sizes train=64,val=16] [--seed 0]
                                    [--stage 4] [--fraction-video 0.5] [--fps 1.0]
        OUT/{split}.json in the Video-R1 schema with mp4 videos and PNG images (:mod:`ral_dist.data.export`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .export import export_synthetic
from .rows import write_skipped
from .video_r1 import read_video_r1
from .vqa_config import CURRICULUM, GroundedVQAConfig


def _sizes(text: str) -> dict[str, int]:
    try:
        pairs = [item.split("=", 1) for item in text.split(",") if item]
        return {name.strip(): int(n) for name, n in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected split=N[,split=N...], got {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ral_dist.data.convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--from", dest="source", choices=["video_r1"], help="convert a file of this schema")
    what.add_argument("--export-synthetic", action="store_true", help="write the synthetic task as Video-R1")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--json", type=Path, help="--from: the JSON array or JSONL file")
    p.add_argument("--root", type=Path, help="--from: folder its media paths are relative to (default: its folder)")
    p.add_argument("--split", default="train", help="--from: name of the split written (default train)")
    p.add_argument("--workers", type=int, default=8, help="--from: threads checking media headers")
    p.add_argument("--sizes", type=_sizes, default={"train": 64, "val": 16}, help="--export-synthetic: split=N,...")
    p.add_argument("--seed", type=int, default=0, help="--export-synthetic: generator seed")
    p.add_argument("--stage", type=int, default=len(CURRICULUM) - 1,
                   help="--export-synthetic: curriculum stage of the question types (default: all types)")
    p.add_argument("--fraction-video", type=float, default=0.5, help="--export-synthetic: share of video rows")
    p.add_argument("--fps", type=float, default=1.0, help="--export-synthetic: frame rate of the mp4 files")
    return p


def _convert(args: argparse.Namespace) -> int:
    if args.json is None:
        print("--from video_r1 needs --json FILE", file=sys.stderr)
        return 2
    samples, skipped = read_video_r1(args.json, root=args.root, workers=args.workers)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"{args.split}.jsonl"
    with open(out, "w", encoding="utf-8") as fh:
        for s in samples:
            fh.write(json.dumps(s.to_record(), ensure_ascii=False) + "\n")
    skipped_path = args.out / f"{args.split}.skipped.jsonl"
    skipped_path.unlink(missing_ok=True)
    counts = write_skipped(skipped, skipped_path, args.split)
    print(f"{len(samples)} rows -> {out}; {len(skipped)} skipped -> {skipped_path}")
    for reason, n in counts.items():
        print(f"  {n:>8}  {reason}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.export_synthetic:
            task = GroundedVQAConfig.at_stage(args.stage, seed=args.seed, fraction_video=args.fraction_video)
            for split, path in export_synthetic(task, args.out, args.sizes, args.fps).items():
                print(f"{split}: {path}")
            return 0
        return _convert(args)
    except (OSError, ValueError) as e:  # a missing or unparsable input: the reason, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
