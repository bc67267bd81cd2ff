"""The public namespace: flat, complete, sorted, and presenting every name as ``callstate.X``."""

from __future__ import annotations

import re
import types
from pathlib import Path

import callstate

ROOT = Path(__file__).resolve().parent.parent


def test_all_names_exist_once_and_sorted() -> None:
    """Every name in __all__ exists, appears once, and __all__ is sorted."""
    assert len(set(callstate.__all__)) == len(callstate.__all__)
    assert callstate.__all__ == sorted(callstate.__all__)
    missing = [n for n in callstate.__all__ if not hasattr(callstate, n)]
    assert missing == []


def test_all_lists_every_public_name() -> None:
    """Every public attribute of callstate (submodules aside) is listed in __all__."""
    public = {
        n for n, v in vars(callstate).items() if not n.startswith("_") and not isinstance(v, types.ModuleType)
    }
    assert public == set(callstate.__all__)


def test_star_import_gives_all() -> None:
    """``from callstate import *`` binds exactly the names in __all__."""
    namespace: dict[str, object] = {}
    exec("from callstate import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(callstate.__all__)


def test_public_objects_present_as_callstate() -> None:
    """Public classes and functions have __module__ 'callstate' (errors: 'callstate.errors'), as docs and reprs show them."""
    wrong = {
        n: getattr(callstate, n).__module__
        for n in callstate.__all__
        if getattr(getattr(callstate, n), "__module__", "callstate") not in ("callstate", "callstate.errors")
    }
    assert wrong == {}
    errors = [n for n in callstate.__all__ if getattr(callstate, n).__module__ == "callstate.errors"]
    assert all(getattr(callstate.errors, n) is getattr(callstate, n) for n in errors)


def test_at_most_32_top_level_names() -> None:
    """The flat namespace stays small: at most 32 names (the rarer errors are in callstate.errors)."""
    assert len(callstate.__all__) <= 32


def test_public_objects_are_documented() -> None:
    """Every public class and function has a docstring."""
    undocumented = [n for n in callstate.__all__ if not (getattr(callstate, n).__doc__ or "").strip()]
    assert undocumented == []


def test_version_matches_pyproject() -> None:
    """callstate.__version__ is the version in pyproject.toml."""
    text = (ROOT / "pyproject.toml").read_text()
    match = re.search(r'^version = "([^"]+)"', text, re.MULTILINE)
    assert match is not None
    assert callstate.__version__ == match.group(1)


def test_typed_marker_shipped() -> None:
    """The package ships py.typed and declares it as package data."""
    assert (Path(callstate.__file__).parent / "py.typed").is_file()
    assert 'callstate = ["py.typed"]' in (ROOT / "pyproject.toml").read_text()


def test_issue_api_names() -> None:
    """The names the issue makes the contract are all exported."""
    contract = {
        "CallbackRegistry",
        "CallstateError",
        "CallstateWarning",
        "DuplicateKeyError",
        "IdentityError",
        "RestoreError",
        "RestoreReport",
        "StateMismatchError",
        "Stateful",
        "field",
        "state_key",
        "stateful",
    }
    assert contract <= set(callstate.__all__)
