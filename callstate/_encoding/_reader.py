"""The data codec's reading core: bytes read checked, the read's allowance charged, memo and nesting kept.

``Reader`` holds what every builder of a tagged value uses: reads checked against the bytes left,
charges against the allowance of the read, the memo and nesting heights the encoder mirrors, and the
estimated cost of hashing what was built. The builders, one module per family of tags, subclass it;
``callstate._encoding._decoder`` puts them together.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ._allowance import Allowance, Oversized, list_bytes, set_bytes
from ._tags import F64, FLOAT, MAX_DEPTH, REF, SMALL_INT, STR, U32, U64, DecodeError

if TYPE_CHECKING:
    from ._parts import Buffer

# Layouts bound to names of this module, not imported ones: CPython 3.11 compiles a method call on an
# imported name (U32.unpack_from) as an attribute load that makes a bound method each time, which made
# decoding 5% slower (benchmarks/codec.py).
_U32, _U64, _F64 = U32, U64, F64

# Decoding draws from the Allowance of the read (callstate._allowance): ALLOC_FACTOR * N + ALLOC_SLACK
# bytes of objects and HASH_FACTOR * N + HASH_SLACK units of hashing for all the N bytes read, every
# entry of a file together. Each object is charged before it is built, at its size as
# sys.getsizeof gives it (tables at their peak while they grow), and so is the decoder's own
# bookkeeping: a memo slot, a nesting height, an entry of the hash-cost table.
# Each key's hashing cost is estimated from what it is made of: a tuple does not cache its hash and
# compares element by element, so one built of tuples shared many times costs its whole expansion;
# comparing equal frozensets looks up every element in the other; big ints, Decimals and Fractions
# cost by their size (int == Decimal converts).
# A memo slot: a pointer in the memo list and a byte of nesting height, with the lists' growth.
SLOT = 20
# An entry of the hash-cost table: a dict entry at its peak, a 3-tuple and two ints.
_RECORD = 224
# The decoder itself: its lists and dicts, and its share of a payload's part structures.
_DECODER = 1024
_COLLISIONS_ALLOWED = 16
# What a memo slot holds while its object is being built: a reference to it then is refused (the
# compiled decoder, callstate._encoding._cdecode, tests for the same object).
PENDING = _PENDING = object()


def _str_bytes(n: int) -> int:
    """Return what decoding ``n`` bytes of UTF-8 into a str costs if they are ASCII: str and slice.

    sys.getsizeof gives 49 + n and 33 + n; pymalloc rounds each up to a multiple of 16.
    """
    return 112 + 2 * n


# What a str of n bytes of UTF-8 may cost more when they are not all ASCII: 2 or 4 bytes a
# character (of at most n characters) and a larger header, sys.getsizeof's 76 + 4n at most.
_WIDE_STR = 24


class Reader:
    """Reads one payload's bytes, checked, and keeps the books of what decoding it builds."""

    def __init__(
        self,
        stream: bytes,
        buffers: Sequence[Buffer],
        *,
        bound_memory: bool = True,
        allowance: Allowance | None = None,
    ) -> None:
        """Decode ``stream``, drawing from ``allowance`` (by default, one for this payload alone)."""
        if allowance is None:
            size = len(stream) + sum(len(b) for b in buffers)
            allowance = Allowance(size, bound_memory=bound_memory)
        self.allowance = allowance
        self.data = stream
        self.pos = 0
        self.end = len(stream)
        self.buffers = buffers
        self.used = [False] * len(buffers)
        self.memo: list[Any] = []
        self.heights = bytearray()  # at most MAX_DEPTH each: a byte, not a pointer, per memo slot
        self.deepest = 0
        # id of each hashable composite built (tuple, frozenset, Decimal, Fraction, registered object,
        # torch.Size) -> (the object, kept alive so its id stays its own, hash cost, compare cost)
        self.costs: dict[int, tuple[Any, int, int]] = {}

    def _charge(self, nbytes: int) -> None:
        """Count ``nbytes`` of objects about to be built against the read's allowance."""
        allowance = self.allowance
        allowance.memory -= nbytes
        if allowance.memory < 0:
            self._oversized()

    def _refund(self, nbytes: int) -> None:
        """Give back what ``_charge`` counted for temporaries that are gone."""
        self.allowance.memory += nbytes

    def _oversized(self) -> None:
        raise Oversized(f"decoding would build more than {self.allowance.describe()} in objects")

    def decode(self) -> Any:
        """Return the value; raise DecodeError, UnknownType or Oversized."""
        self._charge(_DECODER + 16 * len(self.buffers))
        value = self._read(0)
        if self.pos != self.end:
            raise DecodeError(f"{self.end - self.pos} bytes after the value")
        if not all(self.used):
            raise DecodeError("an out-of-band buffer belongs to no value")
        # The decoder's bookkeeping goes with it; what it built stays charged.
        self._refund(_DECODER + 16 * len(self.buffers) + SLOT * len(self.memo) + _RECORD * len(self.costs))
        return value

    # reading

    def _take(self, n: int) -> int:
        start = self.pos
        if n > self.end - start:
            raise DecodeError(f"a value needs {n} bytes at offset {start}, and {self.end - start} are left")
        self.pos = start + n
        return start

    def _unpack(self, fmt: struct.Struct) -> Any:
        return fmt.unpack_from(self.data, self._take(fmt.size))

    def _u32(self) -> int:
        value: int = _U32.unpack_from(self.data, self._take(4))[0]
        return value

    def _count(self, per_item: int = 1) -> int:
        n = self._u32()
        if n * per_item > self.end - self.pos:
            raise DecodeError(f"a count of {n} at offset {self.pos - 4} is more than the bytes left")
        return n

    def _read(self, depth: int) -> Any:
        """Read the next value, ``depth`` levels down: the Decoder builds it by its tag."""
        raise NotImplementedError

    # memo and nesting, as the encoder does them

    def _slot(self, value: Any = _PENDING) -> int:
        self.memo.append(value)
        self.heights.append(0)
        return len(self.memo) - 1

    def _enter(self, depth: int) -> int:
        if depth >= MAX_DEPTH:
            raise DecodeError(f"nesting deeper than {MAX_DEPTH} levels")
        saved = self.deepest
        self.deepest = depth + 1
        return saved

    def _leave(self, slot: int, depth: int, saved: int) -> None:
        self.heights[slot] = self.deepest - depth
        self.deepest = max(saved, self.deepest)

    def _ref(self, depth: int) -> Any:
        index = self._u32()
        if index >= len(self.memo):
            raise DecodeError(f"a reference to object {index}, which does not exist yet")
        value = self.memo[index]
        if value is _PENDING:
            raise DecodeError(f"a reference to object {index} from inside itself (it is immutable)")
        reach = depth + self.heights[index]
        if reach > MAX_DEPTH:
            raise DecodeError(f"nesting deeper than {MAX_DEPTH} levels, through a reference")
        if reach > self.deepest:
            self.deepest = reach
        return value

    # str, bytes and names, as fixed layouts hold them

    def _text(self) -> str:
        n = self._u32()
        start = self._take(n)
        self._charge(_str_bytes(n))
        raw = self.data[start : start + n]
        if not raw.isascii():
            self._charge(_WIDE_STR + 3 * n)
        try:
            return raw.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError as exc:
            raise DecodeError(f"a str that is not UTF-8 ({exc})") from None

    def _raw(self) -> bytes:
        n = _U64.unpack_from(self.data, self._take(8))[0]
        start = self._take(n)
        self._charge(40 + n)
        return self.data[start : start + n]

    def _name(self) -> str:
        n = self.data[self._take(1)]
        start = self._take(n)
        try:
            return self.data[start : start + n].decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError("a type name that is not UTF-8") from None

    # values in a row

    def _values(self, n: int, depth: int, out: list[Any] | None = None) -> list[Any]:  # noqa: C901 - inlined readers
        """Read ``n`` values into ``out`` (a new list by default); floats, small ints and short
        strs inline, the rest through _read.

        The inlined cases make decoding an EarlyStopping-sized state about 1.3x faster
        (benchmarks/codec.py); each checks its bounds as the reader it stands for does.
        """
        data, end, read, child, allowance = self.data, self.end, self._read, depth + 1, self.allowance
        if out is None:
            out = []
        append = out.append
        for _ in range(n):
            pos = self.pos
            tag = data[pos] if pos < end else -1
            if tag == STR:
                start = pos + 5
                if start > end:
                    raise DecodeError(f"a str needs its length at offset {pos + 1}")
                stop = start + _U32.unpack_from(data, pos + 1)[0]
                if stop > end:
                    raise DecodeError(f"a str of {stop - start} bytes at offset {start}, past the end")
                self.pos = stop
                allowance.memory -= 112 + 2 * (stop - start)  # _str_bytes, inlined
                if allowance.memory < 0:
                    self._oversized()
                raw = data[start:stop]
                if not raw.isascii():
                    self._charge(_WIDE_STR + 3 * (stop - start))
                try:
                    append(raw.decode("utf-8", "surrogatepass"))
                except UnicodeDecodeError as exc:
                    raise DecodeError(f"a str that is not UTF-8 ({exc})") from None
            elif tag == FLOAT and pos + 9 <= end:
                self.pos = pos + 9
                allowance.memory -= 32  # 24 bytes, in pymalloc's size class of 32
                if allowance.memory < 0:
                    self._oversized()
                append(_F64.unpack_from(data, pos + 1)[0])
            elif tag == SMALL_INT and pos + 2 <= end:
                self.pos = pos + 2
                append(data[pos + 1])
            else:
                append(read(child))
        return out

    # what hashing and comparing the keys built will cost

    def _record(self, value: Any, hash_cost: int, compare_cost: int) -> None:
        if hash_cost == compare_cost == 1:
            return  # what _cost gives for anything it has no entry for
        self._charge(_RECORD)
        self.costs[id(value)] = (value, hash_cost, compare_cost)

    def _cost(self, value: Any) -> tuple[int, int]:
        """Return the estimated (hash, compare) cost of ``value``, in units of one element hash."""
        entry = self.costs.get(id(value))
        if entry is not None and entry[0] is value:
            return entry[1], entry[2]
        kind = type(value)
        if kind is int:
            size = value.bit_length() // 8
            return (1, 1) if size <= 8 else (1 + size // 64, 1 + size * size // 100)
        if kind is str or kind is bytes:
            return 1 + len(value) // 256, 1 + len(value) // 256
        if kind is tuple:  # one of scalars, which _tuple records no entry for
            return 1 + len(value), 1 + len(value)
        return 1, 1

    def _hashable(self, keys: list[Any]) -> None:
        """Refuse keys whose hashing and comparing would cost more than the payload allows.

        Keys crafted to share a hash make building a dict or set quadratic, and each pair of them is
        compared when inserted; both are charged before anything is hashed or built.
        """
        if all(type(k) is str for k in keys):
            self._spend_hashing(len(keys))  # str hashes are salted per process: no crafted collisions
            return
        cost = self._cost
        self._spend_hashing(2 * sum(cost(k)[0] for k in keys))  # hashed here, then by the set or dict
        n = len(keys)
        # The hashes (a list of ints) and the set of them, given back once the keys are checked.
        temporary = list_bytes(n) + 32 * n + set_bytes(n)
        self._charge(temporary)
        try:
            hashes = [hash(k) for k in keys]
        except TypeError as exc:
            raise DecodeError(f"a dict key or set element is not hashable ({exc})") from None
        shared = n - len(set(hashes))
        if shared > _COLLISIONS_ALLOWED:
            raise DecodeError(f"{shared} keys share a hash with another (crafted to be slow)")
        if shared:
            hashes.sort()  # at most 16 shared: the groups are found by a pass over the sorted hashes
            groups = {h for h, following in itertools.pairwise(hashes) if h == following}
            for h in groups:
                members = [cost(k)[1] for k in keys if hash(k) == h]
                # Inserting them compares each with those before it, each comparison at most this dear.
                self._spend_hashing(len(members) * (len(members) - 1) // 2 * max(members))
        del hashes
        self._refund(temporary)

    def _spend_hashing(self, cost: int) -> None:
        allowance = self.allowance
        allowance.hashing -= cost
        if allowance.hashing < 0:
            raise DecodeError(
                "hashing its dict keys and set elements would take more steps than the size of what "
                f"was read ({allowance.size:,} bytes) allows (tuples shared many times over, crafted "
                "to be slow)"
            )

    def _build(self, build: Callable[[], Any], keys: list[Any], what: str) -> Any:
        """Return ``build()``, which puts ``keys`` into a set or mapping, after checking them."""
        self._hashable(keys)
        try:
            value = build()
        except TypeError as exc:
            raise DecodeError(f"a {what} is not hashable ({exc})") from None
        if len(value) != len(keys):
            raise DecodeError(f"a {what} is there twice")
        return value


# A reference to a value met before, read from the memo (callstate._encoding._decoder dispatches on it).
MEMO_READERS: dict[int, Callable[[Reader, int], Any]] = {REF: Reader._ref}
