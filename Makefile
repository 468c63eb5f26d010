# The README's two commands: `make run` (set up + full pipeline on Fashion-MNIST) and `make test`.
# `make lint`: the static checks (ruff, mypy, import-linter contracts, shellcheck), as CI runs them before the tests.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONUNBUFFERED := 1
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run setup dataset test test-fast repro mlflow-ui bench lint lint-tools

run: setup dataset  ## set up and run the whole pipeline (dvc repro) on the default dataset; commit the run
	time dvc repro
	@if git rev-parse -q --verify HEAD >/dev/null 2>&1; then mlops commit-run; \
	 else echo "not a git working copy: the run was not committed, so no version became challenger (see README)"; fi

repro:  ## rerun only what changed
	dvc repro

# GPU=1: also the `gpu` extra (JAX with CUDA), so `train.backend: auto` trains on the machine's NVIDIA GPU
GPU ?= 0
COMMA := ,
EXTRAS := dev$(if $(filter 1,$(GPU)),$(COMMA)gpu)
INSTALLED := $(VENV)/.installed-$(subst $(COMMA),-,$(EXTRAS))

setup: $(INSTALLED)

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
	touch $@

dataset: setup  ## data/raw/fashion-mnist as data/raw/fashion-mnist.dvc pins it: dvc pull, else the Debian package
	$(BIN)/python infra/local/dataset.py

test: setup dataset  ## the full test suite (unit, data, model, integration)
	$(BIN)/python -m pytest -q -ra --durations=15

test-fast: setup  ## everything but the integration tier
	$(BIN)/python -m pytest -q -m "not integration"

# Python: ruff on the packages, the benchmark scripts and infra/'s helpers; mypy (files: pyproject.toml) on the
# packages and infra/local/'s helpers; import-linter (contracts: pyproject.toml) on the packages.
# Shell: every script under infra/ and bench/, and the CI entry point.
LINT_PY := pipeline flows bench infra
SHELL_SCRIPTS = .ci/run $(sort $(wildcard infra/*/*.sh bench/*.sh))

lint: setup lint-tools  ## static checks; every check runs, then the target fails if any failed
	@failed=(); \
	check() { local name="$$1"; shift; echo "=== $$name: $$*"; if "$$@"; then echo "=== $$name: ok"; \
	          else echo "=== $$name: FAILED"; failed+=("$$name"); fi; }; \
	check "ruff check" $(BIN)/ruff check $(LINT_PY); \
	check "ruff format" $(BIN)/ruff format --check $(LINT_PY); \
	check "mypy" $(BIN)/mypy; \
	check "import-linter" $(BIN)/lint-imports --no-logo; \
	check "shellcheck" shellcheck $(SHELL_SCRIPTS); \
	if (( $${#failed[@]} )); then echo "make lint: failed: $${failed[*]}" >&2; exit 1; fi; \
	echo "make lint: all checks passed"

lint-tools:  ## shellcheck from apt when missing (the Python tools come with `make setup`: the dev extra)
	@if ! command -v shellcheck >/dev/null; then \
	  if command -v apt-get >/dev/null; then \
	    $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq shellcheck; \
	  else echo "no apt-get: install shellcheck (https://www.shellcheck.net) and rerun" >&2; exit 1; fi; \
	fi

mlflow-ui:  ## browse runs and the model registry of the embedded store
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow/mlflow.db --port 5000

bench: setup dataset  ## benchmark suite (after `make run`): results in bench/results.json and bench/RESULTS.md
	cd bench && $(BIN)/python orchestration.py && $(BIN)/python training.py && \
	  $(BIN)/python compression.py --workspace .. && $(BIN)/python scaling.py && \
	  $(BIN)/python input_pipeline.py && $(BIN)/python report.py

# --- the local service stack (infra/local/stack.sh; see infra/README.md) -----------------------------------
.PHONY: stack-up stack-down stack-status run-stack

stack-up: setup  ## start S3 (nanio) + MLflow server + Prefect server/worker locally; configures the DVC remote
	infra/local/stack.sh up

stack-down:  ## stop exactly what stack-up started
	infra/local/stack.sh down

stack-status:  ## one line per service; non-zero when something is down
	infra/local/stack.sh status

run-stack: setup dataset stack-up  ## the pipeline against the stack: runs and models in MLflow/S3, data pushed to S3
	source <(infra/local/stack.sh env) && time dvc repro && dvc push
