"""docs/security.md names the tests that hold its promises: every test it names exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAMED = re.compile(r"tests/(test_\w+)\.py(?:::(\w+))?")


def _tests_in(module: str) -> set[str]:
    tree = ast.parse((ROOT / "tests" / f"{module}.py").read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


def test_every_test_the_security_model_names_exists() -> None:
    """Each tests/test_x.py(::test_y) in docs/security.md is a test module (and a test in it)."""
    named = NAMED.findall((ROOT / "docs" / "security.md").read_text())
    assert len(named) >= 20  # the page names its tests; a rewrite that drops them fails here
    missing = [
        f"{module}::{test}" if test else module
        for module, test in named
        if not (ROOT / "tests" / f"{module}.py").is_file() or (test and test not in _tests_in(module))
    ]
    assert missing == []
