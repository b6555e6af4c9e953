# `make test` sets up .venv (torch pinned to the CPU wheel) and runs the whole test suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[all]'
	touch $@

test: setup
	$(BIN)/python -m ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/python -m ruff check src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
