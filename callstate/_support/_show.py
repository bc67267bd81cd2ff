"""One formatter for every value that came from outside callstate: bounded, and escaped.

Every message, warning and line of CLI output that shows a value read from a file (a key, an
identity, a manifest field, a zip member name, a path, a state) shows it through :func:`show` or
:func:`escape`. ``f"{value!r:.200}"`` is not bounded: it computes the whole ``repr()`` before cutting
it, and a 40-level shared list (``Lk = [Lk-1, Lk-1]``, a few hundred bytes in a file) has a repr of
2**40 items; ``repr()`` of an int over 4,300 digits raises ``ValueError``. Here the work is bounded by
the output: at most ``limit`` characters, each container item and each level costing some of it.
Control and bidirectional-format characters never reach a terminal raw: they are escaped as Python
escapes them (``\\x1b``, ``\\r``, ``\\u202e``).
"""

from __future__ import annotations

import re
from collections import OrderedDict, deque
from typing import Any

__all__ = ["LIMIT", "escape", "show"]

LIMIT = 200
"""The default bound on what one value takes in a message, in characters."""

# C0 and C1 controls, DEL, and the characters that reorder or hide text on a terminal or in an
# editor (line and paragraph separators, bidirectional marks, embeddings, overrides and isolates,
# zero-width joiners, the BOM): what a crafted key could use to draw a fake line. Lone surrogates
# too (a JSON index or a pickle can hold them): no terminal encoding can print them.
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ud800-\udfff\ufeff]"
)

# Ints with more bits than this are shown by their size: their decimal repr costs time quadratic
# in their length, and Python refuses it past 4,300 digits (sys.int_info.str_digits_check_threshold).
_INT_BITS = 1024
_DEPTH = 8


_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def escape(text: object, limit: int = LIMIT) -> str:
    """``text`` as a str fit for one line of a message: control characters escaped, at most ``limit``.

    A str is shown without quotes (a key in a table, a path in a sentence); anything else is shown
    with :func:`show`. A longer text is cut and says how long it was.
    """
    if not isinstance(text, str):
        return show(text, limit)
    cut = text[: limit + 1]
    out = _UNSAFE.sub(_escape_char, cut[:limit] if len(cut) > limit else cut)
    if len(out) > limit:
        out = out[:limit]
    if len(text) > limit or len(out) < len(_UNSAFE.sub(_escape_char, cut)):
        out += f"...({len(text):,} characters)"
    return out


class _Budget:
    """What is left of the output's characters; every part shown spends some."""

    __slots__ = ("left",)

    def __init__(self, left: int) -> None:
        self.left = left


def show(value: object, limit: int = LIMIT) -> str:
    """A repr of ``value`` of at most about ``limit`` characters, computed in time bounded by ``limit``.

    Builtin containers are walked with one budget shared by all their items (a shared reference is
    shown again, but each showing spends the budget, so a DAG of 2**40 paths costs ``limit``); at
    most 8 levels are shown. Big ints are shown by their size, long str and bytes cut, and other
    objects by their type's name (their ``__repr__`` is code this formatter does not run).
    """
    budget = _Budget(max(limit, 16))
    out = _show(value, budget, 0)
    return out if len(out) <= limit + 40 else out[:limit] + "..."


_SEQUENCES: dict[type, tuple[str, str]] = {
    list: ("[", "]"),
    tuple: ("(", ")"),
    set: ("{", "}"),
    frozenset: ("frozenset({", "})"),
}


_EMPTY: dict[type, str] = {list: "[]", tuple: "()", set: "set()", frozenset: "frozenset()"}


def _show(value: Any, budget: _Budget, depth: int) -> str:  # noqa: C901 - one case per builtin kind
    if budget.left <= 0:
        return "..."
    kind = type(value)
    if value is None or kind is bool or kind is float or kind is complex:
        text = repr(value)
    elif kind is int:
        text = repr(value) if value.bit_length() <= _INT_BITS else f"<int of {value.bit_length():,} bits>"
    elif kind is str:
        text = _show_str(value, budget.left)
    elif kind is bytes or kind is bytearray:
        text = _show_bytes(value, budget.left)
    elif depth >= _DEPTH and (kind in _SEQUENCES or isinstance(value, (dict, deque))):
        text = "..."
    elif kind in _SEQUENCES:
        open_, close = _SEQUENCES[kind]
        if not value:
            text = _EMPTY[kind]
        else:
            items = _items(value, budget, depth)
            text = open_ + items + ("," if kind is tuple and len(value) == 1 else "") + close
    elif kind is dict or kind is OrderedDict:
        budget.left -= 2
        text = "{" + _pairs(value, budget, depth) + "}"
        if kind is OrderedDict:
            text = f"OrderedDict({text})"
    elif kind is deque:
        text = "deque([" + _items(value, budget, depth) + "])"
    else:
        text = _show_other(value)
    budget.left -= len(text)
    return text


def _items(values: Any, budget: _Budget, depth: int) -> str:
    parts = []
    for item in values:
        if budget.left <= 0:
            parts.append("...")
            break
        parts.append(_show(item, budget, depth + 1))
        budget.left -= 2
    return ", ".join(parts)


def _pairs(mapping: Any, budget: _Budget, depth: int) -> str:
    parts = []
    for key, item in mapping.items():
        if budget.left <= 0:
            parts.append("...")
            break
        shown_key = _show(key, budget, depth + 1)
        parts.append(f"{shown_key}: {_show(item, budget, depth + 1)}")
        budget.left -= 4
    return ", ".join(parts)


def _show_str(text: str, room: int) -> str:
    room = max(room, 8)
    if len(text) <= room:
        return repr(text)
    return repr(text[:room]) + f"...({len(text):,} characters)"


def _show_bytes(data: bytes | bytearray, room: int) -> str:
    room = max(room // 4, 8)
    shown = repr(bytes(data[:room]))
    if type(data) is bytearray:
        shown = f"bytearray({shown})"
    if len(data) > room:
        shown += f"...({len(data):,} bytes)"
    return shown


# Types whose repr is their value, linear in it and free of control characters (a path's repr
# escapes them as a str's does): shown by that repr, cut.
_REPR_MODULES = frozenset({"datetime", "uuid", "pathlib", "decimal", "numpy.dtypes"})


def _show_other(value: object) -> str:
    kind = type(value)
    if kind is range or kind is slice:
        parts = (value.start, value.stop, value.step)  # type: ignore[attr-defined]
        budget = _Budget(120)
        return f"{kind.__name__}({', '.join(_show(part, budget, _DEPTH) for part in parts)})"
    if kind.__module__ == "fractions" and kind.__qualname__ == "Fraction":
        budget = _Budget(120)
        terms = (value.numerator, value.denominator)  # type: ignore[attr-defined]
        return f"Fraction({', '.join(_show(term, budget, _DEPTH) for term in terms)})"
    if kind.__module__ in _REPR_MODULES:
        return escape(repr(value), LIMIT)
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    module = getattr(kind, "__module__", "")
    qualname = kind.__qualname__ if module in ("builtins", "") else f"{module}.{kind.__qualname__}"
    name = escape(qualname, 80)
    if shape == () and module.startswith("numpy"):
        try:  # a numpy scalar: its repr is its value
            return escape(repr(value), 80)
        except Exception:  # some dtypes cannot be printed (datetime64 of unit 0)
            pass
    if shape is not None and dtype is not None and isinstance(shape, tuple) and len(shape) <= 64:
        # numpy arrays and torch tensors: their size and type say what a message needs; their own
        # repr formats every element (and fails on some dtypes: complex32, datetime64[0Y]).
        dims = escape(repr(tuple(int(n) for n in shape)), 80)
        return f"<{name} shape={dims} dtype={escape(str(dtype), 40)}>"
    return f"<{name}>"
