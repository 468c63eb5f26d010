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

.PHONY: run setup dataset test test-fast repro mlflow-ui bench bench-frontier bench-tools browser-tools lint lint-tools

# `make run` records its own wall time (setup + dataset + dvc repro + commit: from when make started) in RUN_CLOCK
# (git-ignored, under .cache/), where bench/default_run.py reads it.
RUN_CLOCK := .cache/make_run.json
MAKE_STARTED := $(shell date +%s)

run: setup dataset  ## set up and run the whole pipeline (dvc repro) on the default dataset; commit the run
	@repro=$$SECONDS; time dvc repro || exit 1; repro=$$((SECONDS - repro)); \
	if git rev-parse -q --verify HEAD >/dev/null 2>&1; then mlops commit-run || exit 1; committed=true; \
	else echo "not a git working copy: the run was not committed, so no version became challenger (see README)"; \
	  committed=false; fi; \
	total=$$(($$(date +%s) - $(MAKE_STARTED))); mkdir -p $(dir $(RUN_CLOCK)); \
	printf '{"seconds": %d, "dvc_repro_seconds": %d, "committed": %s, "finished_at": "%s"}\n' \
	  "$$total" "$$repro" "$$committed" "$$(date -u +%Y-%m-%dT%H:%M:%SZ)" >$(RUN_CLOCK); \
	echo "make run: $$total s in all (recorded in $(RUN_CLOCK))"

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

test: setup dataset bench-tools browser-tools  ## the full test suite (unit, data, model, integration; hey for the serving latency check)
	$(BIN)/python -m pytest -q -ra --durations=15

test-fast: setup  ## everything but the integration tier
	$(BIN)/python -m pytest -q -m "not integration"

# `make fuzz`: the property-based tests (tests/reliability/test_fuzz_*.py) under the "fuzz" Hypothesis profile of
# tests/conftest.py: 5,000 examples per test instead of the "ci" profile's fixed-seed few. A failure prints its
# reproduction blob and is kept in .cache/hypothesis, where every later run replays it first.
.PHONY: fuzz
fuzz: setup  ## long property-based fuzzing: model-server request bodies (in-process + real HTTP) and params.yaml
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q --hypothesis-show-statistics \
	  tests/reliability/test_fuzz_server.py tests/reliability/test_fuzz_params.py

# the reliability tier with 20 seeded kill -9 trials per operation (CI runs 2: FAULT_TRIALS' default); replay one
# trial with FAULT_TRIALS=1 FAULT_SEED=<seed>; the fault table is printed at the end
.PHONY: reliability
reliability: setup  ## fault trials: kill -9 at 20 seeded random moments per operation, invariants checked
	FAULT_TRIALS=20 $(BIN)/python -m pytest tests/reliability -q --durations=15

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

# `make bench` (after `make run`): every section of bench/results.json measured again, then bench/RESULTS.md and the
# README's results table (bench/report.py). Estimated wall time on 2 otherwise idle cores, from each script's
# workload and the earlier figures in results.json (a full run's fixed cost ~60 s; fast_net ~1,000 images/s):
#   orchestration   ~14 min  3 + 3 alternating full runs (1,000 images/class, 3 epochs: ~110 s each), 3 + 3 no-ops
#   training         ~5 min  3 + 3 alternating fresh-process runs, seed CNN, 3 epochs on the full train split
#   input_pipeline   ~1 min  3 epochs through the array path + 60 training steps
#   compression      ~2 min  every variant on the 10,000 test images: accuracy, latency, batch-256 rate
#   scaling          ~5 min  ingest/validate/1 epoch at 25/50/100 % + a 60,000-PNG folder ingest
#   run_overhead    ~11 min  a seed run + 3 trials of (standing-workspace retrain, clone-based run)
#   default_run      <1 min  reads the workspace's metrics (nothing re-measured)
#   serving          ~2 min  raw interpreter rates + 5 load levels of 10 s (needs a champion: mlops promote)
#   report           <1 min
#   total           ~41 min  (target: within 60 min)
bench: setup dataset bench-tools  ## benchmark suite (after `make run`): bench/results.json, RESULTS.md, README table
	@start=$$SECONDS; set -e; cd bench; \
	step() { local t=$$SECONDS; echo "=== bench: $$*"; $(BIN)/python "$$@"; echo "=== bench: $$1 $$((SECONDS - t)) s"; }; \
	step orchestration.py; step training.py; step input_pipeline.py; step compression.py --workspace ..; \
	step scaling.py; step run_overhead.py; step default_run.py --workspace ..; \
	if (cd .. && $(BIN)/mlops status 2>/dev/null) | grep -q "'champion': '"; then alias=champion; else alias=challenger; fi; \
	step serving.py --workspace .. --alias $$alias; step serving_capture.py --runs 3; \
	step report.py; \
	echo "make bench: $$((SECONDS - start)) s in all ($$(((SECONDS - start) / 60)) min)"

# bench-frontier: ~65 min on 2 cores for the frontier (points cached in .cache/frontier by code + config + data),
# ~4 min for bench/precision.py
bench-frontier: setup dataset  ## the accuracy / wall-time frontier, the float32 vs bfloat16 lever, then the reports
	cd bench && $(BIN)/python frontier.py && $(BIN)/python precision.py && $(BIN)/python report.py

bench-tools:  ## hey (the serving benchmark's load generator) from apt when missing
	@if ! command -v hey >/dev/null; then \
	  if command -v apt-get >/dev/null; then \
	    $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq hey; \
	  else echo "no apt-get: install hey (https://github.com/rakyll/hey) and rerun" >&2; exit 1; fi; \
	fi

browser-tools:  ## headless Chromium + chromedriver from apt when missing (the browser tests of the approval path)
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if command -v apt-get >/dev/null; then \
	    $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium chromium-driver; \
	  else echo "no apt-get: install Chromium and its chromedriver (same version) and rerun" >&2; exit 1; fi; \
	fi

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
