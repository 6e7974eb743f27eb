# Every target creates .venv by itself when it is missing or pyproject.toml changed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench lint clean default-model

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)  ## the main job on the embedded defaults
	$(BIN)/defectwatch demo

test: $(STAMP)  ## the whole test suite, layer contracts included
	$(BIN)/python -m pytest

bench: $(STAMP)  ## heavy measurements (not part of the tests)
	$(BIN)/python -m benchmarks

default-model: $(STAMP)  ## retrain the shipped ensemble from the simulator (about 90 min on 2 CPU cores with bf16; ARGS="--device cuda": about 5 min on one H200)
	$(BIN)/python -m defectwatch.service.default_model $(ARGS)

lint: $(STAMP)  ## ruff (format check + lint), mypy on the package, import-linter contracts
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
