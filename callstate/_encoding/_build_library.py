"""The data codec's builders of standard library values and of registered types.

Datetimes, Decimal, Fraction, range, slice, UUID and paths, each from its fixed layout, and an
instance of a type given to ``callstate.register_type``, from its name and the data ``to_data`` made.
"""

from __future__ import annotations

import datetime
import decimal
import fractions
import pathlib
import uuid
from collections.abc import Callable
from typing import Any

from .._support import show
from . import _types
from ._allowance import list_bytes
from ._reader import SLOT, Reader
from ._tags import (
    BIG_INT,
    DATE,
    DATE_FIELDS,
    DATETIME,
    DATETIME_FIELDS,
    DECIMAL,
    FRACTION,
    INT64,
    MAX_DECIMAL_CHARS,
    MAX_FRACTION_BYTES,
    NONE,
    PATH,
    PATHS,
    RANGE,
    REGISTERED,
    SLICE,
    SMALL_INT,
    STR,
    TIME,
    TIME_FIELDS,
    TIMEDELTA,
    TIMEDELTA_FIELDS,
    TIMEZONE,
    UUID,
    DecodeError,
    UnknownType,
)

_INT_TAGS = frozenset((SMALL_INT, INT64, BIG_INT))


class LibraryBuilder(Reader):
    """Builds datetimes, Decimals, Fractions, ranges, slices, UUIDs, paths and registered types."""

    def _tzinfo(self, depth: int) -> datetime.timezone | None:
        tag = self.data[self._take(1)]
        if tag == NONE:
            return None
        if tag == TIMEZONE:
            return self._timezone(depth)
        raise DecodeError(f"a tzinfo tagged {tag:#04x}")

    def _datetime(self, depth: int) -> datetime.datetime:
        self._charge(64)
        year, month, day, hour, minute, second, micro, fold = self._unpack(DATETIME_FIELDS)
        tz = self._tzinfo(depth)
        return datetime.datetime(year, month, day, hour, minute, second, micro, tz, fold=fold)

    def _date(self, depth: int) -> datetime.date:
        self._charge(32)
        return datetime.date(*self._unpack(DATE_FIELDS))

    def _time(self, depth: int) -> datetime.time:
        self._charge(64)
        hour, minute, second, micro, fold = self._unpack(TIME_FIELDS)
        return datetime.time(hour, minute, second, micro, self._tzinfo(depth), fold=fold)

    def _timedelta(self, depth: int) -> datetime.timedelta:
        self._charge(40)
        days, seconds, micro = self._unpack(TIMEDELTA_FIELDS)
        return datetime.timedelta(days=days, seconds=seconds, microseconds=micro)

    def _timezone(self, depth: int) -> datetime.timezone:
        self._charge(64)
        if self.data[self._take(1)] != TIMEDELTA:
            raise DecodeError("a timezone without its offset")
        offset = self._timedelta(depth)
        tag = self.data[self._take(1)]
        if tag == NONE:
            return datetime.timezone(offset)
        if tag == STR:
            return datetime.timezone(offset, self._text())
        raise DecodeError(f"a timezone name tagged {tag:#04x}")

    def _decimal(self, depth: int) -> decimal.Decimal:
        if self.data[self._take(1)] != STR:
            raise DecodeError("a Decimal without its digits")
        text = self._text()
        if len(text) > MAX_DECIMAL_CHARS:
            raise DecodeError(f"a Decimal of {len(text)} characters (at most {MAX_DECIMAL_CHARS})")
        # 104 bytes and 8 per 19 digits (sys.getsizeof), and a context's temporaries while parsing.
        self._charge(160 + len(text) // 2)
        try:
            value = decimal.Decimal(text)
        except decimal.InvalidOperation:
            raise DecodeError(f"{show(text, 60)} is not a Decimal") from None
        self._record(value, 1 + len(text) // 16, 1 + len(text) * len(text) // 200)
        return value

    def _fraction(self, depth: int) -> fractions.Fraction:
        self._charge(112)
        terms = []
        for _ in range(2):
            if self.pos >= self.end or self.data[self.pos] not in _INT_TAGS:
                raise DecodeError("a Fraction term that is not an int")
            term = self._read(depth)
            if term.bit_length() >= MAX_FRACTION_BYTES * 8:
                raise DecodeError(f"a Fraction term of more than {MAX_FRACTION_BYTES * 8} bits")
            terms.append(term)
        if terms[1] <= 0:
            raise DecodeError("a Fraction whose denominator is not positive")
        value = fractions.Fraction(terms[0], terms[1])
        size = max(term.bit_length() for term in terms) // 8
        self._record(value, 1 + size * size // 700, 1 + size * size // 700)  # its hash is not cached
        return value

    def _terms(self, depth: int, none: bool) -> list[Any]:
        """Read the three ints (or None, if ``none``) of a range or slice."""
        terms = []
        for _ in range(3):
            tag = self.data[self.pos] if self.pos < self.end else -1
            if tag not in _INT_TAGS and not (none and tag == NONE):
                raise DecodeError("a range or slice term that is not an int")
            terms.append(self._read(depth))
        return terms

    def _range(self, depth: int) -> range:
        self._charge(48)
        start, stop, step = self._terms(depth, none=False)
        if step == 0:
            raise DecodeError("a range whose step is 0")
        return range(start, stop, step)

    def _slice(self, depth: int) -> slice:
        self._charge(56)
        return slice(*self._terms(depth, none=True))

    def _uuid(self, depth: int) -> uuid.UUID:
        self._charge(112)
        start = self._take(16)
        return uuid.UUID(bytes=self.data[start : start + 16])

    def _path(self, depth: int) -> pathlib.PurePath:
        kind = self.data[self._take(1)]
        if kind >= len(PATHS):
            raise DecodeError(f"a path of unknown kind {kind}")
        parts = []
        n = self._count(5)
        # The path object, its parts list and str, and the copies of each part pathlib splits off.
        self._charge(512 + list_bytes(n) + 160 * n)
        for _ in range(n):
            if self.data[self._take(1)] != STR:
                raise DecodeError("a path part that is not a str")
            parts.append(self._text())
        path: pathlib.PurePath = PATHS[kind](*parts)
        return path

    # registered types

    def _registered(self, depth: int) -> Any:
        self._charge(SLOT + 64)
        slot = self._slot()
        name = self._name()
        registered = _types.by_name(name)
        if registered is None:
            raise UnknownType(name)
        saved = self._enter(depth)
        data = self._read(depth + 1)
        self._leave(slot, depth, saved)
        value = registered.from_data(data)
        self.memo[slot] = value
        # Its hash and == are the user's, most likely walking the data it was built from.
        items = list(data.items()) if type(data) is dict else data if type(data) in (list, tuple) else [data]
        flat = [x for item in items for x in (item if type(data) is dict else (item,))]
        cost = 1 + sum(h + c for h, c in map(self._cost, flat))
        self._record(value, cost, cost)
        return value


# The tags built here, each by its builder (callstate._encoding._decoder dispatches on them).
LIBRARY_READERS: dict[int, Callable[[LibraryBuilder, int], Any]] = {
    DATETIME: LibraryBuilder._datetime, DATE: LibraryBuilder._date, TIME: LibraryBuilder._time,
    TIMEDELTA: LibraryBuilder._timedelta, TIMEZONE: LibraryBuilder._timezone,
    RANGE: LibraryBuilder._range, SLICE: LibraryBuilder._slice,
    DECIMAL: LibraryBuilder._decimal, FRACTION: LibraryBuilder._fraction, UUID: LibraryBuilder._uuid,
    PATH: LibraryBuilder._path, REGISTERED: LibraryBuilder._registered,
}
