# iot2ml: two commands.  `make demo` runs the main job, `make test` runs every test (`make test-fast`: the quick tier).
# Both create .venv and install the pinned versions from requirements.lock first; both are idempotent.
SHELL := /bin/bash
PYTHON ?= python3
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | sha1sum | cut -c1-12)
UV_VERSION := 0.13.9
export PATH := $(BIN):$(PATH)
export PYTHONHASHSEED := 0
# Demo size (override: make demo PUMPS=500 DAYS=30)
PUMPS ?= 50
DAYS ?= 30

.PHONY: install demo test test-fast lint nbs-check nbdev-test pytest pytest-fast bench lab clean help
help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' Makefile | sed 's/:.*## /\t/'

$(STAMP): requirements.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11 (Debian: apt-get install python3 python3-venv)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { echo "could not create .venv: on Debian run 'apt-get install python3-venv' as root"; exit 1; }
	$(BIN)/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip sync -q --python $(BIN)/python requirements.lock
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	rm -f $(VENV)/.installed-*; touch $@

install: $(STAMP)  ## create .venv with the locked versions

demo: install  ## simulate a fleet, land it in the lake, dvc repro, print metrics and the report path
	$(BIN)/iot2ml demo --pumps $(PUMPS) --days $(DAYS)

# Two tiers. Each step says how long it took (bash's `time`); pytest lists its 15 slowest tests.
test: install lint nbs-check nbdev-test pytest  ## every test: lint, notebooks in sync, nbdev-test, all of pytest (~20 min)

test-fast: install lint nbs-check nbdev-test pytest-fast  ## the edit loop (under 5 min on 2 cores): as `test`, without pytest's slow tests

lint: install  ## ruff with pyproject's [tool.ruff]: no `;`-joined statements, no line over 120 columns (.py and .ipynb)
	$(BIN)/ruff check

nbs-check: install  ## fail if nbdev-export or nbdev-clean would change anything
	bash scripts/check-nbs-sync.sh

nbdev-test: install  ## run every notebook (library and workflow) as a test
	time $(BIN)/nbdev-test --n-workers 2

pytest: install  ## the pytest suite (installs Debian's mosquitto first when root; the tests start their own broker)
	bash scripts/ensure-mosquitto.sh && bash scripts/ensure-chromium.sh
	time $(BIN)/pytest -q -n 2 --dist loadfile --durations=15

pytest-fast: install  ## the pytest tests not marked slow (tests/conftest.py marks what starts a server, broker, kernel, browser, pipeline)
	bash scripts/ensure-mosquitto.sh
	time $(BIN)/pytest -q -n 2 --dist loadfile -m "not slow" --durations=15

bench: install  ## all benchmarks; figures go to BENCHMARKS.md by hand
	for b in bench/bench_*.py; do $(BIN)/python $$b; done

# JupyterLab serves the project root (so build/notebooks/ and build/report/report.html open too) and starts on nbs/.
# As root (a container) it needs --allow-root, and says so. Extra options go last: make lab LAB_ARGS='--no-browser --port=8890'
LAB_ARGS ?=
LAB_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)
lab: install  ## open JupyterLab at the project root on nbs/ (options: LAB_ARGS='--no-browser --port=8890')
	@$(if $(LAB_ROOT),echo "make lab: running as root (a container?): JupyterLab is started with --allow-root")
	$(BIN)/jupyter lab --ServerApp.root_dir="$(CURDIR)" --LabApp.default_url=/lab/tree/nbs $(LAB_ROOT) $(LAB_ARGS)

lock:  ## re-resolve requirements.lock after changing dependencies in pyproject.toml
	$(BIN)/uv pip compile -q pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

clean:  ## remove build outputs and operational state (not the lake)
	rm -rf build state
