#!/usr/bin/env bash
# The device check of a machine with one GPU (bench/gpu_check.py says what each check does and passes): one
# PASS/FAIL/SKIP line per check, JSON to $OUT/gpu_check.json (bench/results/ without $OUT), within 8 minutes.
#
#   here, once:   bench/gpu_check.sh --prepare     wheels of DeepSpeed and the small packages an offline GPU image may
#                                                  lack -> bench/gpu_wheels/ (GPU_PYTHON=3.x if the image's differs)
#   on the GPU:   bench/gpu_check.sh               CUDA torch + transformers there; missing packages come from
#                                                  bench/gpu_wheels (run tool: carry ["bench/gpu_wheels"]); vLLM and
#                                                  Ray, if absent, from the package index when it is reachable
#   here:         bench/gpu_check.sh --dry-run     every check on the CPU (.venv; vLLM from .venv-vllm)
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=bench/gpu_wheels
VLLM_PIN="vllm==0.32.0"  # pyproject.toml's gpu extra
# import name:distribution — DeepSpeed, its requirements, and what ral_dist imports beyond torch/transformers
DEPS="deepspeed:deepspeed hjson:hjson cpuinfo:py-cpuinfo ninja:ninja msgpack:msgpack einops:einops
      pydantic:pydantic pydantic_core:pydantic-core annotated_types:annotated-types
      typing_inspection:typing-inspection yaml:pyyaml PIL:pillow safetensors:safetensors psutil:psutil
      av:av cachetools:cachetools jinja2:jinja2 jiwer:jiwer rapidfuzz:rapidfuzz rouge_score:rouge-score
      nltk:nltk absl:absl-py"
SDIST_ONLY=" deepspeed rouge-score "  # no wheels on the index: built here (pure Python; DeepSpeed's ops JIT-build)
export DS_BUILD_OPS=0 RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1

if [[ "${1:-}" == "--prepare" ]]; then
  PY=${PY:-.venv/bin/python}
  mkdir -p "$WHEELS"
  pyver=${GPU_PYTHON:-$($PY -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}
  version() { $PY -c "from importlib.metadata import version; print(version('$1'))"; }
  for dist in $SDIST_ONLY; do $PY -m pip wheel -q --no-deps -w "$WHEELS" "$dist==$(version "$dist")"; done
  # pinned to the versions of the preparing environment (pydantic and pydantic-core must match each other)
  others=$(for d in $DEPS; do [[ $SDIST_ONLY == *" ${d#*:} "* ]] || echo "${d#*:}==$(version "${d#*:}")"; done)
  # shellcheck disable=SC2086
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$WHEELS" $others
  # vLLM (~0.5 GB with its CUDA torch) and Ray (~70 MB) exceed what a carried folder holds: the GPU side
  # installs them from the index, or skips the checks that need them (vllm, tiny_job)
  du -sh "$WHEELS"
  exit 0
fi

if [[ "${1:-}" == "--dry-run" ]]; then
  PY=${PY:-.venv/bin/python}
  VLLM_PY=${VLLM_PY:-$([[ -x .venv-vllm/bin/python ]] && echo .venv-vllm/bin/python || true)}
  exec $PY bench/gpu_check.py --dry-run --vllm-python "$VLLM_PY" --budget-s "${BUDGET_S:-1500}" \
    ${OUT:+--out "$OUT/gpu_check.json"}
fi

PY=${PY:-python3}
missing=()
for d in $DEPS; do
  $PY -c "import ${d%%:*}" 2>/dev/null || missing+=("${d#*:}")
done
if ((${#missing[@]})); then
  echo "installing from $WHEELS: ${missing[*]}"
  $PY -m pip install -q --no-index --no-deps --find-links "$WHEELS" "${missing[@]}"
fi
$PY -c "import torch, transformers, deepspeed; assert torch.cuda.is_available(), 'no CUDA device';
print('torch', torch.__version__, '| cuda', torch.version.cuda, '| transformers', transformers.__version__,
      '| deepspeed', deepspeed.__version__, '|', torch.cuda.get_device_name())"
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/torch_extensions}
# Ray for the tiny job, into this Python (no torch pin); vLLM into its own venv beside the image's packages, as it
# pins its own CUDA torch. Neither is fatal: without the index their checks print SKIP.
$PY -c "import ray" 2>/dev/null || timeout 120 $PY -m pip install -q --retries 0 --timeout 10 "ray[default]>=2.40" || true
VLLM_PY=""
if $PY -c "import vllm" 2>/dev/null; then
  VLLM_PY=$PY
else
  VENV=${VLLM_VENV:-/tmp/ral_vllm_venv}
  [[ -x $VENV/bin/python ]] || $PY -m venv --system-site-packages "$VENV"
  "$VENV/bin/python" -c "import vllm" 2>/dev/null ||
    timeout 300 "$VENV/bin/pip" install -q --retries 0 --timeout 10 "$VLLM_PIN" || true
  if "$VENV/bin/python" -c "import vllm" 2>/dev/null; then VLLM_PY=$VENV/bin/python; fi
fi
exec $PY bench/gpu_check.py --vllm-python "$VLLM_PY" ${OUT:+--out "$OUT/gpu_check.json"}
