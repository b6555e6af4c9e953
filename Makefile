# `make test` sets up .venv (torch pinned by constraints.txt to the CPU wheel), then lints (ruff, the docs
# site, the import-layer contract) and runs the whole test suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup test lint clean

setup: $(VENV)/.installed

# pyproject.toml declares the ranges a user of the library may have; constraints.txt pins what this
# repository is tested with (torch 2.13.0, the CPU wheel).
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[all]'
	touch $@

test: lint
	$(BIN)/python -m pytest -q

# The docs site and the layer contract are checked where the repository has them; a failure fails the target.
# No `mkdocs build -q`: it silences the warnings that --strict counts, and a broken link would then pass.
lint: setup
	$(BIN)/python -m ruff check src tests benchmarks
	if [ -f mkdocs.yml ]; then $(BIN)/python -m mkdocs build --strict -d build/site; fi
	if [ -f .importlinter ]; then $(BIN)/lint-imports; fi

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build/site
