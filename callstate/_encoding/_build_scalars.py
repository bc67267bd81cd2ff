"""The data codec's builders of scalars, str and bytes, and lists (packed lists of floats and ints too)."""

from __future__ import annotations

from array import array
from collections.abc import Callable
from typing import Any

from ._allowance import list_bytes
from ._reader import SLOT, Reader
from ._tags import (
    BIG_INT,
    BYTEARRAY,
    BYTES,
    C128,
    COMPLEX,
    F64,
    FALSE,
    FLOAT,
    FLOATS,
    I64,
    INT64,
    INT64S,
    LIST,
    LITTLE,
    LONG_BYTES,
    LONG_STR,
    MAX_DEPTH,
    MAX_INT_BYTES,
    NONE,
    SMALL_INT,
    STR,
    TRUE,
    DecodeError,
)

# Bound here, not imported by name: see callstate._encoding._reader.
_I64, _F64 = I64, F64


class ScalarBuilder(Reader):
    """Builds None, bools, numbers, str, bytes and lists."""

    def _none(self, depth: int) -> None:
        return None

    def _true(self, depth: int) -> bool:
        return True

    def _false(self, depth: int) -> bool:
        return False

    def _small_int(self, depth: int) -> int:
        return self.data[self._take(1)]

    def _int64(self, depth: int) -> int:
        self._charge(32)
        value: int = _I64.unpack_from(self.data, self._take(8))[0]
        return value

    def _big_int(self, depth: int) -> int:
        n = self._u32()
        if n > MAX_INT_BYTES:
            raise DecodeError(f"an int of {n} bytes (at most {MAX_INT_BYTES})")
        self._charge(72 + 3 * n)  # the int (30 bits per 4 bytes) and the slice it is read from
        start = self._take(n)
        return int.from_bytes(self.data[start : start + n], "little", signed=True)

    def _float(self, depth: int) -> float:
        self._charge(32)
        value: float = _F64.unpack_from(self.data, self._take(8))[0]
        return value

    def _complex(self, depth: int) -> complex:
        self._charge(32)
        real, imag = self._unpack(C128)
        return complex(real, imag)

    def _str(self, depth: int) -> str:
        return self._text()

    def _long_str(self, depth: int) -> str:
        self._charge(SLOT)
        slot = self._slot()
        value = self.memo[slot] = self._text()
        return value

    def _bytes(self, depth: int) -> bytes:
        return self._raw()

    def _long_bytes(self, depth: int) -> bytes:
        self._charge(SLOT)
        slot = self._slot()
        value = self.memo[slot] = self._raw()
        return value

    def _bytearray(self, depth: int) -> bytearray:
        value = bytearray()
        self._slot(value)
        raw = self._raw()
        self._charge(SLOT + 64 + len(raw))
        value += raw
        return value

    # lists

    def _list(self, depth: int) -> list[Any]:
        value: list[Any] = []
        slot = self._slot(value)
        saved = self._enter(depth)
        n = self._count()
        self._charge(SLOT + list_bytes(n))
        self._values(n, depth, value)  # into the list itself: no second pointer array
        self._leave(slot, depth, saved)
        return value

    def _packed(self, code: str, depth: int) -> list[Any]:
        n = self._count(8)
        # The list, the array it is made from, and a float or int object per item.
        self._charge(SLOT + 160 + (40 if code == "d" else 48) * n)
        start = self._take(8 * n)
        values = array(code)
        values.frombytes(self.data[start : start + 8 * n])
        if not LITTLE:
            values.byteswap()
        result = values.tolist()
        slot = self._slot(result)
        if depth >= MAX_DEPTH:
            raise DecodeError(f"nesting deeper than {MAX_DEPTH} levels")
        self.heights[slot] = 1
        self.deepest = max(self.deepest, depth + 1)
        return result

    def _floats(self, depth: int) -> list[float]:
        return self._packed("d", depth)

    def _ints(self, depth: int) -> list[int]:
        return self._packed("q", depth)


# The tags built here, each by its builder (callstate._encoding._decoder dispatches on them).
SCALAR_READERS: dict[int, Callable[[ScalarBuilder, int], Any]] = {
    NONE: ScalarBuilder._none, TRUE: ScalarBuilder._true, FALSE: ScalarBuilder._false,
    SMALL_INT: ScalarBuilder._small_int, INT64: ScalarBuilder._int64, BIG_INT: ScalarBuilder._big_int,
    FLOAT: ScalarBuilder._float, COMPLEX: ScalarBuilder._complex,
    STR: ScalarBuilder._str, LONG_STR: ScalarBuilder._long_str,
    BYTES: ScalarBuilder._bytes, LONG_BYTES: ScalarBuilder._long_bytes, BYTEARRAY: ScalarBuilder._bytearray,
    LIST: ScalarBuilder._list, FLOATS: ScalarBuilder._floats, INT64S: ScalarBuilder._ints,
}
