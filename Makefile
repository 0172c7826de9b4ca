# Every target sets itself up: a fresh machine needs only Python 3.11+ and a C compiler.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench build clean

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet 'setuptools>=68' wheel 'cython>=3.0' 'numpy>=1.26'
	$(PY) -m pip install --quiet --no-build-isolation -e '.[test]'
	touch $(STAMP)

# Recompiles only the extensions whose .pyx changed.
build: $(STAMP)
	$(PY) setup.py --quiet build_ext --inplace -j 2

demo: build
	$(PY) -m shrivenq.demo

test: build
	$(PY) -m pytest -q tests

bench: build
	$(PY) -m pytest -q benches --benchmark-only --benchmark-columns=min,median,mean,ops,rounds

clean:
	rm -rf $(VENV) build shrivenq/_ext/*.so ext/*.c
