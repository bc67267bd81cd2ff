"""Test configuration shared by every test module."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

# The machine is shared: time limits per example only produce flaky failures, not findings.
settings.register_profile(
    "callstate", deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("thorough", deadline=None, max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "callstate"))


# The core suite (.ci/matrix, CALLSTATE_CORE_SUITE=1) runs where torch and the frameworks are not
# installed: a test module that imports one of them, or a helper that does, at its top is then not
# collected, and the header lists each with the package it needs. Anywhere else a missing package
# fails the collection loudly, so the full suite can never shrink without a sign.
_CORE_SUITE = os.environ.get("CALLSTATE_CORE_SUITE") == "1"
_OPTIONAL = (
    "torch", "lightning", "pytorch_lightning", "transformers", "accelerate", "ignite", "torchtnt", "jax", "orbax",
    "keras", "fsspec", "s3fs", "moto", "boto3",
)
# Test helper modules, by the package each needs.
_HELPERS = {
    "lightning_helpers": "torch",
    "dist_helpers": "torch",
    "torch_hostile": "torch",
    "hf_helpers": "transformers",
    "accelerate_helpers": "accelerate",
}
_TOP_IMPORT = re.compile(r"^(?:import|from) (?:tests\.)?(\w+)", re.MULTILINE)
_not_collected: dict[str, str] = {}


def _missing(name: str) -> bool:
    return importlib.util.find_spec(name) is None


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if not _CORE_SUITE or collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    for name in _TOP_IMPORT.findall(collection_path.read_text()):
        package = _HELPERS.get(name, name)
        if package in _OPTIONAL and _missing(package):
            _not_collected[collection_path.name] = package
            return True
    return None


def pytest_report_header(config: pytest.Config) -> list[str]:
    if not _CORE_SUITE:
        return []
    return ["core suite: test modules that need a package not installed here are not collected"]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _not_collected:
        listing = ", ".join(f"{name} ({package})" for name, package in sorted(_not_collected.items()))
        terminalreporter.write_line(f"core suite: not collected, needing a package not installed: {listing}")
