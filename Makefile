# Two commands do all set-up: `make demo` (the main job) and `make test` (every test).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# MindFormers' own environment, as on a user's training nodes: it pins another MindSpore (2.9) than mftasks
# (2.10), so it lives apart. Used by the tests that run a real MindFormers job (tests/test_mindformers_job.py).
MF_VENV := .venv-mindformers
MF_STAMP := $(MF_VENV)/.installed
MINDFORMERS := mindformers==1.9.0

.PHONY: demo test test-fast test-faults venv mindformers-env

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test]'
	touch $(STAMP)

mindformers-env: $(MF_STAMP)

$(MF_STAMP):
	test -x $(MF_VENV)/bin/python || $(PYTHON) -m venv $(MF_VENV)
	$(MF_VENV)/bin/python -m pip install -q '$(MINDFORMERS)'
	touch $(MF_STAMP)

demo: $(STAMP)
	$(PY) -m flows.demo

# Every test: the slow end-to-end ones, the fault-injection suite and the real MindFormers job included.
test: $(STAMP) $(MF_STAMP)
	$(PY) -m pytest -m 'slow or not slow' -q --durations=15

# Only the fault injection through real deployment runs (tests/faults, ~4 min): see docs/RELIABILITY.md.
test-faults: $(STAMP)
	$(PY) -m pytest -m faults -q tests/faults

# The quick suite (what a bare `pytest` runs).
test-fast: $(STAMP)
	$(PY) -m pytest -q
