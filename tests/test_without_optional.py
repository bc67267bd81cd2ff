"""pytest with every optional package made unimportable: the core tests run, the others skip naming the package.

The packages are blocked in a child process by a finder first on ``sys.meta_path`` (``import`` raises
ModuleNotFoundError, as where they are not installed), so this runs in any venv, fast;
tests/test_core_only.py checks the same in a real venv holding only the core dependencies.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCKED = (
    "numpy", "torch", "lightning", "pytorch_lightning", "transformers", "accelerate", "ignite", "torchtnt",
    "jax", "orbax", "keras", "fsspec", "s3fs", "moto", "boto3",
)
# Not `sys.modules[name] = None`: hypothesis reads sys.modules["numpy"] when the key is there.
_RUN = """
import sys


class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in sys.argv[1].split(","):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


sys.meta_path.insert(0, Blocked())
import pytest

sys.exit(pytest.main(sys.argv[2:]))
"""


def _pytest(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CALLSTATE_FULL_SUITE"}
    return subprocess.run(
        [sys.executable, "-c", _RUN, ",".join(BLOCKED), "-p", "no:cacheprovider", *args],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=env,
    )


def test_the_whole_suite_collects_and_the_core_tests_of_array_modules_stay() -> None:
    """Collection has no error; modules that use numpy or torch in some tests only (codec, files...) keep the others."""
    proc = _pytest("--collect-only", "-q", "tests")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert not re.search(r"^ERROR|errors? during collection", proc.stdout, re.MULTILINE), proc.stdout[-3000:]
    collected = set(proc.stdout.splitlines())
    assert {
        "tests/test_codec.py::test_every_supported_value_round_trips_exactly",
        "tests/test_cdecode.py::test_golden_files_decode_identically[v2/counters.callstate]",
        "tests/test_cencode.py::test_every_supported_value_encodes_to_the_same_bytes",
        "tests/test_files.py::test_a_fifo_is_refused_at_once_naming_it",
        "tests/test_encoded.py::test_isal_is_installed_and_used_where_callstate_depends_on_it",
    } <= collected, proc.stdout[-3000:]


def test_docs_blocks_skip_from_the_section_that_needs_a_missing_package() -> None:
    """A docs section needing numpy or fsspec skips naming it, and so do the later sections of its file, none failing."""
    proc = _pytest("-q", "-rs", "tests/test_docs_blocks.py")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "could not import 'fsspec'" in proc.stdout
    assert re.search(r"needs numpy \(an earlier section of security\.md, whose names this one uses, does\)", proc.stdout)


def test_a_test_needing_a_missing_package_skips_naming_it_or_fails_with_require_all() -> None:
    """A needs marker and an importorskip inside a test skip naming the package; with --require-all both fail."""
    tests = (
        "tests/test_codec.py::test_time_types_with_a_zero_unit_multiplier_are_refused_both_ways",
        "tests/test_optional.py::test_a_file_with_arrays_read_without_numpy_names_the_entry_and_the_extra",
    )
    skipped = _pytest("-q", "-rs", *tests)
    assert skipped.returncode == 0, skipped.stdout[-3000:]
    assert re.search(r"SKIPPED \[3\] .*needs numpy \(pip install numpy", skipped.stdout), skipped.stdout[-3000:]
    assert "SKIPPED [1] tests/test_optional.py:76: could not import 'numpy'" in skipped.stdout
    failed = _pytest("-q", "--require-all", *tests)
    assert failed.returncode == 1, failed.stdout[-3000:]
    assert "1 failed, 3 errors" in failed.stdout  # the marker fails the setup, importorskip the call
    assert failed.stdout.count("the full suite needs numpy, which is not installed here") >= 4, failed.stdout[-3000:]
