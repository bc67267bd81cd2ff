"""pytest in a tree with only the core dependencies: no collection error, each skipped module names its package."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_packaging import _copy_of_the_tree

pytestmark = pytest.mark.slow

CORE = ("attrs", "cloudpickle", "pytest", "hypothesis")


@pytest.fixture(scope="module")
def core_only(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A fresh venv with only attrs, cloudpickle, pytest and hypothesis (no numpy), and a copy of this tree."""
    where = tmp_path_factory.mktemp("core")
    venv = where / "venv"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=120, env=env)
    # The venv gets the packages through this interpreter's pip, so it needs no pip of its own.
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--quiet", *CORE],
        capture_output=True, text=True, timeout=600, env=env,
    )
    if install.returncode != 0 and "No matching distribution" in install.stderr:
        pytest.skip(f"the package registry is not reachable for the core packages: {install.stderr[-500:]}")
    assert install.returncode == 0, install.stderr[-3000:]
    return venv / "bin" / "python", _copy_of_the_tree(where / "callstate")


def _pytest(python: Path, tree: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "CALLSTATE_FULL_SUITE"}}
    env["PYTHONPATH"] = str(tree)
    return subprocess.run(
        [python, "-m", "pytest", "-p", "no:cacheprovider", *args],
        capture_output=True, text=True, timeout=600, cwd=tree, env=env,
    )


def test_collection_skips_each_module_naming_its_package(core_only: tuple[Path, Path]) -> None:
    """Without numpy or torch every module collects or is skipped as needing a named package, with its pip command."""
    python, tree = core_only
    assert subprocess.run([python, "-c", "import numpy"], capture_output=True).returncode != 0
    proc = _pytest(python, tree, "--collect-only", "-q", "-rs")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    skipped = re.findall(r"^SKIPPED \[1\] tests/(test_\w+)\.py:\d+: needs (\w+) \(pip install (\S+)", proc.stdout, re.MULTILINE)
    needs = {module: package for module, package, _ in skipped}
    assert needs["test_async"] == "numpy" and needs["test_torch_io"] == "torch", proc.stdout[-3000:]
    # A module that uses numpy in some tests only keeps the others (tests/test_without_optional.py).
    assert "test_codec" not in needs and "tests/test_codec.py::test_a_dag_is_written_once" in proc.stdout
    assert needs["test_transformers"] == "transformers" and needs["test_s3"] == "s3fs"
    assert not re.search(r"^ERROR|\berrors? during collection", proc.stdout, re.MULTILINE)


def test_require_all_fails_the_collection_loudly(core_only: tuple[Path, Path]) -> None:
    """With --require-all (make test) a module whose package is missing is a collection error naming it."""
    python, tree = core_only
    proc = _pytest(python, tree, "--collect-only", "-q", "--require-all", "tests/test_torch_io.py")
    assert proc.returncode != 0
    assert "the full suite needs torch, which is not installed here" in proc.stdout


def test_core_modules_pass_without_numpy(core_only: tuple[Path, Path]) -> None:
    """A core test module whose one test uses numpy runs there, that test skipped as needing numpy."""
    python, tree = core_only
    proc = _pytest(python, tree, "-q", "-rs", "tests/test_cli_migrate.py::test_migrate_import_never_lets_the_directory_shadow_what_callstate_imports")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "could not import 'numpy'" in proc.stdout
