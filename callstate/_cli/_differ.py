"""Comparing two callback states: the paths at which they differ, tensors and arrays compared exactly.

The states come from files (``callstate diff``), so the comparison is bounded like every other
reader of them. ``==`` and ``repr()`` have no memo: two lists whose items are one shared list,
40 levels deep (a few hundred bytes in a file), are 2**40 comparisons to ``==``. Here every
container kind is walked by this module, each pair of objects compared once, and every step (an
item, a key hashed, a byte of an array) is charged to one :class:`Steps` allowance sized by the
files; values are shown with :func:`callstate._support.show`.
"""

from __future__ import annotations

import math
import pickle
import sys
from collections import OrderedDict, defaultdict, deque
from collections.abc import Mapping
from typing import Any

from .._support import escape, show
from ..errors import ComparisonStoppedError

__all__ = ["ComparisonStoppedError", "STEPS_FLOOR", "STEPS_PER_BYTE", "Steps", "differences"]

# The old and new values of a field are shown when their shown forms are this short together.
_SHORT_VALUES = 60
# Past this depth two states are not walked further (decoded states are at most 100 deep), and no
# more than this many differing paths are listed.
_DIFF_DEPTH = 100
_DIFF_PATHS = 1000
# A path longer than this is shown cut in the middle (100 levels of long keys would be kilobytes).
_PATH_CHARS = 1000

STEPS_PER_BYTE = 4
"""Steps a comparison may take per byte of its two files together (plus :data:`STEPS_FLOOR`).

A file spends at least a byte per value it holds (``None``) and five per container, so two files
holding the same shapes compare in about one step per byte; what is left is for states that share
objects differently on the two sides.
"""
STEPS_FLOOR = 1 << 20
"""Steps any comparison may take, whatever the files' sizes (a fraction of a second)."""

# Charged for a pair of containers compared the first time (its memo entry costs memory).
_NEW_PAIR = 8
# Bytes of array data, and characters of str and bytes, per step.
_BYTES_PER_STEP = 64


class Steps:
    """The steps a diff may still take: one allowance for every state it compares."""

    __slots__ = ("left", "total")

    def __init__(self, total: int) -> None:
        self.total = self.left = total

    @classmethod
    def for_sizes(cls, *sizes: int) -> Steps:
        """The allowance for comparing what files of these sizes (in bytes) hold."""
        return cls(STEPS_FLOOR + STEPS_PER_BYTE * sum(sizes))


def _is_array(x: Any) -> str | None:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return "torch"
    np = sys.modules.get("numpy")
    if np is not None and isinstance(x, np.ndarray):
        return "numpy"
    return None


# -- leaves ---------------------------------------------------------------------------------------


def _torch_values_same(torch: Any, a: Any, b: Any) -> bool:
    if torch.equal(a, b):
        return True
    if not (a.dtype.is_floating_point or a.dtype.is_complex):
        return False
    nan = a.isnan()
    # Equal NaN positions, then every other value exactly (infinities included: nan_to_num
    # would map them to the dtype's extremes).
    return bool(torch.equal(nan, b.isnan()) and torch.equal(a[~nan], b[~nan]))


def _torch_same(a: Any, b: Any) -> bool:
    torch = sys.modules["torch"]
    try:
        return _torch_values_same(torch, a, b)
    except (RuntimeError, TypeError, NotImplementedError):
        pass  # no kernel for this dtype: complex32 (torch.equal), float8 (isnan), uint32, ...
    # Widened to a dtype that holds every value exactly, NaN rules as above; else bit for bit.
    wide = torch.complex64 if a.dtype.is_complex else torch.float32 if a.dtype.is_floating_point else None
    if wide is not None:
        try:
            return _torch_values_same(torch, a.to(wide), b.to(wide))
        except (RuntimeError, TypeError, NotImplementedError):
            pass
    try:
        flat_a = a.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        flat_b = b.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        return bool(torch.equal(flat_a, flat_b))
    except (RuntimeError, TypeError, NotImplementedError):
        return False  # not comparable here (a meta tensor): shown as a difference, never "same"


def _numpy_same(a: Any, b: Any) -> bool:
    np = sys.modules["numpy"]
    try:
        if a.dtype.kind in "mM":  # by their int64 values: NaT equals NaT, every unit compares
            return bool(np.array_equal(a.view(np.int64), b.view(np.int64)))
        return bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    except Exception:
        try:
            return bool(a.tobytes() == b.tobytes())
        except Exception:
            return False


def _one_value(x: Any) -> str:
    """Return a one-element tensor or array shown as ``tensor(0.5)`` / ``array(3)``, else ``""``."""
    kind = _is_array(x)
    if kind is None or getattr(x, "ndim", 0) > 8:
        return show(x, _SHORT_VALUES) if kind is None else ""
    try:
        count = x.numel() if kind == "torch" else x.size
        if count != 1 or getattr(x, "is_meta", False) or getattr(x, "is_sparse", False):
            return ""
        value = x.reshape(()).item()
    except Exception:  # a tensor whose values are not here (a subclass, another device): no value shown
        return ""
    return f"{'tensor' if kind == 'torch' else 'array'}({show(value, _SHORT_VALUES)})"


def _arrays_same(a: Any, b: Any) -> bool:
    kind_a, kind_b = _is_array(a), _is_array(b)
    if kind_a != kind_b or type(a) is not type(b):
        return False
    try:
        if a.dtype != b.dtype or tuple(a.shape) != tuple(b.shape):
            return False
    except Exception:
        return False
    return _torch_same(a, b) if kind_a == "torch" else _numpy_same(a, b)


def _is_numpy_scalar(x: Any) -> bool:
    np = sys.modules.get("numpy")
    return bool(np is not None and isinstance(x, np.generic))


def _same_leaf(a: Any, b: Any) -> bool:
    if _is_array(a) or _is_array(b):
        return _arrays_same(a, b)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if type(a) is not type(b):
        return False
    if _is_numpy_scalar(a):  # np.float32 NaN, datetime64 NaT: as 0-d arrays
        np = sys.modules["numpy"]
        return _arrays_same(np.asarray(a), np.asarray(b))
    try:
        return bool(a == b)
    except Exception:
        try:
            return pickle.dumps(a) == pickle.dumps(b)
        except Exception:
            return a is b


def _leaf_cost(x: Any) -> int:
    kind = type(x)
    if kind is str or kind is bytes or kind is bytearray:
        return 1 + len(x) // _BYTES_PER_STEP
    if kind is int:
        return 1 + int(x.bit_length()) // (8 * _BYTES_PER_STEP)
    if _is_array(x):
        try:
            nbytes = int(x.nbytes)
        except Exception:
            nbytes = 0
        return 1 + nbytes // _BYTES_PER_STEP
    return 1


_IDENTITY_EQ: Any = object.__eq__
# Values compared in a step and never worth a memo entry.
_ATOMS = frozenset({type(None), bool, float, complex})
_BIG_LEAF = 1024


def _memoized(x: Any) -> bool:
    kind = type(x)
    if kind in _ATOMS:
        return False
    if kind is str or kind is bytes:
        return len(x) > _BIG_LEAF
    if kind is int:
        return bool(x.bit_length() > 8 * _BIG_LEAF)
    return True


# -- paths ----------------------------------------------------------------------------------------

# A path is built only when it is shown: (parent, key, how), how "item" (``[key]``) or "attr" (``.key``).
_Path = tuple[Any, Any, str] | None


def _render(path: _Path) -> str:
    parts: list[str] = []
    while path is not None:
        parent, key, how = path
        if how == "attr":
            parts.append(f".{escape(key, 60)}" if parent is not None else escape(key, 60))
        elif parent is None and isinstance(key, str) and key.isidentifier():
            parts.append(escape(key, 60))
        else:
            parts.append(f"[{show(key, 60)}]")
        path = parent
    text = "".join(reversed(parts))
    if len(text) > _PATH_CHARS:
        text = text[: _PATH_CHARS // 4] + "..." + text[-(_PATH_CHARS * 3 // 4) :]
    return text


def _where(path: _Path) -> str:
    return _render(path) or "(the whole state)"


# -- the walk -------------------------------------------------------------------------------------


def _kind(x: Any) -> str | None:
    """The container kind this module walks ``x`` as, or None for a leaf."""
    cls = type(x)
    try:
        return _KINDS[cls]
    except KeyError:
        pass
    if issubclass(cls, Mapping):
        kind: str | None = "mapping"
    elif issubclass(cls, list | tuple | deque):
        kind = "sequence"
    elif issubclass(cls, set | frozenset):
        kind = "set"
    elif not _is_array(x) and isinstance(getattr(x, "__dict__", None), dict):
        return "object"  # not cached: whether an instance has a __dict__ is its own
    else:
        kind = None
    _KINDS[cls] = kind
    return kind


_KINDS: dict[type, str | None] = {}


class _Walk:
    def __init__(self, steps: Steps) -> None:
        self.steps = steps
        self.out: list[str] = []
        self.seen: set[int] = set()
        self.sizes: dict[int, int] = {}  # id -> what hashing or == of it costs (its expansion)

    def spend(self, n: int, path: _Path) -> None:
        self.steps.left -= n
        if self.steps.left < 0:
            where = _where(path)
            raise ComparisonStoppedError(
                f"The comparison stopped at {where} after {self.steps.total:,} steps: the states share "
                "objects along more paths than the size of what they were read from allows comparing.",
                where=where,
                steps=self.steps.total,
            )

    def size(self, x: Any, path: _Path) -> int:
        """What hashing or comparing ``x`` with ``==`` costs: its expansion through shared references.

        Counted once per object (a memo), and no further than the steps left, so a 40-level shared
        tuple costs 40 entries here, not 2**40.
        """
        if type(x) in _ATOMS or type(x) is str or type(x) is bytes or type(x) is int:
            return _leaf_cost(x)
        known = self.sizes.get(id(x))
        if known is not None:
            return known
        if isinstance(x, Mapping):
            children: Any = (item for pair in x.items() for item in pair)
        elif isinstance(x, list | tuple | deque | set | frozenset):
            children = x
        elif not _is_array(x) and isinstance(getattr(x, "__dict__", None), dict):
            children = x.__dict__.values()
        else:
            return _leaf_cost(x)
        self.sizes[id(x)] = 1  # a cycle adds nothing more
        cap = self.steps.left + 1
        total = 1
        for child in children:
            total += self.size(child, path)
            if total > cap:
                break
        self.sizes[id(x)] = total
        return total

    def compare(self, a: Any, b: Any, path: _Path, depth: int) -> None:
        if len(self.out) > _DIFF_PATHS:
            return
        self.steps.left -= 1
        if a is b:
            return  # one object: equal to itself (a NaN too)
        if type(a) in _ATOMS and type(b) is type(a):  # the common leaf, in one step
            if a != b and not (a != a and b != b):  # NaN equals NaN
                self.out.append(self.described(a, b, path))
            return
        self.spend(0, path)
        kind = _kind(a)
        if kind is not None and kind == _kind(b) and (kind == "mapping" or type(a) is type(b)):
            if not self.first_visit(a, b, path):
                return
            if depth >= _DIFF_DEPTH:
                self.out.append(f"{_where(path)} (deeper than {_DIFF_DEPTH} levels: not compared)")
                return
            getattr(self, f"_{kind}")(a, b, path, depth)
            return
        if (_memoized(a) or _memoized(b)) and not self.first_visit(a, b, path):
            return
        self.spend(_leaf_cost(a) + _leaf_cost(b), path)
        if not _same_leaf(a, b):
            self.out.append(self.described(a, b, path))

    def first_visit(self, a: Any, b: Any, path: _Path) -> bool:
        """Whether the pair is met for the first time (then it is compared, under this path)."""
        pair = (id(a) << 64) | id(b)
        if pair in self.seen:
            return False
        self.spend(_NEW_PAIR, path)
        self.seen.add(pair)
        return True

    def described(self, a: Any, b: Any, path: _Path) -> str:
        where = _render(path)
        if not _is_array(a) and not _is_array(b):
            shown_a, shown_b = show(a, _SHORT_VALUES), show(b, _SHORT_VALUES)
        else:  # a one-element tensor or array (a best score, a step count) shows its value too
            shown_a, shown_b = _one_value(a), _one_value(b)
        if shown_a and shown_b and shown_a != shown_b and len(shown_a) + len(shown_b) <= _SHORT_VALUES:
            return f"{where} ({shown_a} -> {shown_b})" if where else f"{shown_a} -> {shown_b}"
        return where or "(the whole state)"

    def _mapping(self, a: Mapping[Any, Any], b: Mapping[Any, Any], path: _Path, depth: int) -> None:
        self.spend(len(a) + len(b), path)
        for key in a:
            if type(key) is not str:  # a str caches its hash; a tuple is hashed again at each lookup
                self.spend(2 * self.size(key, path), path)
            if key in b:
                self.compare(a[key], b[key], (path, key, "item"), depth + 1)
            else:
                self.out.append(_render((path, key, "item")))
        for key in b:
            if type(key) is not str:
                self.spend(self.size(key, path), path)
            if key not in a:
                self.out.append(_render((path, key, "item")))
        both = {type(a), type(b)}
        if both == {OrderedDict} and a.keys() == b.keys() and any(x != y for x, y in zip(a, b, strict=True)):
            self.out.append(f"{_where(path)} (the order of its keys)")  # keys charged above
        if (
            isinstance(a, defaultdict)
            and isinstance(b, defaultdict)
            and a.default_factory is not b.default_factory
        ):
            names = [escape(getattr(d.default_factory, "__qualname__", "None"), 40) for d in (a, b)]
            self.out.append(f"{_where(path)} (default_factory {names[0]} -> {names[1]})")

    def _sequence(self, a: Any, b: Any, path: _Path, depth: int) -> None:
        self.spend(len(a), path)
        if len(a) != len(b):
            self.out.append(self.described(a, b, path))
            return
        if type(a) is deque and a.maxlen != b.maxlen:
            self.out.append(f"{_where(path)} (maxlen {a.maxlen} -> {b.maxlen})")
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            self.compare(x, y, (path, i, "item"), depth + 1)

    def _set(self, a: Any, b: Any, path: _Path, depth: int) -> None:
        # Members are matched by hash and ==, whose cost is their expansion: charged before.
        self.spend(sum(self.size(x, path) for x in a) + sum(self.size(x, path) for x in b), path)
        if not _same_leaf(a, b):
            self.out.append(self.described(a, b, path))

    def _object(self, a: Any, b: Any, path: _Path, depth: int) -> None:
        attrs_a, attrs_b = vars(a), vars(b)
        before = len(self.out)
        self.spend(len(attrs_a) + len(attrs_b), path)
        for name in attrs_a:
            if name not in attrs_b:
                self.out.append(_render((path, name, "attr")))
            else:
                self.compare(attrs_a[name], attrs_b[name], (path, name, "attr"), depth + 1)
        self.out.extend(_render((path, name, "attr")) for name in attrs_b if name not in attrs_a)
        if len(self.out) == before and getattr(type(a), "__eq__", None) is _IDENTITY_EQ:
            # Equal attributes, and an identity ==: what else it holds (a C-level state) is
            # compared through its pickle, linear in its size.
            self.spend(self.size(a, path) + self.size(b, path), path)
            try:
                same = pickle.dumps(a) == pickle.dumps(b)
            except Exception:
                same = False
            if not same:
                self.out.append(_where(path))


def differences(a: Any, b: Any, path: str = "", *, steps: Steps | None = None) -> list[str]:
    """Return the paths (``best``, ``shadow['w']``, ``[2]``) at which two states differ.

    Each pair of objects is compared once, however many paths reach it (shared objects, cycles), so
    the walk is linear in the states' sizes; ``steps`` bounds it (one allowance may serve several
    calls), by default :data:`STEPS_FLOOR`.

    Raises:
        ComparisonStoppedError: the comparison would take more than the steps left.
    """
    walk = _Walk(steps if steps is not None else Steps(STEPS_FLOOR))
    walk.compare(a, b, (None, path, "attr") if path else None, 0)
    out = walk.out
    if len(out) > _DIFF_PATHS:  # the walk stopped there
        out[_DIFF_PATHS:] = [f"... and more (the first {_DIFF_PATHS} are shown)"]
    return out
