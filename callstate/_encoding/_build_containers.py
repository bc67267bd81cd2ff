"""The data codec's builders of tuples, sets, frozensets, deques and the dict family."""

from __future__ import annotations

import collections
import sys
from collections.abc import Callable, Iterable
from typing import Any

from ._allowance import dict_bytes, list_bytes, set_bytes
from ._reader import SLOT, Reader
from ._tags import (
    COUNTER,
    DEFAULTDICT,
    DEQUE,
    DICT,
    FACTORIES,
    FROZENSET,
    I64,
    ORDERED_DICT,
    SET,
    TUPLE,
    DecodeError,
)

# Bound here, not imported by name: see callstate._encoding._reader.
_I64 = I64


def _extend(value: set[Any], elements: list[Any]) -> set[Any]:
    value.update(elements)
    return value


def _update(value: dict[Any, Any], pairs: Iterable[tuple[Any, Any]]) -> dict[Any, Any]:
    if type(value) is collections.OrderedDict:
        value.update(pairs)  # its own links must follow
    else:
        dict.update(value, pairs)  # not Counter.update, which adds counts
    return value


class ContainerBuilder(Reader):
    """Builds tuples, sets, frozensets, deques and the dict family; keys checked before they are hashed."""

    def _tuple(self, depth: int) -> tuple[Any, ...]:
        slot = self._slot()
        saved = self._enter(depth)
        n = self._count()
        temporary = list_bytes(n)
        self._charge(SLOT + 56 + 8 * n + temporary)
        value = tuple(self._values(n, depth))
        self._refund(temporary)
        self._leave(slot, depth, saved)
        self.memo[slot] = value
        hashing = comparing = 1
        for x in value:
            h, c = self._cost(x)
            hashing += h
            comparing += c
        if hashing != 1 + n or comparing != 1 + n:  # else _cost finds the same without an entry
            self._record(value, hashing, comparing)
        return value


    def _set(self, depth: int) -> set[Any]:
        value: set[Any] = set()
        slot = self._slot(value)
        saved = self._enter(depth)
        n = self._count()
        temporary = list_bytes(n)
        self._charge(SLOT + set_bytes(n) + temporary)  # before the elements: refused before built
        elements = self._values(n, depth)
        self._build(lambda: _extend(value, elements), elements, "set element")
        self._refund(temporary)
        self._leave(slot, depth, saved)
        return value

    def _frozenset(self, depth: int) -> frozenset[Any]:
        slot = self._slot()
        saved = self._enter(depth)
        n = self._count()
        temporary = list_bytes(n)
        self._charge(SLOT + set_bytes(n) + temporary)  # before the elements: refused before built
        elements = self._values(n, depth)
        value: frozenset[Any] = self._build(lambda: frozenset(elements), elements, "set element")
        self._leave(slot, depth, saved)
        self.memo[slot] = value
        # Its hash is cached once built; comparing it with an equal one looks up every element.
        self._record(value, 1, 1 + sum(h + c for h, c in map(self._cost, elements)))
        self._refund(temporary)
        return value

    def _deque(self, depth: int) -> collections.deque[Any]:
        maxlen = _I64.unpack_from(self.data, self._take(8))[0]
        n = self._count()
        if maxlen < -1 or (maxlen >= 0 and n > maxlen):
            raise DecodeError(f"a deque of {n} items with maxlen {maxlen}")
        self._charge(SLOT + 824 + 9 * n)  # the object with its first block, a block per 64 items
        value: collections.deque[Any] = collections.deque(maxlen=None if maxlen == -1 else maxlen)
        slot = self._slot(value)
        saved = self._enter(depth)
        value.extend(self._values(n, depth))
        self._leave(slot, depth, saved)
        return value

    def _fill(self, value: dict[Any, Any], depth: int) -> Any:
        slot = self._slot(value)
        saved = self._enter(depth)
        n = self._count(2)
        table = dict_bytes(n)
        if type(value) is collections.OrderedDict:
            table += table // 2 + 32 * n  # its node per key and its array of nodes by table slot
        # The keys and values read (one list), the keys (another), given back once built.
        temporary = list_bytes(2 * n) + list_bytes(n)
        header = (sys.getsizeof(value) + 15) & ~15  # in pymalloc's size class
        self._charge(SLOT + header + table + temporary)  # refused before built
        flat = self._values(2 * n, depth)
        keys = flat[0::2]
        self._build(lambda: _update(value, zip(keys, flat[1::2], strict=True)), keys, "dict key")
        self._refund(temporary)
        self._leave(slot, depth, saved)
        return value

    def _dict(self, depth: int) -> dict[Any, Any]:
        value: dict[Any, Any] = self._fill({}, depth)
        return value

    def _ordered_dict(self, depth: int) -> collections.OrderedDict[Any, Any]:
        value: collections.OrderedDict[Any, Any] = self._fill(collections.OrderedDict(), depth)
        return value

    def _counter(self, depth: int) -> collections.Counter[Any]:
        value: collections.Counter[Any] = self._fill(collections.Counter(), depth)
        return value

    def _defaultdict(self, depth: int) -> collections.defaultdict[Any, Any]:
        code = self.data[self._take(1)]
        if code >= len(FACTORIES):
            raise DecodeError(f"unknown defaultdict factory {code}")
        value: collections.defaultdict[Any, Any] = collections.defaultdict(FACTORIES[code])
        filled: collections.defaultdict[Any, Any] = self._fill(value, depth)
        return filled


# The tags built here, each by its builder (callstate._encoding._decoder dispatches on them).
CONTAINER_READERS: dict[int, Callable[[ContainerBuilder, int], Any]] = {
    TUPLE: ContainerBuilder._tuple, SET: ContainerBuilder._set, FROZENSET: ContainerBuilder._frozenset,
    DICT: ContainerBuilder._dict, ORDERED_DICT: ContainerBuilder._ordered_dict,
    COUNTER: ContainerBuilder._counter,
    DEFAULTDICT: ContainerBuilder._defaultdict, DEQUE: ContainerBuilder._deque,
}
