# The environments a user gets, each made from pyproject.toml alone and tested (part of `make test`):
#   make test-lowest  the lowest versions pyproject.toml allows (uv's lowest-direct resolution),
#                     tensorflow-cpu, on the oldest supported Python
#   make test-colab   as on Colab: Python 3.12, the full `tensorflow`, fomm_lessons installed from
#                     a wheel built from this checkout; then every chapter of _toc.yml, each copied
#                     alone into an empty folder outside the repository, re-run by nbval (this
#                     is where `make test` runs the chapters; without Python 3.12, outside CI,
#                     it runs them in .venv/ instead: `make test-chapters`)
#   make test-envs    both
#   make envs-installed  installs both environments without testing (`make setup` runs it)
# Downloads are shared through uv's cache (~/.cache/uv): a second run installs from disk.
# Neither installs the `oracle` extra: PyPI's torch for Linux is a CUDA build of several GB.

LOWEST_PYTHON ?= 3.10
COLAB_PYTHON ?= 3.12
# The unit tests that exercise the networks, batch norm, training, frame reading and packaging,
# and the book's (a chapter run outside pytest, where TensorFlow's C++ logs would show). Of the
# training tests, those that lean on TensorFlow and Keras themselves (checkpoints read back exactly,
# non-finite weights, mixed-precision policies, seeding); the command-line and signal handling of
# `fomm-lessons train` is Python of ours, tested in .venv/ (test-unit).
ENV_TRAINING := $(addprefix tests/test_training.py::test_,learning_rate_schedule_is_multistep \
	resume_continues_exactly nan_weights_or_losses_stop_training_and_keep_the_last_good_checkpoint \
	mixed_precision_step_gives_finite_float32_losses the_seed_sets_the_initial_weights)
ENV_TESTS ?= tests/test_blocks.py tests/test_networks.py $(ENV_TRAINING) \
	tests/test_data_frames.py tests/test_package.py tests/test_book.py \
	tests/test_puppets64.py::test_loads_by_name_offline_in_a_fresh_process
# The Colab-like environment has the same TensorFlow and Keras as .venv/ (the newest), so the training
# tests would repeat test-unit's there; its chapters train, stop, resume and compare weights instead.
COLAB_TESTS ?= $(filter-out $(ENV_TRAINING),$(ENV_TESTS))
ENV_PYTEST := -p no:cacheprovider -m "not slow"
# uv never downloads an interpreter here (that needs more than PyPI); pyenv's or PATH's are used.
export UV_PYTHON_DOWNLOADS := never

# Python $(1).x: pyenv's newest, else python$(1) on PATH; empty when there is none.
python_for = $(or $(lastword $(sort $(wildcard $(HOME)/.pyenv/versions/$(1).*/bin/python$(1)))),\
	$(shell command -v python$(1) 2>/dev/null))
# A missing interpreter is an error under CI and a note elsewhere.
define no_python
	@if [ -n "$$CI" ]; then echo "$@: Python $(1) not found" >&2; exit 1; fi
	@echo "$@: skipped, Python $(1) is not installed"
endef

.PHONY: test-envs test-lowest test-colab envs-installed

envs-installed: $(if $(call python_for,$(LOWEST_PYTHON)),$(ENVS)/lowest/.installed) \
	$(if $(call python_for,$(COLAB_PYTHON)),$(ENVS)/colab/.installed)

# The lowest versions are resolved again whenever pyproject.toml changes.
$(ENVS)/lowest/.installed: pyproject.toml | $(UV)
	$(UV) pip compile --quiet --no-header pyproject.toml --extra tf-cpu --extra test \
		--resolution lowest-direct --python-version $(LOWEST_PYTHON) -o $(ENVS)/lowest.txt
	$(UV) venv --quiet --python "$(call python_for,$(LOWEST_PYTHON))" $(ENVS)/lowest
	$(UV) pip install --quiet --python $(ENVS)/lowest -r $(ENVS)/lowest.txt
	$(UV) pip install --quiet --python $(ENVS)/lowest --no-deps -e .
	touch $@

test-lowest:
ifeq ($(call python_for,$(LOWEST_PYTHON)),)
	$(call no_python,$(LOWEST_PYTHON))
else
	@$(MAKE) --no-print-directory $(ENVS)/lowest/.installed
	@echo "test-lowest: $$(grep -E '^(tensorflow-cpu|keras|numpy|pillow)==' $(ENVS)/lowest.txt | tr '\n' ' ')"
	env -u PYTHONPATH $(ENVS)/lowest/bin/python -m pytest $(XDIST) $(ENV_PYTEST) $(ENV_TESTS) $(PYTEST_ARGS)
endif

# The wheel is built and installed afresh on every run; the dependencies stay installed.
# pytest runs with --import-mode=append and without the repository on sys.path, so the
# tests import the installed fomm_lessons (FOMM_EXPECT_INSTALLED makes test_package check it).
# Then each chapter is copied alone into its own empty folder under a fresh temporary one,
# where nothing but the installed package can be imported, and nbval re-runs them there.
COLAB_BIN = $(abspath $(ENVS)/colab/bin)

# The dependencies, from a first wheel; test-colab reinstalls fomm_lessons alone from a fresh one.
$(ENVS)/colab/.installed: pyproject.toml | $(UV)
	rm -rf $(ENVS)/dist-deps
	$(UV) build --quiet --wheel --out-dir $(ENVS)/dist-deps .
	test -d $(ENVS)/colab || $(UV) venv --quiet --python "$(call python_for,$(COLAB_PYTHON))" $(ENVS)/colab
	$(UV) pip install --quiet --python $(ENVS)/colab \
		"fomm-lessons[tf,test] @ file://$$(ls $(abspath $(ENVS))/dist-deps/*.whl)"
	touch $@

test-colab:
ifeq ($(call python_for,$(COLAB_PYTHON)),)
	$(call no_python,$(COLAB_PYTHON))
	@echo "test-colab: the chapters run in .venv/ instead (make test-chapters)"
	@$(MAKE) --no-print-directory test-chapters
else
	@$(MAKE) --no-print-directory $(ENVS)/colab/.installed
	rm -rf $(ENVS)/dist
	$(UV) build --quiet --wheel --out-dir $(ENVS)/dist .
	$(UV) pip install --quiet --python $(ENVS)/colab --reinstall-package fomm-lessons \
		"fomm-lessons[tf,test] @ file://$$(ls $(abspath $(ENVS))/dist/*.whl)"
	cd $(ENVS)/colab && env -u PYTHONPATH FOMM_EXPECT_INSTALLED=1 bin/pytest $(XDIST) $(ENV_PYTEST) \
		--import-mode=append --rootdir=$(CURDIR) $(addprefix $(CURDIR)/,$(COLAB_TESTS)) $(PYTEST_ARGS)
	@set -e; alone=$$(mktemp -d); trap 'rm -rf "$$alone"' EXIT; \
	for chapter in $$($(COLAB_BIN)/python -c 'import conftest; print(*conftest.toc_notebooks())'); do \
		name=$$(basename $$chapter .ipynb); mkdir "$$alone/$$name"; cp $$chapter "$$alone/$$name/"; \
	done; \
	cp book/nbval-sanitize.cfg "$$alone/"; \
	echo "test-colab: the chapters, each alone in $$alone/NAME/"; \
	cd "$$alone" && env -u PYTHONPATH $(COLAB_BIN)/pytest -p no:cacheprovider --rootdir="$$alone" \
		$(XDIST_NOTEBOOKS) $(NBVAL_TIMED) --nbval-sanitize-with nbval-sanitize.cfg --nbval-current-env \
		*/*.ipynb $(PYTEST_ARGS)
endif

test-envs: test-lowest test-colab
