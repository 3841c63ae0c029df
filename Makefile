# Two commands for a fresh clone:  make train   (quick-start run)   and   make test.
# Both set up .venv first; setup is skipped when pyproject.toml has not changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= workdirs/quickstart
CONFIG ?= configs/quickstart.py
export CXR_DATA ?= $(abspath ../shared/data/cxr3)
# Evaluation only, never trained on: when present, `make train` also scores the quick-start model
# on it and prints the external figures under the internal ones.
CXR_EXTERNAL ?= $(abspath ../shared/data/cxr-external)
EXTERNAL := $(if $(wildcard $(CXR_EXTERNAL)/manifest.csv),--external=manifest:$(CXR_EXTERNAL))

.PHONY: setup train test lint weights lungs data clean notebooks-strip

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

lungs: setup weights
	$(PY) -m cxr_jax.lungs all --out=results/lungs

weights: setup
	$(PY) -m cxr_jax.weights fetch vgg16

train: setup weights
	$(PY) launch.py --config=$(CONFIG) --workdir=$(WORKDIR) $(EXTERNAL)

data: setup
	$(PY) -m cxr_jax.data --source=manifest:$(CXR_DATA) --config.data.image_size=224

# Includes tests/test_notebooks.py: every notebook runs top to bottom in small mode (~3-4 min).
test: setup
	$(PY) -m pytest -q tests

# Before committing a notebook that was run: its outputs must not be committed (a test checks).
notebooks-strip:
	$(PYTHON) notebooks/strip_outputs.py notebooks/*.ipynb

lint: setup
	$(VENV)/bin/ruff check cxr_jax configs tests benchmarks notebooks launch.py

clean:
	rm -rf $(VENV) workdirs
