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
    "tensorflow": "tensorflow-cpu",
    "fsspec": "fsspec", "s3fs": "s3fs", "moto": "'moto[server]'", "boto3": "boto3",
    # What tests/test_packaging.py builds with, without isolation.
    "build": "build", "setuptools": "'setuptools>=77'",
}
# Test helper modules, by the package each needs.
_HELPERS = {
    "lightning_helpers": "torch",
    "dist_helpers": "torch",
    "torch_hostile": "torch",
    "hf_helpers": "transformers",
    "accelerate_helpers": "accelerate",
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
    try:
        return importlib.util.find_spec(name) is None
    except ImportError:  # a finder that refuses the name (tests/test_without_optional.py blocks them so)
        return True


def _first_missing(path: Path) -> tuple[str, int] | None:
    """The optional package that the top of test module ``path`` needs and that is not installed,
    with the (1-based) line that imports it."""
    text = path.read_text(encoding="utf-8")
    for match in _TOP_IMPORT.finditer(text):
        package = _HELPERS.get(match[1], match[1])
        if package in _OPTIONAL and _missing(package):
            return package, text.count("\n", 0, match.start()) + 1
    return None


def _how(package: str) -> str:
    return f"pip install {_OPTIONAL.get(package, package)}, or every test dependency: pip install -e '.[test]'"


def _loudly(package: str) -> str:
    return f"the full suite needs {package}, which is not installed here ({_how(package)})"


class _NeedsPackage(pytest.Module):
    """A test module whose optional package is missing: skipped as a whole, or a loud error."""

    package = ""
    line = 0

    def collect(self) -> list[pytest.Item | pytest.Collector]:
        if self.config.getoption("require_all"):
            raise self.CollectError(_loudly(self.package))
        raise pytest.skip.Exception(f"needs {self.package} ({_how(self.package)})", allow_module_level=True)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "needs(*packages): the test imports these optional packages (import names) inside it; where one is "
        "missing it is skipped naming the package (a failure with --require-all)",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("needs"):
        for package in mark.args:
            if _missing(package):
                if item.config.getoption("require_all"):
                    pytest.fail(_loudly(package), pytrace=False)
                pytest.skip(f"needs {package} ({_how(package)})")


# `pytest.importorskip("numpy")` inside a test or at a module's top skips saying "could not import
# 'numpy'"; a skip of our own says "needs numpy (pip install ...". With --require-all either, for
# an optional package, is a failure: the full suite must not shrink silently.
_SKIPPED_FOR = re.compile(r"(?:Skipped: )?(?:could not import '|needs )(\w+)")


def _fail_if_required(report: pytest.CollectReport | pytest.TestReport, config: pytest.Config) -> None:
    if not (report.skipped and config.getoption("require_all") and isinstance(report.longrepr, tuple)):
        return
    found = _SKIPPED_FOR.match(report.longrepr[2])
    if found and found[1] in _OPTIONAL:
        report.outcome = "failed"
        report.longrepr = f"{report.longrepr[0]}:{report.longrepr[1]}: {_loudly(found[1])}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    _fail_if_required(report, item.config)
    return report


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
    _fail_if_required(report, collector.config)
    return report


def pytest_report_header(config: pytest.Config) -> list[str]:
    missing = sorted(name for name in _OPTIONAL if _missing(name))
    if not missing:
        return []
    if config.getoption("require_all"):
        return [f"full suite: missing {', '.join(missing)}: the test modules needing them will fail"]
    return [f"optional packages not installed (test modules needing them are skipped): {', '.join(missing)}"]
