"""Relocation: paths inside saved states rewritten from an old place to a new one.

A run moved to another directory, machine or bucket keeps paths to the old place in its states
(Lightning's ``ModelCheckpoint.dirpath`` and ``best_k_models``). ``Relocation`` rewrites every
``str`` and ``PurePath`` value, and every dict key, that is an old prefix or starts with it
followed by a separator: whole path components only, so ``/old/run`` moves ``/old/run/a.ckpt``
and leaves ``/old/runner`` alone. URLs are strings like any other (``s3://a/run``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import PurePath
from typing import Any

from .._support import show
from ..errors import RelocationError
from ._keys import format_key, parse_key

# Both separators are component boundaries: a state saved on Windows and read on Linux (or the
# other way round) still moves, and a URL has only '/'.
_SEPARATORS = ("/", "\\")


def _text(value: object, what: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        text = os.fspath(value)
        if isinstance(text, str):
            return text
    raise TypeError(
        f"relocate= takes {{old: new}} of str or os.PathLike; its {what} {show(value)} is not one."
    )


class Relocation(Mapping[str, str]):
    """A checked ``{old prefix: new prefix}``; ``apply`` rewrites one state with it.

    It is itself a read-only mapping of the prefixes as checked (trailing separators dropped), so
    an adapter can keep the checked form and hand it on wherever ``relocate=`` takes a mapping:
    checking it again keeps it as it is.

    Args:
        mapping: ``{old: new}``, each a ``str`` or ``os.PathLike``. A trailing separator is
            ignored (``"/old/"`` is ``"/old"``); the longest old prefix that matches wins.

    Raises:
        TypeError: a prefix is not a str or path, or ``mapping`` is not a mapping.
        ValueError: an old prefix is empty (or only separators): it would match every path.
    """

    def __init__(self, mapping: Mapping[Any, Any]) -> None:
        if not isinstance(mapping, Mapping):
            raise TypeError(f"relocate= takes a mapping {{old: new}}, got {type(mapping).__qualname__}.")
        by_old: dict[str, str] = {}
        for old, new in mapping.items():
            old_text = _text(old, "old prefix").rstrip("/\\")
            new_text = _text(new, "new prefix")
            if not old_text:
                raise ValueError(
                    f"relocate= old prefix {show(old)} is empty or a root: it would match every path. "
                    "Give the directory the run was in."
                )
            stripped = new_text.rstrip("/\\")
            moved = stripped if stripped else new_text[:1]
            if by_old.setdefault(old_text, moved) != moved:
                raise ValueError(
                    f"relocate= gives the old prefix {show(old_text)} twice (trailing separators are "
                    f"ignored), moving it to {show(by_old[old_text])} and to {show(moved)}: give it once."
                )
        self._by_old = by_old
        # Longest first, so a nested old prefix wins over the one that contains it.
        self._pairs = sorted(by_old.items(), key=lambda p: len(p[0]), reverse=True)
        # What a key holding a path under a new prefix must contain, checked before it is parsed:
        # parsing costs 80 us a key (ast.literal_eval); a key without it is turned away in 2.4 us
        # (keys_before over 20,000 keys of a registry, measured on this machine).
        self._marks = [_verbatim(new) for _, new in self._pairs]

    def __getitem__(self, old: str) -> str:
        return self._by_old[old]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_old)

    def __len__(self) -> int:
        return len(self._by_old)

    def __bool__(self) -> bool:
        return bool(self._pairs)

    def __repr__(self) -> str:
        return f"Relocation({self._by_old!r})"

    def text(self, value: str) -> str | None:
        """Return ``value`` moved to its new place, or None when no old prefix matches it."""
        for old, new in self._pairs:
            if value.startswith(old):
                rest = value[len(old) :]
                if not rest or rest[0] in _SEPARATORS:
                    return new + rest
        return None

    def keys_before(self, key: object) -> list[str]:
        """Return the keys a callback keyed ``key`` now had before the run moved, one per prefix pair.

        A key in Lightning's format whose identity holds a path under a new prefix (Keras's
        ``ModelCheckpoint{..., 'filepath': '/new/run/best.keras'}``) was the same key with that
        path under the old prefix: a restore tries these as aliases. ``[]`` for any other key.
        """
        if not isinstance(key, str) or not key.endswith("}"):
            return []
        if not any(mark in key for mark in self._marks):
            return []
        cls, fields = parse_key(key)
        if not isinstance(fields, dict):
            return []
        found = []
        for old, new in self._pairs:
            before, moved = {}, False
            for name, value in fields.items():
                if type(value) is str and value.startswith(new):
                    back = old + value[len(new) :]
                    if self.text(back) == value:  # whole components, and no longer old prefix wins
                        value, moved = back, True
                before[name] = value
            candidate = format_key(cls, before)
            if moved and candidate not in found:
                found.append(candidate)
        return found

    def apply(self, state: Any, key: Any) -> tuple[Any, int]:
        """Return ``state`` with its paths moved, and how many values and keys were rewritten.

        ``state`` is not changed: containers holding a moved path are rebuilt (of the same type for
        dict, list, tuple, set and frozenset), the rest is shared. An object reached twice is
        rewritten once, so a state with shared parts costs its number of distinct objects.

        Raises:
            RelocationError: two dict keys become one, or the state nests too deeply.
        """
        walk = _Walk(self, key)
        try:
            return walk.value(state), walk.count
        except RecursionError:
            raise RelocationError(
                f"The state of {show(key)} nests too deeply to relocate its paths; nothing was restored.",
                key=key,
                path=None,
            ) from None


def _verbatim(text: str) -> str:
    """Return the longest part of ``text`` that ``repr`` shows as it is (no quote, backslash, escape)."""
    parts: list[str] = []
    part: list[str] = []
    for c in text:
        if c in "\\'\"" or not c.isprintable():
            parts.append("".join(part))
            part = []
        else:
            part.append(c)
    parts.append("".join(part))
    return max(parts, key=len)


def relocation_of(value: Any) -> Relocation | None:
    """Return ``relocate=`` checked, as a ``Relocation``; None for None or an empty mapping.

    Raises:
        TypeError, ValueError: as ``Relocation``.
    """
    if value is None or isinstance(value, Relocation):
        return value or None
    relocation = Relocation(value)
    return relocation or None


class _Walk:
    """One state's rewrite: the results by object id, and the count."""

    def __init__(self, relocation: Relocation, key: Any) -> None:
        self.relocation = relocation
        self.key = key
        self.count = 0
        self.memo: dict[int, Any] = {}
        self.keep: list[Any] = []  # holds the originals, so their ids stay theirs while the walk runs

    def value(self, value: Any) -> Any:
        t = type(value)
        if t is str:
            moved = self.relocation.text(value)
            if moved is None:
                return value
            self.count += 1
            return moved
        if isinstance(value, PurePath):
            moved = self.relocation.text(str(value))
            if moved is None:
                return value
            self.count += 1
            return type(value)(moved)
        if t not in (dict, list, tuple, set, frozenset):
            return value
        found = self.memo.get(id(value), _NONE)
        if found is not _NONE:
            return found
        self.keep.append(value)
        out: Any
        if t is dict:
            out = self._dict(value)
        else:
            items = [self.value(v) for v in value]
            changed = any(a is not b for a, b in zip(items, value, strict=False))
            out = t(items) if changed else value
        self.memo[id(value)] = out
        return out

    def _dict(self, value: dict[Any, Any]) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        origin: dict[Any, Any] = {}  # new key -> the key it was, to name both in a message
        changed = False
        for k, v in value.items():
            new_k = self.value(k) if isinstance(k, str | PurePath) else k
            new_v = self.value(v)
            if new_k is not k or new_v is not v:
                changed = True
            if new_k in out:
                raise RelocationError(
                    f"Relocating the state of {show(self.key)} moves the dict keys {show(origin[new_k])} "
                    f"and {show(k)} of one dict both onto {show(new_k)}; nothing was restored. Relocate "
                    "to a place the run never wrote to, or drop one of the two entries.",
                    key=self.key,
                    path=str(new_k),
                )
            out[new_k] = new_v
            origin[new_k] = k
        return out if changed else value


_NONE = object()
