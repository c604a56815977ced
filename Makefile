# One entry point for setting up, building and testing fomm-lessons.
#   make book           set up .venv/ and build the book into _build/html/
#   make test           set up every environment, then run every test (what CI runs)
#   make test-unit      the tests in tests/ in .venv/, the book build and browser test among them
#   make test-chapters  every chapter of _toc.yml re-run by nbval in .venv/ (`make test` runs them
#                       in the Colab-like environment instead, each alone: envs.mk)
#   make test-legacy    the tensorflow-addons cross-check in .venv-legacy/ (part of `make test`)
#   make test-envs      the lowest-versions and the Colab-like environments (envs.mk; part of `make test`)
#   make browser        Debian's Chromium for tests/test_browser.py (part of `make test`)
# Tests run in parallel, one pytest-xdist worker per CPU (PYTEST_WORKERS=1 runs them in one process):
# most of a test's time is Python and graph tracing, which uses one core.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS := tf-cpu,book,test,oracle
LEGACY := .venv-legacy
LEGACY_PYTHON ?= python3.11
PYTEST_ARGS ?=
PYTEST_WORKERS ?= auto
# Tests go one at a time to whichever worker is free (worksteal: the long training tests of one
# file spread over the workers); loadfile keeps a notebook's cells in order on one worker.
XDIST = $(if $(filter 1,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist worksteal)
XDIST_NOTEBOOKS = $(if $(filter 1,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile)
# nbval waits 2000 s for a cell by default, also for a kernel that has died (a crash in TensorFlow).
# The slowest cells of the chapters (chapter 1's set-up, chapter 10's thirty training steps) took
# 63-72 s on 2 cores, 185 s with nine processes sharing them; a cell gets 600 s, and a dead
# kernel fails its cell then and the notebook's later cells at once.
NBVAL_CELL_TIMEOUT ?= 600
NBVAL_TIMED = --nbval --nbval-cell-timeout=$(NBVAL_CELL_TIMEOUT)
NBVAL = $(NBVAL_TIMED) --nbval-sanitize-with $(CURDIR)/book/nbval-sanitize.cfg
# Every environment is installed by uv (in a small venv of its own, .envs/uv/): .venv/ took 137 s
# with pip here, 70 s with uv and an empty cache, 12 s with uv's cache warm (~/.cache/uv, shared
# with the other environments). Each venv still has pip, for a user's own installs.
ENVS := .envs
UV_VERSION := 0.13.9
UV := $(ENVS)/uv/bin/uv
# uv reads no pip configuration: the folders of wheels pip is pointed at (find-links; in CI, the CPU
# build of torch) are handed on, so that both installers see the same wheels.
PIP_LINKS := $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
UV_INSTALL = $(UV) pip install --quiet $(addprefix --find-links ,$(PIP_LINKS))
# uv writes no .pyc files by default, as pip does. Where PYTHONDONTWRITEBYTECODE is set (here, and in
# CI), every process would then compile TensorFlow's Python again: `import tensorflow, keras` took
# 16.7 s each time, 5.2 s with the bytecode written at install.
export UV_COMPILE_BYTECODE := 1

.PHONY: venv book setup test test-unit test-chapters test-legacy legacy-env browser clean

$(VENV)/.installed: pyproject.toml | $(UV)
	$(PYTHON) -m venv $(VENV)
	$(UV_INSTALL) --python $(VENV) pip -e ".[$(EXTRAS)]"
	touch $@

$(UV):
	$(PYTHON) -m venv $(ENVS)/uv
	$(ENVS)/uv/bin/python -m pip install --quiet "uv==$(UV_VERSION)"

venv: $(VENV)/.installed

book: venv
	$(BIN)/jupyter-book build . --warningiserror --keep-going
	@echo "The book is in _build/html/index.html"

# Unit tests, with the book build (tests/test_book.py) and the browser test sharing one build.
test-unit: venv browser
	$(BIN)/python -m pytest $(XDIST) tests $(PYTEST_ARGS)

# Every chapter in _toc.yml re-run and compared with its stored outputs by nbval.
test-chapters: venv
	$(BIN)/python -m pytest $(XDIST_NOTEBOOKS) $(NBVAL) book $(PYTEST_ARGS)

# tensorflow-addons only imports with TensorFlow <= 2.15 and Python <= 3.11, so
# its cross-check of `resample` runs in a separate, older environment.
$(LEGACY)/.installed: pyproject.toml | $(UV)
	$(LEGACY_PYTHON) -m venv $(LEGACY)
	$(UV_INSTALL) --python $(LEGACY) "tensorflow==2.15.1" "tensorflow-addons==0.23.0" "numpy<2" pytest pyyaml
	$(UV_INSTALL) --python $(LEGACY) --no-deps -e .
	touch $@

# A prerequisite, not a sub-make: `make -j setup` then builds $(UV) once for every environment.
legacy-env: $(if $(shell command -v $(LEGACY_PYTHON) 2>/dev/null),$(LEGACY)/.installed)

test-legacy:
	@if command -v $(LEGACY_PYTHON) >/dev/null 2>&1; then \
		$(MAKE) --no-print-directory $(LEGACY)/.installed && \
		$(LEGACY)/bin/python -m pytest -p no:cacheprovider tests/test_sampling.py $(PYTEST_ARGS); \
	else \
		echo "test-legacy: skipped, $(LEGACY_PYTHON) is not installed (tensorflow-addons needs Python <= 3.11)"; \
	fi

# tests/test_browser.py opens the built book in Debian's Chromium; installed here when
# missing (as root with apt-get: CI, containers), otherwise the test says what is missing.
CHROMIUM ?= /usr/bin/chromium
browser:
	@if [ ! -x "$(CHROMIUM)" ]; then \
		if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
		else \
			echo "browser: $(CHROMIUM) is missing; install Debian's chromium package for tests/test_browser.py"; \
		fi; \
	fi

include envs.mk

# Every environment is installed first, side by side (downloads and unpacking overlap), then
# the tests run one environment after the other, each using every CPU.
setup: venv legacy-env envs-installed browser

test:
	$(MAKE) --no-print-directory -j4 --output-sync=target setup
	$(MAKE) --no-print-directory test-unit test-legacy test-envs

clean:
	rm -rf _build $(VENV) $(LEGACY) $(ENVS)
