"""Test configuration shared by every test module."""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Generator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# The machine is shared: time limits per example only produce flaky failures, not findings.
settings.register_profile(
    "callstate", deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("thorough", deadline=None, max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "callstate"))


# A test module that imports an optional package (or a helper that does) at its top is, where that
# package is missing, reported as one skipped module naming the package and its install command,
# not as a collection error: `pytest` in a clone or an unpacked sdist with only the core
# dependencies (attrs, cloudpickle, pytest, hypothesis) runs the core suite. The full suite
# (`make test`, CI: CALLSTATE_FULL_SUITE=1, or `pytest --require-all`) expects every package of the
# `test` extra and fails such a module's collection loudly instead, so a broken install can never
# shrink it without a sign.
_OPTIONAL = {  # import name: what pip installs
    "numpy": "numpy", "torch": "torch", "lightning": "lightning", "pytorch_lightning": "pytorch-lightning",
    "transformers": "transformers", "accelerate": "accelerate", "ignite": "pytorch-ignite",
    "torchtnt": "torchtnt", "jax": "'jax[cpu]'", "orbax": "orbax-checkpoint", "keras": "keras",
    "fsspec": "fsspec", "s3fs": "s3fs", "moto": "'moto[server]'", "boto3": "boto3",
}
# Test helper modules, by the package each needs.
_HELPERS = {
    "lightning_helpers": "torch",
    "dist_helpers": "torch",
    "torch_hostile": "torch",
    "hf_helpers": "transformers",
    "accelerate_helpers": "accelerate",
    "exact": "numpy",
    "cdecode_diff": "numpy",
    "keras_fit": "keras",
}
_TOP_IMPORT = re.compile(r"^(?:import|from) (?:tests\.)?(\w+)", re.MULTILINE)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--require-all", action="store_true", default=os.environ.get("CALLSTATE_FULL_SUITE") == "1",
        help="fail a test module whose optional package is missing instead of skipping it "
        "(the full suite; also CALLSTATE_FULL_SUITE=1)",
    )


def _missing(name: str) -> bool:
    return importlib.util.find_spec(name) is None


def _first_missing(path: Path) -> tuple[str, int] | None:
    """The optional package that the top of test module ``path`` needs and that is not installed,
    with the (1-based) line that imports it."""
    text = path.read_text(encoding="utf-8")
    for match in _TOP_IMPORT.finditer(text):
        package = _HELPERS.get(match[1], match[1])
        if package in _OPTIONAL and _missing(package):
            return package, text.count("\n", 0, match.start()) + 1
    return None


class _NeedsPackage(pytest.Module):
    """A test module whose optional package is missing: skipped as a whole, or a loud error."""

    package = ""
    line = 0

    def collect(self) -> list[pytest.Item | pytest.Collector]:
        how = f"pip install {_OPTIONAL[self.package]}, or every test dependency: pip install -e '.[test]'"
        if self.config.getoption("require_all"):
            raise self.CollectError(f"the full suite needs {self.package}, which is not installed here ({how})")
        raise pytest.skip.Exception(f"needs {self.package} ({how})", allow_module_level=True)


def pytest_pycollect_makemodule(module_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    if not module_path.name.startswith("test_"):
        return None
    found = _first_missing(module_path)
    if found is None:
        return None
    module = _NeedsPackage.from_parent(parent, path=module_path)
    module.package, module.line = found
    return module


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    # The skip's place is the module's import line, not this file: the summary then lists each module.
    if isinstance(collector, _NeedsPackage) and report.skipped and isinstance(report.longrepr, tuple):
        report.longrepr = (str(collector.path), collector.line, report.longrepr[2])
    return report


def pytest_report_header(config: pytest.Config) -> list[str]:
    missing = sorted(name for name in _OPTIONAL if _missing(name))
    if not missing:
        return []
    if config.getoption("require_all"):
        return [f"full suite: missing {', '.join(missing)}: the test modules needing them will fail"]
    return [f"optional packages not installed (test modules needing them are skipped): {', '.join(missing)}"]
