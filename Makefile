# ral_dist — one command per task; `make test` and `make demo` install everything on a fresh machine.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# The CPU wheel of torch lies on this machine's disk; it must be installed first and alone, or a dependency's
# loose `torch` requirement pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
# Hides the machine-level pip index warnings, nothing else.
QUIET_PIP := { grep -v "is ignored: it is neither a file nor a directory" || true; }

export DS_BUILD_OPS := 0
export TORCH_EXTENSIONS_DIR ?= $(HOME)/.cache/ral_dist/torch_extensions
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: setup test demo bench lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip 2>&1 | $(QUIET_PIP)
	$(PIP) install -q "$(TORCH_SPEC)" 2>&1 | $(QUIET_PIP)
	$(PIP) install -q -e '.[dev]' 2>&1 | $(QUIET_PIP)
	$(PY) -c "import torch, transformers, deepspeed, ray; print('torch', torch.__version__, '| transformers', transformers.__version__, '| deepspeed', deepspeed.__version__, '| ray', ray.__version__)"
	@! $(PY) -c "import torchvision" 2>/dev/null || (echo "torchvision must not be installed in the CPU environment" && exit 1)
	touch $@

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .

# A local Ray head, the tiny RAL job through `ray job submit` (SFT warm start trained once and cached), evaluation.
demo: setup
	PY=$(PY) jobs/demo.sh

bench: setup
	$(PY) bench/attention_capture.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
