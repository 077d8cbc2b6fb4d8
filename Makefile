# Set-up is part of every target: a fresh machine needs only Python 3.11 and the package registries.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.geor1-installed
PYTEST_ARGS ?=

.PHONY: install demo lint format test test-all test-gpu clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH_PINS)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[cpu,dev]"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/geor1 demo --out runs/demo

# Lint, format check and type check come first: CI (`.ci/run` runs `make test`) fails on any of them.
lint: $(STAMP)
	$(VENV)/bin/ruff check geor1 tests benchmarks
	$(VENV)/bin/ruff format --check geor1 tests benchmarks
	$(VENV)/bin/mypy geor1

# Rewrites files in place: import order and the other safe ruff fixes, then the formatter.
format: $(STAMP)
	$(VENV)/bin/ruff check --fix geor1 tests benchmarks
	$(VENV)/bin/ruff format geor1 tests benchmarks

test: lint
	$(PY) -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

# Every test, the slow ones included; on a machine without CUDA the gpu tests skip, saying "needs CUDA".
test-all: lint
	$(PY) -m pytest $(PYTEST_ARGS)

# The tests that need a CUDA GPU (on a machine without one they skip with the reason "needs CUDA").
test-gpu: $(STAMP)
	$(PY) -m pytest -m gpu $(PYTEST_ARGS)

clean:
	rm -rf runs lightning_logs .pytest_cache
