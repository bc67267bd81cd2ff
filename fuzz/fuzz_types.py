"""Registered types shared by the fuzz target and the corpus writer.

Both register the same classes under the same names, so the seed corpus holds ``U`` (registered
type) values that the fuzz target can decode, and ``from_data`` runs on fuzzed data.
"""

from __future__ import annotations

from typing import Any

import callstate


class Point:
    """A registered type rebuilt from a two-item sequence (``from_data`` raises on anything else).

    Compared and hashed by identity: an ``__eq__`` over the fuzzed values could be made as slow
    as the values' own comparison, which is not callstate's to bound.
    """

    __slots__ = ("x", "y")

    def __init__(self, x: Any, y: Any) -> None:
        self.x, self.y = x, y


class Box:
    """A registered type that keeps whatever data it is given (identity ``from_data``)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


POINT_NAME = "fuzz.Point"
BOX_NAME = "fuzz.Box"


def register() -> None:
    """Register Point and Box (idempotent)."""
    callstate.register_type(
        Point, to_data=lambda p: (p.x, p.y), from_data=lambda d: Point(*d), name=POINT_NAME
    )
    callstate.register_type(Box, to_data=lambda b: b.value, from_data=Box, name=BOX_NAME)
