"""One allowance per read: what decoding the untrusted bytes of one file may build and hash, in all.

A reader makes one ``Allowance`` for the bytes it read (a whole file, or one bytes object), sized
by them, and every structure built from those bytes draws from it: the index and the views of the
entries' parts, the private copies of each payload, and every object the data codec builds for
every entry, with the decoder's own bookkeeping (its memo, nesting heights and hash-cost table).
Charges are made before what they pay for is built, so a read that would exceed the allowance is
refused having built at most the allowance.

Decoding an entry a second time (``EncodedState.decode()`` called again) draws its share anew: the
caller asked for a second copy. What a decode that failed had drawn is given back (what it built is
garbage by then); the hashing it did is not (that time is spent).
"""

from __future__ import annotations

import bisect
import math

# Unless the file is trusted, reading N bytes may build Python objects of about
# ALLOC_FACTOR * N + ALLOC_SLACK bytes in all, counting container overheads, scalars and the
# decoder's bookkeeping. Plain states need a few times N; crafted ones (a list of empty deques)
# would need 60x.
ALLOC_FACTOR = 16
ALLOC_SLACK = 64 << 20
# Hashing dict keys and set elements, and comparing the keys whose hashes are equal, may cost
# HASH_FACTOR * N + HASH_SLACK units (about one element hash each) for the whole read.
HASH_FACTOR = 4
HASH_SLACK = 1 << 20


class Oversized(ValueError):
    """Reading would build more than its allowance (see ALLOC_FACTOR); the message says how much."""


class Allowance:
    """What the objects built from ``size`` bytes read may cost, in memory and in hashing work.

    Attributes:
        size: the number of bytes read, which sized the allowance.
        memory: bytes of objects that may still be built (``math.inf`` when not bounded: trusted).
        hashing: units of hashing work that may still be done (always bounded).
    """

    __slots__ = ("_drawn", "hashing", "memory", "size")

    def __init__(self, size: int, *, bound_memory: bool = True) -> None:
        self.size = size
        self.memory: float = ALLOC_FACTOR * size + ALLOC_SLACK if bound_memory else math.inf
        self.hashing = HASH_FACTOR * size + HASH_SLACK
        self._drawn: dict[str, tuple[float, int]] = {}

    def describe(self) -> str:
        """Return the allowance as a message states it."""
        return f"{ALLOC_FACTOR}x the {self.size:,} bytes read (+{ALLOC_SLACK >> 20} MiB)"

    def charge(self, nbytes: int) -> None:
        """Count ``nbytes`` of objects about to be built; raise Oversized if they exceed the allowance."""
        self.memory -= nbytes
        if self.memory < 0:
            raise Oversized(f"reading would build more than {self.describe()} in objects")

    def drawing(self, key: str) -> _Drawing:
        """Draw what is built inside the block for the entry ``key`` (see the module docstring)."""
        return _Drawing(self, key)

    def give_back(self, key: str) -> tuple[float, int]:
        """Give back what the entry ``key`` drew before (decoded again: see the module docstring);
        return what is left then."""
        memory, hashing = self._drawn.pop(key, (0, 0))
        self.memory += memory
        self.hashing += hashing
        return self.memory, self.hashing

    def record(self, key: str, memory: float, hashing: int) -> None:
        """Note what decoding the entry ``key`` drew, to give back if it is decoded again."""
        self._drawn[key] = (memory, hashing)


class _Drawing:
    """The block of ``Allowance.drawing``: a class, not a generator, as it runs once per entry read
    (it takes half the time of a generator-based one: timeit, median of 7 rounds, 4.2 to 4.8 us a
    block against 8.0 to 9.5 us on the loaded 2-core VM)."""

    __slots__ = ("allowance", "hashing", "key", "memory")

    def __init__(self, allowance: Allowance, key: str) -> None:
        self.allowance, self.key = allowance, key

    def __enter__(self) -> None:
        self.memory, self.hashing = self.allowance.give_back(self.key)

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        allowance = self.allowance
        if kind is not None:
            allowance.memory = self.memory
            return
        allowance.record(self.key, self.memory - allowance.memory, self.hashing - allowance.hashing)


# -- what CPython builds ---------------------------------------------------------------------------
# The sizes below are CPython 3.11's (sys.getsizeof with its GC header, rounded up to pymalloc's
# size classes of 16 bytes, and the tables as setobject.c and dictobject.c grow them one insertion
# at a time); the tests measure peak memory against them. A table is charged at its peak: while it
# grows, the old table and the new one are both alive.


def _set_steps() -> tuple[list[int], list[int]]:
    """Return (n, bytes): from n elements on, a set's tables take bytes at their peak."""
    counts, sizes = [0], [0]
    size = 8  # the small table inside the set object
    while size < 1 << 40:
        n = -(-3 * (size - 1) // 5)  # the insertion after which fill * 5 >= mask * 3
        new = 8
        while new <= (n * 4 if n <= 50_000 else n * 2):
            new <<= 1
        counts.append(n)
        sizes.append(16 * new + (16 * size if size > 8 else 0))
        size = new
    return counts, sizes


def _dict_steps() -> tuple[list[int], list[int]]:
    """Return (n, bytes): from n items on, a dict's keys objects take bytes at their peak."""

    def keys(size: int) -> int:
        index = 1 if size <= 128 else 2 if size <= 1 << 15 else 4 if size <= 1 << 31 else 8
        return 32 + size * index + (2 * size // 3) * 24

    counts, sizes = [0], [keys(8)]
    size = 8
    while size < 1 << 40:
        counts.append(2 * size // 3 + 1)  # the insertion that finds no usable entry left
        sizes.append(keys(2 * size) + keys(size))
        size *= 2
    return counts, sizes


_SET_COUNTS, _SET_BYTES = _set_steps()
_DICT_COUNTS, _DICT_BYTES = _dict_steps()


def list_bytes(n: int) -> int:
    """Return the peak bytes of a list grown to ``n`` items by appends (over-allocation, a move)."""
    return 104 + 17 * n


def set_bytes(n: int) -> int:
    """Return the peak bytes of a set or frozenset of ``n`` elements added one at a time."""
    return 224 + _SET_BYTES[bisect.bisect_right(_SET_COUNTS, n) - 1]


def dict_bytes(n: int) -> int:
    """Return the peak bytes of a dict of ``n`` items inserted one at a time (without its header)."""
    return _DICT_BYTES[bisect.bisect_right(_DICT_COUNTS, n) - 1]
