"""Exact comparison of decoded states: types, float bits, array dtypes and layouts, sharing."""

from __future__ import annotations

import math
import struct
from typing import Any

try:
    import numpy as np
except ImportError:  # the core suite runs where numpy is not installed: no array to compare then
    np = None
try:
    import torch
except ImportError:  # the core suite runs where torch is not installed: no tensor to compare then
    torch = None


def _float_bits(x: float) -> bytes:
    return struct.pack("<d", x)


def same(a: Any, b: Any) -> bool:
    """Return whether ``b`` is an exact copy of ``a``: same types all the way down, same bits."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return _float_bits(a) == _float_bits(b) or (math.isnan(a) and math.isnan(b))
    if type(a).__name__ == "Decimal":
        return str(a) == str(b)  # Decimal("NaN") != itself
    if isinstance(a, slice):
        return same(a.start, b.start) and same(a.stop, b.stop) and same(a.step, b.step)
    if isinstance(a, set | frozenset):
        return len(a) == len(b) and all(any(same(x, y) for y in b) for x in a)
    if isinstance(a, complex):
        return same(a.real, b.real) and same(a.imag, b.imag)
    if isinstance(a, dict):
        if len(a) != len(b) or not all(same(x, y) for x, y in zip(a.keys(), b.keys(), strict=True)):
            return False
        if getattr(a, "default_factory", None) is not getattr(b, "default_factory", None):
            return False
        return all(same(x, y) for x, y in zip(a.values(), b.values(), strict=True))
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if type(a).__name__ == "deque":
        return a.maxlen == b.maxlen and same(list(a), list(b))
    if np is not None and isinstance(a, np.ndarray):
        return (
            a.dtype == b.dtype
            and a.dtype.str == b.dtype.str
            and a.shape == b.shape
            and a.flags.f_contiguous == b.flags.f_contiguous
            and a.tobytes() == b.tobytes()
        )
    if np is not None and isinstance(a, np.generic):
        return a.dtype == b.dtype and a.tobytes() == b.tobytes()
    if torch is not None and isinstance(a, torch.Tensor):
        return (
            a.dtype == b.dtype
            and a.shape == b.shape
            and a.requires_grad == b.requires_grad
            and bytes(a.detach().contiguous().reshape(-1).view(torch.uint8).numpy()) == bytes(
                b.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
            )
        )
    return bool(a == b)
