"""The wheel and the sdist built from this tree install and run, and carry the license and the tests."""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _run(*args: str | Path, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    # Without PYTHONPATH: a source tree on it would make pip in the fresh venv take callstate as installed.
    # Without CALLSTATE_PURE_PYTHON (the suite's run on the reference codec): the installed wheel runs
    # the codec it ships.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CALLSTATE_PURE_PYTHON")}
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


def _copy_of_the_tree(where: Path) -> Path:
    """Copy this tree, without venvs and caches, to ``where``: a build writes egg-info and build/ into it."""
    junk = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", "_build", ".*_cache")
    shutil.copytree(ROOT, where, ignore=junk)
    return where


def _missing_build_tool() -> str | None:
    """What a build without isolation needs and this environment lacks: build, or setuptools 77+ (SPDX license).

    By distribution, not by import: a build/ directory left by ``setup.py build_ext`` imports as ``build``.
    """
    try:
        version("build")
    except PackageNotFoundError:
        return "build"
    try:
        return None if int(version("setuptools").split(".")[0]) >= 77 else "setuptools"
    except PackageNotFoundError:
        return "setuptools"


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist and the wheel, built without network from a copy of this tree (``build --no-isolation``)."""
    missing = _missing_build_tool()
    if missing is not None:  # the core suite has neither; a failure with --require-all (tests/conftest.py)
        what = "build" if missing == "build" else "'setuptools>=77'"
        pytest.skip(f"needs {missing} (pip install {what}, or every test dependency: pip install -e '.[test]')")
    out = tmp_path_factory.mktemp("dist")
    tree = _copy_of_the_tree(tmp_path_factory.mktemp("tree") / "callstate")
    proc = _run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, tree)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # The build's own output must not warn: setuptools' deprecation notices were printed on every install.
    assert "deprecated" not in (proc.stdout + proc.stderr).lower()
    return out


def test_wheel_carries_the_license_and_only_the_package(dist: Path) -> None:
    """The wheel holds callstate/ and its metadata with the LICENSE text; MIT as an SPDX expression."""
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert {n.split("/")[0] for n in names} == {"callstate", next(n for n in names if ".dist-info/" in n).split("/")[0]}
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "callstate/py.typed" in names
    assert "License-Expression: MIT" in metadata
    # A platform wheel with the compiled encoder, and not its C source.
    assert "-py3-none-any" not in wheel.name
    assert any(n.startswith("callstate/_encoding/_cencode.") and n.endswith(".so") for n in names)
    assert not any(n.endswith(".c") for n in names)


def test_the_wheel_requires_isal_exactly_where_it_has_wheels(dist: Path) -> None:
    """The wheel depends on python-isal for CPython 3.10-3.15 on x86-64 and 64-bit ARM, not on PyPy, 32-bit x86, Windows on ARM or 3.16."""
    from packaging.requirements import Requirement

    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        metadata = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    required = [Requirement(line.split(":", 1)[1]) for line in metadata.splitlines() if line.startswith("Requires-Dist: isal")]
    (isal,) = [r for r in required if "extra" not in str(r.marker)]  # not the fast and test extras
    assert isal.marker is not None and str(isal.specifier) == ">=1.6"
    cpython = {"platform_python_implementation": "CPython", "python_version": "3.12", "extra": ""}
    for machine in ("x86_64", "AMD64", "aarch64", "arm64"):
        assert isal.marker.evaluate({**cpython, "platform_machine": machine}), machine
    for machine in ("i686", "ARM64", "ppc64le", "armv7l"):
        assert not isal.marker.evaluate({**cpython, "platform_machine": machine}), machine
    assert not isal.marker.evaluate({**cpython, "platform_machine": "x86_64", "platform_python_implementation": "PyPy"})
    assert not isal.marker.evaluate({**cpython, "platform_machine": "x86_64", "python_version": "3.16"})


def test_sdist_carries_the_tests_with_their_helpers(dist: Path) -> None:
    """The sdist holds every test file with conftest, helpers and golden files, the examples and the license."""
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    tracked = _run("git", "ls-files", "tests", "examples", "benchmarks", "fuzz", "docs", cwd=ROOT)
    if tracked.returncode != 0:
        pytest.skip(f"not a git checkout, so the tracked files are unknown: {tracked.stderr.strip()}")
    missing = set(tracked.stdout.split()) - names
    assert missing == set()
    assert {"LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml", "setup.py"} <= names
    assert "callstate/_encoding/_cencode.c" in names  # the compiled codec builds from the sdist


def test_wheel_installs_into_a_fresh_venv_and_runs(dist: Path, tmp_path: Path) -> None:
    """Installed from the wheel alone, `callstate --version` works and the quickstart runs."""
    venv = tmp_path / "venv"
    assert _run(sys.executable, "-m", "venv", venv).returncode == 0
    (wheel,) = dist.glob("*.whl")
    install = _run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", wheel)
    if install.returncode != 0 and "No matching distribution" in install.stderr:
        pytest.skip(f"the package registry is not reachable for attrs and cloudpickle: {install.stderr[-500:]}")
    assert install.returncode == 0, install.stderr[-3000:]
    assert "deprecat" not in install.stderr.lower()

    from importlib.metadata import version

    proc = _run(venv / "bin" / "callstate", "--version", cwd=tmp_path)
    # Built here, where a C compiler exists: the wheel carries the compiled codec, and it runs.
    assert (proc.returncode, proc.stdout.strip()) == (0, f"callstate {version('callstate')} (codec: c)")
    proc = _run(venv / "bin" / "python", ROOT / "examples" / "quickstart.py", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "restored:" in proc.stdout
    where = _run(venv / "bin" / "python", "-c", "import callstate; print(callstate.__file__)", cwd=tmp_path)
    assert where.stdout.strip().startswith(str(venv))  # the wheel's copy, not this tree


def test_the_unpacked_sdist_collects_the_whole_suite(dist: Path, tmp_path: Path) -> None:
    """pytest on the unpacked sdist collects every test this tree has, with no collection error."""
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as t:
        t.extractall(tmp_path, filter="data")
    (unpacked,) = tmp_path.iterdir()

    # The two collections run side by side: each imports every framework (about 35 s on 2 cores).
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        there, here = pool.map(_collected, (unpacked, ROOT))
    assert there == here


def _collected(where: Path) -> list[str]:
    proc = _run(sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", cwd=where)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return sorted(line for line in proc.stdout.splitlines() if "::" in line)
