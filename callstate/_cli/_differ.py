"""Comparing two callback states: the paths at which they differ, tensors and arrays compared exactly."""

from __future__ import annotations

import math
import pickle
import sys
from collections.abc import Mapping
from typing import Any

# The old and new values of a field are shown when their reprs are this short together.
_SHORT_VALUES = 60
# Past this depth two states are not walked further (decoded states are at most 100 deep), and no
# more than this many differing paths are listed.
_DIFF_DEPTH = 100
_DIFF_PATHS = 1000


def _is_array(x: Any) -> str | None:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return "torch"
    np = sys.modules.get("numpy")
    if np is not None and isinstance(x, np.ndarray):
        return "numpy"
    return None


def _same(a: Any, b: Any) -> bool:
    kind_a, kind_b = _is_array(a), _is_array(b)
    if kind_a or kind_b:
        if kind_a != kind_b or a.dtype != b.dtype or tuple(a.shape) != tuple(b.shape):
            return False
        if kind_a == "torch":
            torch = sys.modules["torch"]
            if torch.equal(a, b):
                return True
            nan = a.isnan()
            # Equal NaN positions, then every other value exactly (infinities included: nan_to_num
            # would map them to the dtype's extremes).
            return bool(torch.equal(nan, b.isnan()) and torch.equal(a[~nan], b[~nan]))
        np = sys.modules["numpy"]
        return bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if type(a) is not type(b):
        return False
    try:
        return bool(a == b)
    except Exception:
        try:
            return pickle.dumps(a) == pickle.dumps(b)
        except Exception:
            return a is b


def _field(path: str, key: Any) -> str:
    if not path and isinstance(key, str) and key.isidentifier():
        return key
    return f"{path}[{key!r}]"


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Return the paths (``best``, ``shadow['w']``, ``[2]``) at which two states differ.

    Each pair of objects is compared once, however many paths reach it (shared objects, cycles), so
    the walk is linear in the states' sizes.
    """
    out: list[str] = []
    _differences(a, b, path, out, set(), 0)
    if len(out) > _DIFF_PATHS:  # the walk stopped there
        out[_DIFF_PATHS:] = [f"... and more (the first {_DIFF_PATHS} are shown)"]
    return out


def _first_visit(a: Any, b: Any, path: str, out: list[str], seen: set[tuple[int, int]], depth: int) -> bool:
    """Whether to compare ``a`` and ``b``: a composite pair is compared once, and not below the depth cap."""
    composite = isinstance(a, Mapping | list | tuple) or (
        not _is_array(a) and isinstance(getattr(a, "__dict__", None), dict)
    )
    if not composite:
        return True
    if (id(a), id(b)) in seen:
        return False  # compared already, under the first path that reached them
    seen.add((id(a), id(b)))
    if depth >= _DIFF_DEPTH:
        if a is not b:
            out.append(f"{path} (deeper than {_DIFF_DEPTH} levels: not compared)")
        return False
    return True


def _differences(a: Any, b: Any, path: str, out: list[str], seen: set[tuple[int, int]], depth: int) -> None:
    if len(out) > _DIFF_PATHS or not _first_visit(a, b, path, out, seen, depth):
        return
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in [*a, *(k for k in b if k not in a)]:
            if key not in a or key not in b:
                out.append(_field(path, key))
            else:
                _differences(a[key], b[key], _field(path, key), out, seen, depth + 1)
        return
    if isinstance(a, list | tuple) and type(a) is type(b) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _differences(x, y, f"{path}[{i}]", out, seen, depth + 1)
        return
    out.extend(_leaf_differences(a, b, path, seen, depth))


def _leaf_differences(a: Any, b: Any, path: str, seen: set[tuple[int, int]], depth: int) -> list[str]:
    if type(a) is type(b) and not _is_array(a) and isinstance(getattr(a, "__dict__", None), dict):
        if _same(a, b):
            return []
        attrs_a, attrs_b = vars(a), vars(b)
        out: list[str] = []
        for name in [*attrs_a, *(n for n in attrs_b if n not in attrs_a)]:
            where = f"{path}.{name}" if path else name
            if name not in attrs_a or name not in attrs_b:
                out.append(where)
            else:
                _differences(attrs_a[name], attrs_b[name], where, out, seen, depth + 1)
        return out or [path or "(the whole state)"]
    if _same(a, b):
        return []
    where = path or "(the whole state)"
    if not _is_array(a) and not _is_array(b):
        ra, rb = repr(a), repr(b)
        if len(ra) + len(rb) <= _SHORT_VALUES:
            return [f"{path} ({ra} -> {rb})" if path else f"{ra} -> {rb}"]
    return [where]
