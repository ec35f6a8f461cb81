#!/usr/bin/env bash
# GPU check for a lent machine (CUDA torch + transformers there; no vLLM, no network): the hf engine and the
# attention capture on CUDA in fp32/bf16 against eager, and the DeepSpeed learner on one GPU over NCCL
# (bench/gpu_check.py says what passes).
#
#   here, once:   bench/gpu_check.sh --prepare     wheels of DeepSpeed and the small packages the image may lack
#                                                  -> bench/gpu_wheels/ (GPU_PYTHON=3.x if the image's differs)
#   on the GPU:   bench/gpu_check.sh               run tool: carry ["bench/gpu_wheels"]; results land in $OUT
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=bench/gpu_wheels
PY=${PY:-python3}
# import name:distribution — DeepSpeed, its requirements, and what ral_dist imports beyond torch/transformers
DEPS="deepspeed:deepspeed hjson:hjson cpuinfo:py-cpuinfo ninja:ninja msgpack:msgpack einops:einops
      pydantic:pydantic pydantic_core:pydantic-core annotated_types:annotated-types
      typing_inspection:typing-inspection yaml:pyyaml PIL:pillow safetensors:safetensors psutil:psutil"

if [[ "${1:-}" == "--prepare" ]]; then
  mkdir -p "$WHEELS"
  pyver=${GPU_PYTHON:-$($PY -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}
  # DeepSpeed ships an sdist; with DS_BUILD_OPS=0 it builds to a small pure-Python wheel (ops JIT-build if used)
  ds=$($PY -c "from importlib.metadata import version; print(version('deepspeed'))")
  DS_BUILD_OPS=0 $PY -m pip wheel -q --no-deps -w "$WHEELS" "deepspeed==$ds"
  # pinned to the versions of the preparing environment (pydantic and pydantic-core must match each other)
  others=$(for d in $DEPS; do [[ ${d#*:} == deepspeed ]] || \
    $PY -c "from importlib.metadata import version; print('${d#*:}==' + version('${d#*:}'))"; done)
  # shellcheck disable=SC2086
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$WHEELS" $others
  du -sh "$WHEELS"
  exit 0
fi

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
export DS_BUILD_OPS=0 RAY_USAGE_STATS_ENABLED=0
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-${OUT:-/tmp}/torch_extensions}
exec $PY bench/gpu_check.py ${OUT:+--out "$OUT/gpu_check.json"}
