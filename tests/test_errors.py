"""The error hierarchy: one root, each error refining a builtin, carrying its data, surviving pickling."""

from __future__ import annotations

import pickle
from typing import Any

import cloudpickle
import pytest

import callstate

BUILTINS = {
    "IdentityError": ValueError,
    "DuplicateKeyError": ValueError,
    "StateMismatchError": KeyError,
    "NotRegisteredError": KeyError,
    "RestoreError": RuntimeError,
    "InvalidStateError": ValueError,
    "CorruptCheckpointError": ValueError,
    "UnsupportedFormatError": ValueError,
    "UnsafeCheckpointError": pickle.UnpicklingError,
    "RankMismatchError": ValueError,
    "RelocationError": ValueError,
}

# Bases that only group callstate errors and refine no builtin themselves.
GROUPS = {"CallstateError", "CheckpointError"}


def error_classes() -> list[type[BaseException]]:
    """Every exception class exported by callstate.errors (the top level re-exports some of them)."""
    objs = (getattr(callstate.errors, n) for n in callstate.errors.__all__)
    return [o for o in objs if isinstance(o, type) and issubclass(o, BaseException)]


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_error_refines_its_builtin(name: str) -> None:
    """Each core error subclasses CallstateError and the builtin it refines."""
    cls = getattr(callstate.errors, name)
    assert issubclass(cls, callstate.CallstateError)
    assert issubclass(cls, BUILTINS[name])


def test_every_exported_error_has_the_root_and_a_builtin() -> None:
    """Every exported error (warnings aside) has CallstateError as root and refines a builtin error."""
    plain = {Exception, BaseException, object}
    for cls in error_classes():
        if issubclass(cls, Warning):
            continue
        assert issubclass(cls, callstate.CallstateError), cls
        if cls.__name__ in GROUPS:
            continue
        builtins = [b for b in cls.__mro__ if b.__module__ == "builtins" and b not in plain]
        builtins += [b for b in cls.__mro__ if b is pickle.UnpicklingError]
        assert builtins, f"{cls.__name__} refines no builtin"


def test_checkpoint_errors_group() -> None:
    """The file errors share CheckpointError, itself a CallstateError."""
    assert issubclass(callstate.CheckpointError, callstate.CallstateError)
    for cls in (
        callstate.CorruptCheckpointError,
        callstate.UnsupportedFormatError,
        callstate.UnsafeCheckpointError,
    ):
        assert issubclass(cls, callstate.CheckpointError)


def test_warning_root() -> None:
    """CallstateWarning is a UserWarning, so filters on either catch it."""
    assert issubclass(callstate.CallstateWarning, UserWarning)
    assert not issubclass(callstate.CallstateWarning, callstate.CallstateError)


def test_key_errors_print_readably() -> None:
    """KeyError subclasses print their message, not its repr (KeyError's default)."""
    e = callstate.StateMismatchError("line one\nline 'two'", missing=("a",), unexpected=("b",))
    assert str(e) == "line one\nline 'two'"
    n = callstate.errors.NotRegisteredError("No callback is registered under key 'x'.", key="x")
    assert str(n) == "No callback is registered under key 'x'."


def examples() -> list[callstate.CallstateError]:
    """One instance of each core error, with its data."""
    return [
        callstate.CallstateError("root"),
        callstate.IdentityError("i", cls=int, field="f", value_repr="<x at 0x1>"),
        callstate.DuplicateKeyError("d", key="k", callbacks=("a", "b")),
        callstate.StateMismatchError("s", missing=("m",), unexpected=("u", int)),
        callstate.errors.NotRegisteredError("n", key="k"),
        callstate.RestoreError("r", key="k", rolled_back=("a",)),
        callstate.errors.InvalidStateError("v", cls=dict, unknown=("x",)),
        callstate.CheckpointError("c", path="/p", key="k"),
        callstate.CorruptCheckpointError("c", path="/p", key="k"),
        callstate.UnsupportedFormatError("u", found=9, supported=1, path="/p"),
        callstate.UnsafeCheckpointError("x", global_name="os.system", path="/p", key="k"),
        callstate.errors.RankMismatchError("w", saved_world_size=2, world_size=4),
        callstate.errors.RelocationError("m", key="k", path="/new/a"),
    ]


@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps], ids=["pickle", "cloudpickle"])
@pytest.mark.parametrize("error", examples(), ids=lambda e: type(e).__name__)
def test_errors_survive_pickling(error: callstate.CallstateError, dumps: Any) -> None:
    """An error sent to another process keeps its class, message and data."""
    back = pickle.loads(dumps(error))
    assert type(back) is type(error)
    assert str(back) == str(error)
    assert back.args == error.args
    assert vars(back) == vars(error)
    if type(error) is not callstate.CallstateError:
        assert vars(back), "the error's data was lost"


def test_report_survives_pickling() -> None:
    """A RestoreReport pickles and unpickles equal, renamed included."""
    report = callstate.RestoreReport(
        restored=("a", "b"), missing=("c",), unexpected=("d", int), renamed={"b": "old-b", "a": int}
    )
    for dumps in (pickle.dumps, cloudpickle.dumps):
        back = pickle.loads(dumps(report))
        assert back == report
        assert dict(back.renamed) == {"b": "old-b", "a": int}


def test_report_is_immutable() -> None:
    """RestoreReport is immutable, compares by value and is hashable."""
    report = callstate.RestoreReport(renamed={"a": "b"})
    with pytest.raises(AttributeError):
        report.restored = ("x",)  # type: ignore[misc]
    with pytest.raises(TypeError):
        report.renamed["a"] = "c"  # type: ignore[index]
    assert report == callstate.RestoreReport(renamed={"a": "b"})
    assert report != callstate.RestoreReport(renamed={"a": "c"})
    assert hash(report) == hash(callstate.RestoreReport(renamed={"a": "b"}))
    assert report.restored == report.missing == report.unexpected == ()


def test_every_error_and_warning_lives_in_callstate_errors() -> None:
    """Every error and warning class callstate defines is in callstate.errors, presented as callstate.errors.X."""
    import ast
    from pathlib import Path

    package = Path(callstate.__file__).parent
    ours = set(callstate.errors.__all__)
    elsewhere = []
    for path in package.rglob("*.py"):  # the source, so the adapters count without their frameworks
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(isinstance(b, ast.Name) and b.id in ours for b in node.bases):
                elsewhere.append(f"{path.relative_to(package)}: {node.name}")
    assert elsewhere == []
    assert {getattr(callstate.errors, n).__module__ for n in callstate.errors.__all__} == {"callstate.errors"}
    top = [n for n in callstate.__all__ if isinstance(getattr(callstate, n), type) and issubclass(getattr(callstate, n), BaseException)]
    assert all(getattr(callstate, n) is getattr(callstate.errors, n) for n in top)


def test_an_error_that_left_the_top_level_still_resolves_with_a_deprecation_warning() -> None:
    """callstate.X for an error now only in callstate.errors still works, with CallstateDeprecationWarning."""
    assert "RankMismatchError" not in callstate.__all__
    with pytest.warns(callstate.errors.CallstateDeprecationWarning, match=r"callstate\.errors\.RankMismatchError"):
        cls = callstate.RankMismatchError  # type: ignore[attr-defined]
    assert cls is callstate.errors.RankMismatchError
    with pytest.raises(AttributeError):
        callstate.NoSuchError  # type: ignore[attr-defined]  # noqa: B018



def test_the_errors_page_has_a_row_for_every_class_in_callstate_errors() -> None:
    """docs/guide/errors.md has one table row for each name in callstate.errors.__all__, naming its builtin."""
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parent.parent / "docs" / "guide" / "errors.md").read_text(encoding="utf-8")
    rows = {m[1]: m[2] for m in re.finditer(r"^\| `(\w+)` \|([^|]*)\|", page, re.MULTILINE)}
    assert sorted(rows) == sorted(callstate.errors.__all__)
    for name, also in rows.items():
        cls = getattr(callstate.errors, name)
        for builtin in re.findall(r"`(\w+)`", also):
            assert builtin in {b.__name__ for b in cls.__mro__}, (name, builtin)
