# latentgen — `make train` runs the default job, `make test` the default test suite.
# Both create .venv on first use and re-install only when pyproject.toml changes.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-from-pyproject
ARGS   ?=

# Tests run one thread per process: several test processes (DDP ranks, CLI runs) share the cores, and on
# a 2-core machine two threads each are slower than one. `make train` uses every core (torch's default)
# unless OMP_NUM_THREADS is set in the environment.
TEST_ENV := OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=$${MKL_NUM_THREADS:-1}

.PHONY: venv train test test-all test-slow test-slurm lint evaluate sweep clean-outputs

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

## The main job on the embedded default data (see README for what it does and how long it takes).
train: $(STAMP)
	$(BIN)/python train.py $(ARGS)

## The default test suite: everything not marked slow, gpu or slurm (< 10 min on 2 CPU cores).
test: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest -m "not slow and not gpu and not slurm" -q $(ARGS)

## Only the slow tests, and everything (but the GPU and SLURM tests).
test-slow: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest -m "slow and not gpu and not slurm" -q $(ARGS)

test-all: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest -m "not gpu and not slurm" -q $(ARGS)

## The cluster path on a real one-node SLURM (about 6 min): sweeps as SLURM jobs, requeue, srun DDP.
## Uses the cluster named by $$SLURM_CONF, or starts one with tests/cluster/slurm_up.sh (root; installs
## slurm-wlm and munge when missing) and stops it afterwards; skipped with the reason when SLURM cannot start.
test-slurm: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest -m "slurm" -q tests/cluster $(ARGS)

## Lint (configured in pyproject.toml): ruff's rules and formatting, the import layers, mypy on the typed packages.
## PYTHONPATH=src: lint-imports reads this checkout's package, not an installed one.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	PYTHONPATH=src $(BIN)/lint-imports
	$(BIN)/mypy

clean-outputs:
	rm -rf outputs multirun wandb
