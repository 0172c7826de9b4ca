# Every target sets itself up: a fresh machine needs only Python 3.11+ and a C compiler.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench compare build clean

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet 'setuptools>=68' wheel 'cython>=3.0' 'numpy>=1.26'
	$(PY) -m pip install --quiet --no-build-isolation -e '.[test]'
	touch $(STAMP)

# Recompiles only the extensions whose .pyx changed.
build: $(STAMP)
	$(PY) setup.py --quiet build_ext --inplace -j 2

# The main job: capture NIFTY 50 and NIFTY BANK from the built-in simulator for a short
# while, then check, show and replay what was recorded.
DEMO_DIR := data/demo
demo: build
	rm -rf $(DEMO_DIR)
	$(VENV)/bin/shrivenq capture run --sim --symbols "NIFTY 50,NIFTY BANK" --duration 10 \
		--sim-rate 20 --snapshot-interval 2 --data-dir $(DEMO_DIR)
	$(VENV)/bin/shrivenq wal verify $(DEMO_DIR)
	$(VENV)/bin/shrivenq wal inspect $(DEMO_DIR)
	$(VENV)/bin/shrivenq replay --data-dir $(DEMO_DIR) --verify

test: build
	$(PY) -m pytest -q tests

# shrivenq's parser against kiteconnect's on the same frames, as a table.
compare: build
	$(PY) benches/compare_kite_parser.py

# -s: each benchmark prints its figures and the same-run ratios its gate checks.
bench: build
	$(PY) -m pytest -q -s benches --benchmark-only --benchmark-columns=min,median,mean,ops,rounds

clean:
	rm -rf $(VENV) build shrivenq/_ext/*.so ext/*.c
