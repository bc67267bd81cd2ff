"""Telling callbacks apart in messages: their class, their public attributes, what differs between two."""

from __future__ import annotations

import reprlib
from typing import Any

import attrs

from ..errors import DuplicateKeyError
from ._snapshot import describe
from ._transaction import equal


def _public_attributes(obj: object) -> dict[str, Any]:
    cls: Any = type(obj)
    if attrs.has(cls):
        return {f.name: getattr(obj, f.name, None) for f in attrs.fields(cls)}
    try:
        found = dict(vars(obj))
    except TypeError:
        found = {}
    for klass in type(obj).__mro__:
        for name in getattr(klass, "__slots__", ()):
            if hasattr(obj, name):
                found.setdefault(name, getattr(obj, name))
    return {k: v for k, v in found.items() if not k.startswith("_")}


def differing_fields(a: object, b: object) -> tuple[str, ...]:
    """Return the public attribute names whose values differ between ``a`` and ``b``."""
    attrs_a, attrs_b = _public_attributes(a), _public_attributes(b)
    names = list(attrs_a) + [n for n in attrs_b if n not in attrs_a]
    return tuple(
        n for n in names if n not in attrs_a or n not in attrs_b or not equal(attrs_a[n], attrs_b[n])
    )


_short = reprlib.Repr()
_short.maxstring = _short.maxother = 40


def portrait(obj: object) -> str:
    """Name ``obj`` by its class and public attributes, so two look-alikes can be told apart."""
    if type(obj).__repr__ is not object.__repr__:
        return _short.repr(obj)
    fields = ", ".join(f"{k}={_short.repr(v)}" for k, v in list(_public_attributes(obj).items())[:8])
    return f"{describe(obj)}({fields})"


def duplicate_error(key: Any, first: tuple[int, object], second: tuple[int, object]) -> DuplicateKeyError:
    (i, a), (j, b) = first, second
    if a is b:
        return DuplicateKeyError(
            f"State key {key!r}: callback #{i} {portrait(a)} is already registered; "
            "register each object once.",
            key=key,
            callbacks=(a, b),
        )
    differ = differing_fields(a, b)
    if differ:
        fix = (
            f"the fields that differ between them are {differ!r}: add one to identity=, "
            "or pass key= explicitly."
        )
    else:
        fix = "no public attribute differs between them: pass key= explicitly."
    return DuplicateKeyError(
        f"State key {key!r} is shared by callback #{i} {portrait(a)} and callback #{j} {portrait(b)}; "
        f"{fix}",
        key=key,
        callbacks=(a, b),
    )


