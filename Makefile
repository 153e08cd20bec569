# latentgen — `make train` runs the default job, `make test` the default test suite.
# Both create .venv on first use and re-install only when pyproject.toml changes.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-from-pyproject
ARGS   ?=

# One thread per process: on a shared 2-core machine two threads are slower as soon as anything else runs.
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1

.PHONY: venv train test test-all test-slow evaluate sweep clean-outputs

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

## The main job on the embedded default data (see README for what it does and how long it takes).
train: $(STAMP)
	$(BIN)/python train.py $(ARGS)

## The default test suite: everything not marked slow or gpu (< 10 min on 2 CPU cores).
test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not gpu" -q $(ARGS)

## Only the slow tests, and everything.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -m "slow and not gpu" -q $(ARGS)

test-all: $(STAMP)
	$(BIN)/python -m pytest -m "not gpu" -q $(ARGS)

clean-outputs:
	rm -rf outputs multirun wandb
