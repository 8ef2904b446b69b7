# Quickstart: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint install clean

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA wheel.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/dlm-jax demo

# Everything: the tests and the docstring examples of the library (under 12 minutes on 2 cores).
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist worksteal --durations=15 --doctest-modules tests dlm_jax

# The inner loop: skips the tests marked slow (multi-process, end-to-end runs, the README's commands).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 --durations=10 -m "not slow" tests

lint: $(STAMP)
	$(BIN)/ruff check dlm_jax conversion tests benchmarks launch

clean:
	rm -rf $(VENV) .pytest_cache
