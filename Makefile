# One entry point for setting up, building and testing fomm-lessons.
#   make book         set up .venv/ and build the book into _build/html/
#   make test         set up .venv/ and run every test (what CI runs)
#   make test-legacy  the tensorflow-addons cross-check in .venv-legacy/ (part of `make test`)
#   make test-envs    the lowest-versions and the Colab-like environments (envs.mk; part of `make test`)
#   make browser      Debian's Chromium for tests/test_browser.py (part of `make test`)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS := tf-cpu,book,test,oracle
LEGACY := .venv-legacy
LEGACY_PYTHON ?= python3.11
PYTEST_ARGS ?=

.PHONY: venv book test test-unit test-legacy browser clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

venv: $(VENV)/.installed

book: venv
	$(BIN)/jupyter-book build . --warningiserror --keep-going
	@echo "The book is in _build/html/index.html"

# Unit tests, the book build (tests/test_book.py) and every chapter in _toc.yml
# re-run and compared with its stored outputs by nbval.
test-unit: venv browser
	$(BIN)/python -m pytest tests book --nbval --nbval-sanitize-with book/nbval-sanitize.cfg $(PYTEST_ARGS)

# tensorflow-addons only imports with TensorFlow <= 2.15 and Python <= 3.11, so
# its cross-check of `resample` runs in a separate, older environment.
$(LEGACY)/.installed: pyproject.toml
	$(LEGACY_PYTHON) -m venv $(LEGACY)
	$(LEGACY)/bin/python -m pip install --quiet "tensorflow==2.15.1" "tensorflow-addons==0.23.0" "numpy<2" pytest pyyaml
	$(LEGACY)/bin/python -m pip install --quiet --no-deps -e .
	touch $@

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

test: test-unit test-legacy test-envs

clean:
	rm -rf _build $(VENV) $(LEGACY) $(ENVS)
