# Everything a fresh machine needs: `make test` and `make demo` build the venv themselves.
# The venv's interpreter must be one a run's own uid can execute (the mock CLI
# and the tests' stand-ins run under it; see docs/isolation.md): pyenv's live
# in root's 0700 home, so a system Python is preferred where there is one.
PYTHON ?= $(shell scripts/venv-python.sh)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint types demo bench docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check app tests scripts
	$(BIN)/ruff format --check app tests scripts

types: $(STAMP)
	$(BIN)/mypy

# A failed install does not stop the run: the suites that need what is missing
# fail under CI=true and are skipped, with the reason, elsewhere.
test: lint types
	-scripts/install-system-packages.sh
	-scripts/install-claude.sh
	PYTEST=$(BIN)/pytest scripts/run-tests.sh

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

# Figures, not pass/fail: throughput of the output pipeline and task latency on moto.
bench: $(STAMP)
	$(BIN)/python scripts/bench.py

docs: $(STAMP)
	$(BIN)/python scripts/options_table.py --write

clean:
	rm -rf $(VENV) .cache build dist
