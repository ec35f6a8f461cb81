#!/usr/bin/env bash
# `make demo`: start a local Ray head, submit the tiny RAL job with `ray job submit` (it trains the SFT warm
# start first if it is not cached), follow its logs, evaluate the result, and stop the cluster it started.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RAY="$(dirname "$PY")/ray"
CONFIG=${CONFIG:-jobs/configs/tiny_cpu.yaml}
DASHBOARD_PORT=${DASHBOARD_PORT:-8265}
RUN_DIR=${RUN_DIR:-runs/demo-$(date +%Y%m%d-%H%M%S)}

# Token authentication, as Ray clusters have by default: the head and the job client share this token.
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN=${RAY_AUTH_TOKEN:-$("$PY" -c 'import secrets; print(secrets.token_hex(32))')}
export RAY_USAGE_STATS_ENABLED=0
unset RAY_ADDRESS

# its own temp dir: the trap stops this head's processes only (`ray stop` would end every cluster on the machine)
RAY_TMP=$(mktemp -d /tmp/ralXXXX)  # short: Ray's socket paths live under it
trap '"$PY" -m ral_dist.runtime.ray_cluster stop "$RAY_TMP"; rm -rf "$RAY_TMP"' EXIT
"$RAY" start --head --node-ip-address=127.0.0.1 --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" \
    --num-cpus="$(nproc)" --disable-usage-stats --temp-dir="$RAY_TMP"
echo "Ray dashboard: http://127.0.0.1:$DASHBOARD_PORT"

# validated every 25 steps; TensorBoard and MLflow files in the run directory (README: "Watching a run")
"$RAY" job submit --address "http://127.0.0.1:$DASHBOARD_PORT" -- \
    "$PY" jobs/ral_grpo.py --config "$CONFIG" --run-dir "$RUN_DIR" \
    --set run.val_every=25 --set 'run.loggers=[jsonl,tensorboard,mlflow]'

last=$(ls -d "$RUN_DIR"/checkpoints/step_* | tail -n 1)
"$PY" jobs/eval.py --checkpoint "$last" --split val --json "$RUN_DIR/eval_val.json" --heatmaps "$RUN_DIR/eval_heatmaps"
echo "run directory: $RUN_DIR (config.yaml, metrics.jsonl, heatmaps/, checkpoints/, tensorboard/, mlruns/, eval_val.json)"
echo "report: $RUN_DIR/report.html"
