# Two commands for a fresh clone:  make train   (quick-start run)   and   make test.
# Both set up .venv first; setup is skipped when pyproject.toml has not changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= workdirs/quickstart
CONFIG ?= configs/quickstart.py
export CXR_DATA ?= $(abspath ../shared/data/cxr3)

.PHONY: setup train test lint weights data clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

weights: setup
	$(PY) -m cxr_jax.weights fetch vgg16

train: setup weights
	$(PY) launch.py --config=$(CONFIG) --workdir=$(WORKDIR)

data: setup
	$(PY) -m cxr_jax.data --source=manifest:$(CXR_DATA) --image_size=224

test: setup
	$(PY) -m pytest -q tests

lint: setup
	$(VENV)/bin/ruff check cxr_jax configs tests benchmarks launch.py

clean:
	rm -rf $(VENV) workdirs
