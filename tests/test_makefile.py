"""The Makefile's documented ways in: torch from another index, and the quick tier without torch."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _dry_run(*args: str) -> list[str]:
    """The commands ``make -n`` would run, one per line."""
    # Run by `make test`, this process inherits the outer make's variables: without them the inner
    # make is a top-level one (no "Entering directory" lines, no inherited flags).
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
    done = subprocess.run(
        ["make", "--no-print-directory", "-n", *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=60, check=True,
    )
    return done.stdout.splitlines()


def test_torch_index_installs_torch_from_that_index_first(tmp_path: Path) -> None:
    """make test TORCH_INDEX=<url> installs the pinned torch from that index before the test extra."""
    lines = _dry_run("test", "TORCH_INDEX=file:///local/torch-cpu", f"VENV={tmp_path / 'v'}")
    torch = [i for i, line in enumerate(lines) if "--index-url file:///local/torch-cpu" in line]
    extra = [i for i, line in enumerate(lines) if ".[test]" in line]
    assert len(torch) == 1 and len(extra) == 1 and torch[0] < extra[0], lines
    assert lines[torch[0]].endswith("-c constraints.txt torch")


def test_without_torch_index_pip_uses_its_own_configuration(tmp_path: Path) -> None:
    """make test without TORCH_INDEX names no index: pip's configured one is used."""
    lines = _dry_run("test", f"VENV={tmp_path / 'v'}")
    assert not any("--index-url" in line for line in lines), lines
    assert any(".[test]" in line for line in lines)


def test_the_quick_tier_needs_no_torch(tmp_path: Path) -> None:
    """make test-quick installs only the core test extra in its own venv and runs the core suite without slow tests."""
    venv = tmp_path / "q"
    lines = _dry_run("test-quick", f"QUICK_VENV={venv}")
    installs = [line for line in lines if "pip install" in line and "-e" in line]
    assert f"python3 -m venv --clear {venv}" in lines  # nothing an older extra installed stays
    assert installs[0] == f"{venv}/bin/python -m pip install --quiet -c constraints.txt -e '.[test-core]'"
    assert installs[1:] == [f"{venv}/bin/python -m pip install --quiet --no-deps -c constraints.txt -e ."]
    assert lines[-1] == f'{venv}/bin/python -m pytest -q -m "not slow" -p no:cacheprovider'


def test_the_quick_tier_rebuilds_the_compiled_codec_when_its_source_changes(tmp_path: Path) -> None:
    """Once installed, make test-quick rebuilds the extension in place when a .c file changes, and only then."""
    venv = tmp_path / "q"
    venv.mkdir()
    (venv / ".installed-quick").touch()
    (venv / ".built-ext").touch()  # newer than every source: nothing to rebuild
    rebuild = f"{venv}/bin/python -m pip install --quiet --no-deps -c constraints.txt -e ."
    assert rebuild not in _dry_run("test-quick", f"QUICK_VENV={venv}")
    changed = _dry_run("test-quick", f"QUICK_VENV={venv}", "-W", "callstate/_encoding/_cdecode.c")
    assert rebuild in changed and not any("'.[test-core]'" in line for line in changed), changed



def test_the_full_suite_requires_every_test_dependency(tmp_path: Path) -> None:
    """make test runs pytest with --require-all, so a missing test dependency fails the run instead of skipping modules."""
    lines = _dry_run("test", f"VENV={tmp_path / 'v'}")
    assert lines[-1] == f"{tmp_path / 'v'}/bin/python -m pytest --require-all"
