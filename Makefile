# Two commands on a fresh Debian/Ubuntu machine:
#   make demo   - environment, sample assets, the agent on the sample video (CPU backend)
#   make test   - what the tests need (Debian packages too, as root), then the tests
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint fmt venv assets system-deps bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[fleet,metrics,bench,dev]'
	touch $(STAMP)

venv: $(STAMP)

assets: $(STAMP)
	$(BIN)/edge-agent assets fetch

demo: assets
	$(BIN)/edge-agent run -c configs/demo.yaml

system-deps:
	bash .ci/system-deps.sh

test: system-deps assets
	PYTHONDEVMODE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check agent fleet tests bench
	$(BIN)/ruff format --check agent fleet tests bench
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff check --fix agent fleet tests bench
	$(BIN)/ruff format agent fleet tests bench

bench: assets
	$(BIN)/python bench/run_all.py

clean:
	rm -rf var bench/out .pytest_cache .mypy_cache .ruff_cache
