# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/demo
CONFIG ?= configs/clip_shapes.py

.PHONY: demo test install install-test clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed: requirements.txt pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -r requirements.txt -e '.[test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed

demo: install
	$(PY) -m vljax.train --config $(CONFIG) --workdir $(WORKDIR)
	$(PY) -m vljax.report --workdir $(WORKDIR)

test: install-test
	$(PY) -m pytest -n 2 -q --durations=15

clean:
	rm -rf $(VENV) runs
