# Quick start:   make train   (set up, prepare data, run configs/lm_tiny.yaml)
#                make test    (set up, run the test suite)
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
TORCH   := torch==2.13.0
DATA    ?= runs/data/stdlib_s512
CONFIG  ?= configs/lm_tiny.yaml
export RAY_USAGE_STATS_ENABLED := 0
export DS_ACCELERATOR := cpu
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup train test test-fast data clean

setup: $(VENV)/.installed

# torch first (the CPU build, pinned), then everything else under a constraint that keeps that torch; deepspeed is
# an sdist and is built against the installed torch without build isolation, so it can never pull a CUDA torch.
$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	echo "$(TORCH)" > constraints.txt
	$(BIN)/pip install -q -c constraints.txt setuptools wheel ninja
	$(BIN)/pip install -q -c constraints.txt --no-build-isolation deepspeed==0.19.8
	$(BIN)/pip install -q -c constraints.txt -r requirements.txt
	$(BIN)/pip install -q -c constraints.txt --no-deps --no-build-isolation -e .
	touch $@

$(DATA)/index.json: | setup
	$(BIN)/lactron data prepare-text --out $(DATA) --seq-len 512

data: $(DATA)/index.json

train: setup data
	$(BIN)/lactron train $(CONFIG)

test: setup
	$(BIN)/python -m pytest -q tests

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" tests

clean:
	rm -rf runs .pytest_cache
