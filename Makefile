# Two commands do all set-up on a fresh Linux machine with Python and make:
#   make demo   creates .venv, installs callstate and runs examples/quickstart.py
#   make test   installs the test dependencies (torch CPU build, lightning) and runs the full suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test matrix lint docs bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

# The compiled codec, rebuilt in place when a C source changes (pip install -e . builds it too;
# where it does not build, the pure-Python codec runs and the build log says so in one line).
$(VENV)/.built-ext: $(VENV)/.installed-test setup.py $(wildcard callstate/_encoding/*.c)
	$(BIN)/python setup.py --quiet build_ext --inplace
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python examples/quickstart.py

test: $(VENV)/.built-ext
	$(BIN)/python -m pytest

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
	rm -rf $(VENV) .venv-3.* build docs/_build *.egg-info callstate/_encoding/*.so .pytest_cache .mypy_cache .ruff_cache
