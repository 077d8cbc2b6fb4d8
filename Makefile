# Set-up is part of every target: a fresh machine needs only Python 3.11 and the package registries.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.geor1-installed
PYTEST_ARGS ?=

.PHONY: install demo test test-all clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH_PINS)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[cpu,dev]"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/geor1 demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf runs lightning_logs .pytest_cache
