"""Greedy evaluation of a checkpoint on a dataset split.

    python jobs/eval.py --checkpoint DIR --split val --json OUT.json [--config JOB.yaml] [--set k=v ...]
                        [--limit N] [--heatmaps DIR] [--per-layer]

The data, prompt, media budgets and reward terms are a job config's (`--config`: an RL or distillation job's YAML,
e.g. a run directory's config.yaml; `--set data.dir=...` etc. override it); without `--config`, the data the
checkpoint was trained on (its sft_config.yaml), else the default generated task, with the default reward terms.
Writes accuracy, format_rate, attention_on_target (and its chance level target_fraction), sparsity, consistency,
any custom reward term, response_length (tokens), n and per_type to the JSON file. The attention policy is read at
the config's attention.layers (default: the last layer). `--per-layer` also prints, and writes as per_layer,
attention_on_target at every decoder layer for image and video samples beside its chance level: where the model
grounds, i.e. which layer attention.layers could name.
"""

import argparse
import json
import time
from pathlib import Path

from ral_dist.config import ConfigError, load_config
from ral_dist.distill_config import DistillJobConfig
from ral_dist.evaluation.greedy import evaluate_checkpoint
from ral_dist.evaluation.per_layer import LayerGrounding, format_table


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--json", required=True, help="where to write the metrics")
    p.add_argument("--config", default=None, help="a job config whose data and reward sections to evaluate with")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--limit", type=int, default=None, help="first N samples only")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--heatmaps", default=None, help="directory for a few attention heatmaps (PNG)")
    p.add_argument("--per-layer", action="store_true", help="attention on target at every decoder layer")
    args = p.parse_args(argv)
    data = reward = None
    layers: list[int] = [-1]
    if args.config or args.overrides:
        try:
            # the distillation job's config is the RL job's plus two sections: it reads either job's YAML
            cfg = load_config(DistillJobConfig, args.config, args.overrides)
        except ConfigError as exc:
            raise SystemExit(f"error: {exc}") from None
        data, reward, layers = cfg.data, cfg.reward, cfg.attention.layers
    t0 = time.time()
    report = evaluate_checkpoint(args.checkpoint, args.split, data, args.limit, reward, batch_size=args.batch_size,
                                 max_new_tokens=args.max_new_tokens, heatmap_dir=args.heatmaps, layers=layers,
                                 per_layer=LayerGrounding() if args.per_layer else None)
    report["eval_s"] = round(time.time() - t0, 2)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"[eval] {args.split}: accuracy {report['accuracy']:.3f} format {report['format_rate']:.3f} "
          f"on-target {report['attention_on_target']} (chance {report['target_fraction']}) n={report['n']} "
          f"-> {args.json}")
    if args.per_layer:
        print(format_table(report["per_layer"]))
    return report


if __name__ == "__main__":
    main()
