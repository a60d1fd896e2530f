# The two commands of the README:
#   make demo   set up .venv and run the main job on the embedded default (notebooks, figures, build/site/)
#   make test   set up .venv and run every test (ruff, mypy, pytest with the 25 slowest durations; the notebooks are
#               executed once, in JupyterLab in Chromium, and held to nbval's rules; without a browser nbval
#               executes them); bench/bench_suite.py times it per file, with the machine's load
# Both pytest sessions run on $(WORKERS) pytest-xdist workers (one file's tests on one worker; see conftest.py).
# and more:
#   make check  the inner loop: ruff, mypy and the fast test tier (no notebooks, browser, deployments)
#   make app    serve the bias-transfer app (apps/bias_transfer.ipynb) with Voila on 127.0.0.1
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKERS ?= 2

.PHONY: setup demo test check lint types app clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,flower]"
	touch $(STAMP)

demo: setup
	$(PY) -m fedpurel_lite demo

app: setup
	$(VENV)/bin/voila apps/bias_transfer.ipynb --Voila.ip=127.0.0.1 --token

lint: setup
	$(PY) -m ruff check .

types: setup
	$(PY) -m mypy

test: lint types
	$(PY) -m pytest -n $(WORKERS) --durations=25

check: lint types
	$(PY) -m pytest -n $(WORKERS) -q -m "not slow" tests

clean:
	rm -rf $(VENV) data/cache runs build
