# Two commands do all set-up: `make demo` (the main job) and `make test` (every test).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast test-faults venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m flows.demo

# Every test: the slow end-to-end ones and the fault-injection suite included.
test: $(STAMP)
	$(PY) -m pytest -m 'slow or not slow' -q --durations=15

# Only the fault injection through real deployment runs (tests/faults, ~4 min): see docs/RELIABILITY.md.
test-faults: $(STAMP)
	$(PY) -m pytest -m faults -q tests/faults

# The quick suite (what a bare `pytest` runs).
test-fast: $(STAMP)
	$(PY) -m pytest -q
