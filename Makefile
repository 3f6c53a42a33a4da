# Two entry points: `make run` (the main job) and `make test` (the test suite).
# Each creates the virtual environment on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
SWEEP  ?= sweeps/basic.yaml

.PHONY: run test bench clean clean-all

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

run: $(VENV)/.installed
	$(PY) -m pipeline.sweep $(SWEEP)

test: $(VENV)/.installed
	$(PY) -m pytest

bench: $(VENV)/.installed
	$(PY) bench/engine.py

clean:  # sweep outputs and the local MLflow store
	rm -rf results mlruns mlflow.db

clean-all: clean
	rm -rf $(VENV)
