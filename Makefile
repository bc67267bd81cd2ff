# Two commands do all set-up on a fresh Linux machine with Python and make:
#   make demo   creates .venv, installs callstate and runs examples/quickstart.py
#   make test-quick  the core suite without the slow tests, in .venv-quick with only callstate's own
#                dependencies, pytest and hypothesis (each test needing numpy, torch, a framework
#                or build is reported as skipped, naming the package)
#   make test   installs the test dependencies (torch, lightning, ...) and runs the full suite, with
#               --require-all: a test module whose package is missing fails instead of skipping
#   make third-party  accelerate's and Keras's own test files, plain and with callstate's adapters injected
# TORCH_INDEX=<url>: take torch from that index (PyTorch's CPU-only index, as its install page gives
# it) instead of pip's configured one, where torch==2.13.0 is a CUDA build of several GB on Linux.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
QUICK_VENV ?= .venv-quick
TORCH_INDEX ?=

.PHONY: demo test test-pure test-quick third-party matrix lint docs bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(BIN)/python pyproject.toml constraints.txt
ifneq ($(TORCH_INDEX),)
	$(BIN)/python -m pip install --quiet --index-url $(TORCH_INDEX) -c constraints.txt torch
endif
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

# The compiled codec, rebuilt in place when a C source changes (pip install -e . builds it too;
# where it does not build, the pure-Python codec runs and the build log says so in one line).
$(VENV)/.built-ext: $(VENV)/.installed-test setup.py $(wildcard callstate/_encoding/*.c)
	$(BIN)/python setup.py --quiet build_ext --inplace
	touch $@

# --clear: a venv made before keeps what an older `test-core` extra installed (numpy, build).
$(QUICK_VENV)/.installed-quick: pyproject.toml constraints.txt
	$(PYTHON) -m venv --clear $(QUICK_VENV)
	$(QUICK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(QUICK_VENV)/bin/python -m pip install --quiet -c constraints.txt -e '.[test-core]'
	touch $@ $(QUICK_VENV)/.built-ext

# The editable install above builds the compiled codec in place (where a C compiler exists), once:
# rebuild it when its sources change, as $(VENV)/.built-ext does for make test. Through pip, since a
# venv of Python 3.12+ has no setuptools of its own for setup.py.
$(QUICK_VENV)/.built-ext: $(QUICK_VENV)/.installed-quick setup.py $(wildcard callstate/_encoding/*.c)
	$(QUICK_VENV)/bin/python -m pip install --quiet --no-deps -c constraints.txt -e .
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python examples/quickstart.py

test: $(VENV)/.built-ext
	$(BIN)/python -m pytest --require-all

# The full suite's tests not marked slow again, on the pure-Python reference codec
# (CALLSTATE_PURE_PYTHON=1): CI's second implementation (the whole suite on it takes about 27 minutes
# on 2 cores, this part about 5; the core suite, slow tests included, runs on it in make matrix).
test-pure: $(VENV)/.built-ext
	CALLSTATE_PURE_PYTHON=1 $(BIN)/python -m pytest --require-all -q -m "not slow" -p no:cacheprovider

# accelerate's own tests, fetched at the installed version into ~/.cache/callstate-third-party, and
# Keras's callback tests from its installed wheel, each run plain and with callstate's adapter
# injected: fails on a test that passes only plain.
third-party: $(VENV)/.built-ext
	$(BIN)/python tests/third_party/run.py

# A first look: every test that needs no optional package and is not marked slow.
test-quick: $(QUICK_VENV)/.built-ext
	$(QUICK_VENV)/bin/python -m pytest -q -m "not slow" -p no:cacheprovider

# The core suite on Python 3.10, 3.12 and 3.13 (each in .venv-3.X; see .ci/matrix).
matrix:
	.ci/matrix

# The documentation site, into docs/_build/html; any warning fails the build.
$(VENV)/.installed-docs: $(VENV)/.installed-test
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[docs]'
	touch $@

docs: $(VENV)/.installed-docs
	$(BIN)/python -m sphinx -W --keep-going -q -b html docs docs/_build/html

lint: $(VENV)/.installed-test
	$(BIN)/python -m ruff check $(wildcard callstate tests examples benchmarks fuzz)
	$(BIN)/python -m mypy --strict callstate

bench: $(VENV)/.installed-test
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[bench]'
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) $(QUICK_VENV) .venv-3.* build docs/_build *.egg-info callstate/_encoding/*.so .pytest_cache .mypy_cache .ruff_cache
