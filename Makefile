# Two commands do all set-up: `make demo` (the main job) and `make test` (every test).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m mftasks.demo

# Every test, the slow end-to-end ones included.
test: $(STAMP)
	$(PY) -m pytest -m 'slow or not slow' -q

# The quick suite (what a bare `pytest` runs).
test-fast: $(STAMP)
	$(PY) -m pytest -q
