"""The data codec: states as tagged plain data, decoded by building only from a fixed set of types.

A payload is one stream of values, each a one-byte tag and a fixed layout (integers little-endian),
and the out-of-band buffers of large arrays and tensors. The decoder reads a tag, checks every
length against the bytes present, and builds the value from its type: no pickle, no import by name,
no attribute lookup by name. What it can build:

=====  ============================================  ======  =====================================
tag    value                                         memo    layout after the tag
=====  ============================================  ======  =====================================
N T F  None, True, False
j i I  int: 0..255, int64, larger                            u8 | i64 | u32 n, n bytes (signed)
f c    float, complex                                        f64 | f64 f64 (bit exact: -0.0, NaN)
s S    str (S: 1024 chars or more, memoized)         S       u32 n, n bytes of UTF-8
y Y a  bytes (Y: 1024 or more, memoized), bytearray  Y a     u64 n, n bytes
l L K  list; list of >= 8 floats; of >= 8 int64s     yes     u32 n, n values | n f64 | n i64
t e E  tuple, set, frozenset                         yes     u32 n, n values
d o C  dict, OrderedDict, Counter                    yes     u32 n, n (key, value) pairs
D      defaultdict                                   yes     u8 factory, u32 n, n pairs
q      deque                                         yes     i64 maxlen (-1: none), u32 n, n values
r      a value met before                                    u32 memo index
G H    range, slice                                          three int values (slice: or None)
x X h  datetime, date, time                                  fields, then a tzinfo value (x, h)
g z    timedelta, timezone                                   i32 x3 | a timedelta, a name or None
m Q u  Decimal, Fraction, UUID                               str | two ints | 16 bytes
p      PurePosixPath, PureWindowsPath, PosixPath, WindowsPath     u8 kind, u32 n, n str values
A n k  numpy array, scalar, dtype                    A       dtype name, shape, data | bytes | -
P      torch tensor (or Parameter)                   yes     dtype name, shape, flags, data
Z V W  torch.Size, torch.device, torch.dtype                 dims | name | name
U      an instance of a type given to register_type  yes     name, then the value to_data made
=====  ============================================  ======  =====================================

Objects with a memo slot are numbered in the order they start; ``r`` refers back to one, so shared
and repeated objects stay shared, cycles through lists, dicts and sets survive, and a DAG is written
once however many paths lead to it. A reference to a tuple, frozenset or registered object that is
still being built (a cycle through an immutable) is refused on both sides.

Bounds, so that no payload of N bytes costs more than linear time and O(N) memory:
- every count and length is checked against the bytes left before anything is allocated;
- nesting (with the height of referenced objects counted where they are referenced) is at most
  ``MAX_DEPTH`` levels, far from where hashing or comparing nested tuples exhausts the C stack;
- ints carry at most ``MAX_INT_BYTES`` bytes, a Fraction's terms ``MAX_FRACTION_BYTES``;
- a dict or set whose keys are not all str is refused if many keys share one hash (a crafted
  collision makes building it quadratic);
- an array or tensor is built only when dtype x shape matches its bytes exactly, from a fixed set
  of plain dtypes, and each out-of-band buffer is used exactly once.

Why an encoder of our own and not msgpack (C-backed, well kept), measured with
``benchmarks/codec.py`` in ``make bench`` (2-core shared VM, CPython 3.11.7, msgpack 1.2.4), one
state encoded and decoded:

=============================  ===========  ==========  ===========
state                          this codec   pickle      msgpack
=============================  ===========  ==========  ===========
an EarlyStopping's             51.7 us      5.4 us      6.2 us
10,000 floats of loss history  1889 us      827 us      1003 us
50 nested dicts with tuples    2515 us      84 us       382 us
=============================  ===========  ==========  ===========

msgpack is 3x to 8x faster, and would be chosen if it could do the job. It cannot: it has no memo,
so shared objects come back as copies and a 40-level shared DAG (a few hundred bytes here) is 2**40
leaves to it; tuples, sets, int keys, OrderedDict, deque, datetimes and arrays each need a Python
hook (``default``/``ext_hook``) anyway; and it builds dicts and sets in C, where keys crafted to share
a hash cannot be refused before the quadratic insertions, nor depth counted through references.
Keeping sharing, refusing cycles it cannot rebuild and bounding every decode need the memo and the
checks on both sides, which only a codec of our own gives.
"""

from __future__ import annotations

import collections
import datetime
import decimal
import fractions
import itertools
import pathlib
import struct
import sys
import uuid
from array import array
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .._support import show
from . import _arrays, _types
from ._allowance import ALLOC_FACTOR as ALLOC_FACTOR
from ._allowance import ALLOC_SLACK as ALLOC_SLACK
from ._allowance import HASH_FACTOR as HASH_FACTOR
from ._allowance import HASH_SLACK as HASH_SLACK
from ._allowance import Allowance, dict_bytes, list_bytes, set_bytes
from ._allowance import Oversized as Oversized

if TYPE_CHECKING:
    from ._parts import Buffer

MAX_DEPTH = 100
# An int of 4 KiB (32,768 bits) is far beyond what a state holds (Python will not even print one
# without raising its str-digits limit), and keeps comparisons of colliding keys (a Decimal against
# an int converts the int) in milliseconds.
MAX_INT_BYTES = 4096
MAX_FRACTION_BYTES = 4096
# A Decimal of 10,000 digits is far beyond any state, and keeps comparisons with ints and Fractions
# of equal hash in milliseconds.
MAX_DECIMAL_CHARS = 10_000
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
_SLOT = 20
# An entry of the hash-cost table: a dict entry at its peak, a 3-tuple and two ints.
_RECORD = 224
# The decoder itself: its lists and dicts, and its share of a payload's part structures.
_DECODER = 1024
# Buffers at least this large are written out of band: straight from the array's memory.
OUT_OF_BAND_MIN = 64 * 1024
# str and bytes this long are memoized, so one repeated many times is written once.
MEMO_MIN_LEN = 1024
_PACKED_MIN = 8
_COLLISIONS_ALLOWED = 16


class Unsupported(Exception):
    """The data codec cannot write this state; ``what`` says why (usually a type's name)."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


class ToDataError(Exception):
    """A registered type's ``to_data`` raised; the cause is chained."""

    def __init__(self, type_name: str) -> None:
        super().__init__(type_name)
        self.type_name = type_name


class DecodeError(ValueError):
    """The payload is malformed; the message says where."""


class UnknownType(DecodeError):
    """The payload names a registered type that is not registered here."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


_U8 = struct.Struct("<B")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")
_TAG_U8 = struct.Struct("<BB")
_TAG_U32 = struct.Struct("<BI")
_TAG_U64 = struct.Struct("<BQ")
_TAG_I64 = struct.Struct("<Bq")
_TAG_F64 = struct.Struct("<Bd")
_TAG_C128 = struct.Struct("<Bdd")
_C128 = struct.Struct("<dd")
_TAG_DEQUE = struct.Struct("<BqI")
_DATETIME = struct.Struct("<HBBBBBIB")
_DATE = struct.Struct("<HBB")
_TIME = struct.Struct("<BBBIB")
_TIMEDELTA = struct.Struct("<iii")

_FACTORIES: tuple[Any, ...] = (
    None, list, dict, set, frozenset, tuple, int, float, complex, str, bytes, bool,
    collections.OrderedDict, collections.Counter, collections.deque, collections.defaultdict,
)
_FACTORY_CODES = {f: i for i, f in enumerate(_FACTORIES)}
_PATHS: tuple[type, ...] = (
    pathlib.PurePosixPath, pathlib.PureWindowsPath, pathlib.PosixPath, pathlib.WindowsPath,
)
_PATH_CODES = {cls: i for i, cls in enumerate(_PATHS)}
_LITTLE = sys.byteorder == "little"


def _qualname(cls: type) -> str:
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


# -- encoding -------------------------------------------------------------------------------------


class Encoder:
    """Encodes one state at a time into ``(stream, *out-of-band buffers)``; reusable."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.out = bytearray()
        self.buffers: list[memoryview] = []
        self.memo: dict[int, int] = {}
        self.heights: list[int] = []
        self.keep: list[Any] = []  # memoized objects stay alive, so no id() is reused meanwhile
        self.building: set[int] = set()  # tuples, frozensets, registered objects being written
        self.deepest = 0

    def encode(self, state: Any) -> tuple[bytes | memoryview, ...]:
        """Return the parts of ``state``; raise Unsupported for anything the codec cannot write."""
        try:
            self._write(state, 0)
            return (bytes(self.out), *self.buffers)
        finally:
            self._reset()

    def _write(self, obj: Any, depth: int) -> None:
        writer = _WRITERS.get(type(obj))
        if writer is not None:
            writer(self, obj, depth)
        else:
            self._write_other(obj, depth)

    # memo and nesting, mirrored exactly by the decoder

    def _ref(self, obj: Any, depth: int) -> bool:
        """Write a reference if ``obj`` was met before (return True); else give it a memo slot."""
        index = self.memo.get(id(obj))
        if index is None:
            self.memo[id(obj)] = len(self.heights)
            self.heights.append(0)
            self.keep.append(obj)
            return False
        if id(obj) in self.building:
            raise Unsupported(f"a {_qualname(type(obj))} that contains itself")
        reach = depth + self.heights[index]
        if reach > MAX_DEPTH:
            raise Unsupported(f"nesting deeper than {MAX_DEPTH} levels")
        self.deepest = max(self.deepest, reach)
        self.out += _TAG_U32.pack(ord("r"), index)
        return True

    def _enter(self, depth: int) -> int:
        if depth >= MAX_DEPTH:
            raise Unsupported(f"nesting deeper than {MAX_DEPTH} levels")
        saved = self.deepest
        self.deepest = depth + 1
        return saved

    def _leave(self, obj: Any, depth: int, saved: int) -> None:
        self.heights[self.memo[id(obj)]] = self.deepest - depth
        self.deepest = max(saved, self.deepest)

    # scalars

    def _none(self, obj: None, depth: int) -> None:
        self.out.append(ord("N"))

    def _bool(self, obj: bool, depth: int) -> None:
        self.out.append(ord("T") if obj else ord("F"))

    def _int(self, obj: int, depth: int) -> None:
        if 0 <= obj < 256:
            self.out += _TAG_U8.pack(ord("j"), obj)
        elif -(1 << 63) <= obj < (1 << 63):
            self.out += _TAG_I64.pack(ord("i"), obj)
        else:
            size = (obj.bit_length() + 8) // 8
            if size > MAX_INT_BYTES:
                raise Unsupported(f"an int of more than {MAX_INT_BYTES * 8} bits")
            self.out += _TAG_U32.pack(ord("I"), size)
            self.out += obj.to_bytes(size, "little", signed=True)

    def _float(self, obj: float, depth: int) -> None:
        self.out += _TAG_F64.pack(ord("f"), obj)

    def _complex(self, obj: complex, depth: int) -> None:
        self.out += _TAG_C128.pack(ord("c"), obj.real, obj.imag)

    def _str(self, obj: str, depth: int) -> None:
        if len(obj) >= MEMO_MIN_LEN:
            if self._ref(obj, depth):
                return
            self._text(obj, "S")
        else:
            self._text(obj)

    def _text(self, text: str, tag: str = "s") -> None:
        """Write ``text`` under ``tag``; unmemoized ``"s"``, as fixed layouts (Decimal, paths) expect."""
        data = text.encode("utf-8", "surrogatepass")
        self.out += _TAG_U32.pack(ord(tag), len(data))
        self.out += data

    def _bytes(self, obj: bytes, depth: int) -> None:
        if len(obj) >= MEMO_MIN_LEN:
            if self._ref(obj, depth):
                return
            tag = ord("Y")
        else:
            tag = ord("y")
        self.out += _TAG_U64.pack(tag, len(obj))
        self.out += obj

    def _bytearray(self, obj: bytearray, depth: int) -> None:
        if self._ref(obj, depth):
            return
        self.out += _TAG_U64.pack(ord("a"), len(obj))
        self.out += obj

    # containers

    def _items(self, tag: str, obj: Any, depth: int) -> None:
        """Write a sequence container: tag, count, values."""
        saved = self._enter(depth)
        out = self.out
        out += _TAG_U32.pack(ord(tag), len(obj))
        write, child = self._write, depth + 1
        for item in obj:
            # Floats and small ints written here, not through _write (see _pairs).
            kind = type(item)
            if kind is float:
                out += _TAG_F64.pack(102, item)  # "f"
            elif kind is int and 0 <= item < 256:
                out += _TAG_U8.pack(106, item)  # "j"
            else:
                write(item, child)
        self._leave(obj, depth, saved)

    def _list(self, obj: list[Any], depth: int) -> None:
        if self._ref(obj, depth):
            return
        if len(obj) >= _PACKED_MIN:
            if all(type(x) is float for x in obj):
                self._packed("L", "d", obj, depth)
                return
            if all(type(x) is int for x in obj):
                try:
                    self._packed("K", "q", obj, depth)
                    return
                except OverflowError:
                    pass  # an int beyond int64: written one by one
        self._items("l", obj, depth)

    def _packed(self, tag: str, code: str, obj: list[Any], depth: int) -> None:
        values = array(code, obj)
        if not _LITTLE:
            values.byteswap()
        if depth >= MAX_DEPTH:
            raise Unsupported(f"nesting deeper than {MAX_DEPTH} levels")
        self.out += _TAG_U32.pack(ord(tag), len(obj))
        self.out += values.tobytes()
        self.heights[self.memo[id(obj)]] = 1  # one level, like any list
        self.deepest = max(self.deepest, depth + 1)

    def _immutable(self, tag: str, obj: Any, depth: int) -> None:
        if self._ref(obj, depth):
            return
        self.building.add(id(obj))
        self._items(tag, obj, depth)
        self.building.discard(id(obj))

    def _tuple(self, obj: tuple[Any, ...], depth: int) -> None:
        self._immutable("t", obj, depth)

    def _frozenset(self, obj: frozenset[Any], depth: int) -> None:
        self._immutable("E", obj, depth)

    def _set(self, obj: set[Any], depth: int) -> None:
        if not self._ref(obj, depth):
            self._items("e", obj, depth)

    def _deque(self, obj: collections.deque[Any], depth: int) -> None:
        if self._ref(obj, depth):
            return
        saved = self._enter(depth)
        maxlen = -1 if obj.maxlen is None else obj.maxlen
        self.out += _TAG_DEQUE.pack(ord("q"), maxlen, len(obj))
        for item in obj:
            self._write(item, depth + 1)
        self._leave(obj, depth, saved)

    def _pairs(self, tag: str, obj: dict[Any, Any], depth: int, prefix: bytes = b"") -> None:
        if self._ref(obj, depth):
            return
        saved = self._enter(depth)
        out = self.out
        out.append(ord(tag))
        out += prefix
        out += _U32.pack(len(obj))
        write, child = self._write, depth + 1
        for key, value in obj.items():
            # Short str keys, floats and small ints written here, not through _write: encoding an
            # EarlyStopping-sized state is about 1.4x faster (benchmarks/codec.py).
            if type(key) is str and len(key) < MEMO_MIN_LEN:
                data = key.encode("utf-8", "surrogatepass")
                out += _TAG_U32.pack(115, len(data))  # "s"
                out += data
            else:
                write(key, child)
            kind = type(value)
            if kind is float:
                out += _TAG_F64.pack(102, value)  # "f"
            elif kind is int and 0 <= value < 256:
                out += _TAG_U8.pack(106, value)  # "j"
            else:
                write(value, child)
        self._leave(obj, depth, saved)

    def _dict(self, obj: dict[Any, Any], depth: int) -> None:
        self._pairs("d", obj, depth)

    def _ordered_dict(self, obj: collections.OrderedDict[Any, Any], depth: int) -> None:
        self._pairs("o", obj, depth)

    def _counter(self, obj: collections.Counter[Any], depth: int) -> None:
        self._pairs("C", obj, depth)

    def _defaultdict(self, obj: collections.defaultdict[Any, Any], depth: int) -> None:
        code = _FACTORY_CODES.get(obj.default_factory)
        if code is None:
            raise Unsupported(f"a defaultdict whose default_factory is {obj.default_factory!r:.60}")
        self._pairs("D", obj, depth, _U8.pack(code))

    # standard library values

    def _tzinfo(self, tz: Any, depth: int) -> None:
        if tz is None:
            self.out.append(ord("N"))
        elif type(tz) is datetime.timezone:
            self._timezone(tz, depth)
        else:
            raise Unsupported(f"a datetime with tzinfo {_qualname(type(tz))}")

    def _datetime(self, obj: datetime.datetime, depth: int) -> None:
        self.out.append(ord("x"))
        self.out += _DATETIME.pack(
            obj.year, obj.month, obj.day, obj.hour, obj.minute, obj.second, obj.microsecond, obj.fold
        )
        self._tzinfo(obj.tzinfo, depth)

    def _date(self, obj: datetime.date, depth: int) -> None:
        self.out.append(ord("X"))
        self.out += _DATE.pack(obj.year, obj.month, obj.day)

    def _time(self, obj: datetime.time, depth: int) -> None:
        self.out.append(ord("h"))
        self.out += _TIME.pack(obj.hour, obj.minute, obj.second, obj.microsecond, obj.fold)
        self._tzinfo(obj.tzinfo, depth)

    def _timedelta(self, obj: datetime.timedelta, depth: int) -> None:
        self.out.append(ord("g"))
        self.out += _TIMEDELTA.pack(obj.days, obj.seconds, obj.microseconds)

    def _timezone(self, obj: datetime.timezone, depth: int) -> None:
        args = obj.__getinitargs__()  # type: ignore[attr-defined]
        self.out.append(ord("z"))
        self._timedelta(args[0], depth)
        if len(args) > 1:
            self._text(args[1])
        else:
            self.out.append(ord("N"))

    def _decimal(self, obj: decimal.Decimal, depth: int) -> None:
        self.out.append(ord("m"))
        self._text(str(obj))

    def _fraction(self, obj: fractions.Fraction, depth: int) -> None:
        if max(obj.numerator.bit_length(), obj.denominator.bit_length()) >= MAX_FRACTION_BYTES * 8:
            raise Unsupported(f"a Fraction with terms of more than {MAX_FRACTION_BYTES * 8} bits")
        self.out.append(ord("Q"))
        self._int(obj.numerator, depth)
        self._int(obj.denominator, depth)

    def _range(self, obj: range, depth: int) -> None:
        self.out.append(ord("G"))
        for term in (obj.start, obj.stop, obj.step):
            self._int(term, depth)

    def _slice(self, obj: slice, depth: int) -> None:
        terms = (obj.start, obj.stop, obj.step)
        if not all(term is None or type(term) is int for term in terms):
            raise Unsupported("a slice of values other than ints and None")
        self.out.append(ord("H"))
        for term in terms:
            self._write(term, depth)

    def _uuid(self, obj: uuid.UUID, depth: int) -> None:
        self.out.append(ord("u"))
        self.out += obj.bytes

    def _path(self, obj: pathlib.PurePath, depth: int) -> None:
        # By its parts, as pickle does: str() does not round-trip every Windows path.
        self.out += _TAG_U8.pack(ord("p"), _PATH_CODES[type(obj)])
        self.out += _U32.pack(len(obj.parts))
        for part in obj.parts:
            self._text(part)

    # arrays, tensors and registered types: found by type at the first sight

    def _write_other(self, obj: Any, depth: int) -> None:
        cls = type(obj)
        registered = _types.by_class(cls)
        if registered is not None:
            self._registered(registered, obj, depth)
            return
        np = sys.modules.get("numpy")
        if np is not None and self._write_numpy(np, obj, depth):
            return
        torch = sys.modules.get("torch")
        if torch is not None and self._write_torch(torch, obj, depth):
            return
        raise Unsupported(_qualname(cls))

    def _write_numpy(self, np: Any, obj: Any, depth: int) -> bool:
        """Write a numpy array, scalar or dtype; return False for anything else."""
        if type(obj) is np.ndarray:
            self._ndarray(obj, depth)
        elif isinstance(obj, np.generic):
            self._numpy_scalar(obj)
        elif isinstance(obj, np.dtype):
            self._name("k", self._numpy_name(obj))
        else:
            return False
        return True

    def _write_torch(self, torch: Any, obj: Any, depth: int) -> bool:
        """Write a torch tensor, Parameter, Size, device or dtype; return False for anything else."""
        cls = type(obj)
        if cls is torch.Tensor or cls is torch.nn.Parameter:
            self._tensor(obj, depth)
        elif cls is torch.Size:
            self.out += _TAG_U32.pack(ord("Z"), len(obj))
            for dim in obj:
                self.out += _I64.pack(dim)
        elif cls is torch.device:
            self._name("V", str(obj))
        elif cls is torch.dtype:
            self._name("W", self._array_call(_arrays.torch_dtype_name, obj))
        else:
            return False
        return True

    def _name(self, tag: str, name: str) -> None:
        data = name.encode("ascii")
        self.out += _TAG_U8.pack(ord(tag), len(data))
        self.out += data

    @staticmethod
    def _array_call(function: Callable[..., Any], *args: Any) -> Any:
        try:
            return function(*args)
        except _arrays.ArrayError as exc:
            raise Unsupported(str(exc)) from None

    def _numpy_name(self, dtype: Any) -> str:
        name: str = self._array_call(_arrays.numpy_dtype_name, dtype)
        return name

    def _numpy_scalar(self, obj: Any) -> None:
        self._name("n", self._numpy_name(obj.dtype))
        raw = obj.tobytes() if obj.dtype.itemsize else b""  # np.str_("").tobytes() has 4 bytes
        self.out += _U32.pack(len(raw))
        self.out += raw

    def _shape(self, shape: tuple[int, ...]) -> None:
        self.out += _U8.pack(len(shape))
        for dim in shape:
            self.out += _U64.pack(dim)

    def _data(self, raw: memoryview) -> None:
        if raw.nbytes >= OUT_OF_BAND_MIN:
            self.out += _TAG_U32.pack(1, len(self.buffers))
            self.buffers.append(raw)
        else:
            self.out += _TAG_U64.pack(0, raw.nbytes)
            self.out += raw

    def _ndarray(self, obj: Any, depth: int) -> None:
        if self._ref(obj, depth):
            return
        name, shape, fortran, raw = self._array_call(_arrays.numpy_parts, obj)
        self._name("A", name)
        self._shape(shape)
        self.out.append(1 if fortran else 0)
        self._data(raw)

    def _tensor(self, obj: Any, depth: int) -> None:
        if self._ref(obj, depth):
            return
        name, shape, requires_grad, is_parameter, raw = self._array_call(_arrays.torch_parts, obj)
        self._name("P", name)
        self._shape(shape)
        self.out.append(int(requires_grad) | (2 if is_parameter else 0))
        self._data(raw)

    def _registered(self, registered: _types.RegisteredType, obj: Any, depth: int) -> None:
        if self._ref(obj, depth):
            return
        try:
            data = registered.to_data(obj)
        except Exception as exc:
            raise ToDataError(registered.name) from exc
        saved = self._enter(depth)
        self.building.add(id(obj))
        encoded = registered.name.encode("utf-8")
        self.out += _TAG_U8.pack(ord("U"), len(encoded))
        self.out += encoded
        self._write(data, depth + 1)
        self.building.discard(id(obj))
        self._leave(obj, depth, saved)


_WRITERS: dict[type, Callable[[Encoder, Any, int], None]] = {
    type(None): Encoder._none,
    bool: Encoder._bool,
    int: Encoder._int,
    float: Encoder._float,
    complex: Encoder._complex,
    str: Encoder._str,
    bytes: Encoder._bytes,
    bytearray: Encoder._bytearray,
    list: Encoder._list,
    tuple: Encoder._tuple,
    dict: Encoder._dict,
    set: Encoder._set,
    frozenset: Encoder._frozenset,
    collections.OrderedDict: Encoder._ordered_dict,
    collections.Counter: Encoder._counter,
    collections.defaultdict: Encoder._defaultdict,
    collections.deque: Encoder._deque,
    datetime.datetime: Encoder._datetime,
    datetime.date: Encoder._date,
    datetime.time: Encoder._time,
    datetime.timedelta: Encoder._timedelta,
    datetime.timezone: Encoder._timezone,
    decimal.Decimal: Encoder._decimal,
    fractions.Fraction: Encoder._fraction,
    uuid.UUID: Encoder._uuid,
    range: Encoder._range,
    slice: Encoder._slice,
    **{cls: Encoder._path for cls in _PATHS},
}


def is_native(cls: type) -> bool:
    """Return whether the data codec writes instances of ``cls`` itself."""
    if cls in _WRITERS:
        return True
    np = sys.modules.get("numpy")
    if np is not None and (cls is np.ndarray or issubclass(cls, np.generic | np.dtype)):
        return True
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    return cls in (torch.Tensor, torch.nn.Parameter, torch.Size, torch.device, torch.dtype)


# -- decoding -------------------------------------------------------------------------------------

_PENDING = object()
_INT_TAGS = frozenset(b"jiI")


def _extend(value: set[Any], elements: list[Any]) -> set[Any]:
    value.update(elements)
    return value


def _update(value: dict[Any, Any], pairs: Iterable[tuple[Any, Any]]) -> dict[Any, Any]:
    if type(value) is collections.OrderedDict:
        value.update(pairs)  # its own links must follow
    else:
        dict.update(value, pairs)  # not Counter.update, which adds counts
    return value


class Decoder:
    """Decodes one payload; every read is checked against the bytes present."""

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
        self._refund(_DECODER + 16 * len(self.buffers) + _SLOT * len(self.memo) + _RECORD * len(self.costs))
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
        pos = self.pos
        if pos >= self.end:
            raise DecodeError("the payload ends before its value")
        self.pos = pos + 1
        return _READERS[self.data[pos]](self, depth)

    def _bad(self, depth: int) -> Any:
        raise DecodeError(f"unknown tag {self.data[self.pos - 1]:#04x} at offset {self.pos - 1}")

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

    # scalars

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
        real, imag = self._unpack(_C128)
        return complex(real, imag)

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

    def _str(self, depth: int) -> str:
        return self._text()

    def _long_str(self, depth: int) -> str:
        self._charge(_SLOT)
        slot = self._slot()
        value = self.memo[slot] = self._text()
        return value

    def _raw(self) -> bytes:
        n = _U64.unpack_from(self.data, self._take(8))[0]
        start = self._take(n)
        self._charge(40 + n)
        return self.data[start : start + n]

    def _bytes(self, depth: int) -> bytes:
        return self._raw()

    def _long_bytes(self, depth: int) -> bytes:
        self._charge(_SLOT)
        slot = self._slot()
        value = self.memo[slot] = self._raw()
        return value

    def _bytearray(self, depth: int) -> bytearray:
        value = bytearray()
        self._slot(value)
        raw = self._raw()
        self._charge(_SLOT + 64 + len(raw))
        value += raw
        return value

    # containers

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
            if tag == 115:  # "s"
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
            elif tag == 102 and pos + 9 <= end:  # "f"
                self.pos = pos + 9
                allowance.memory -= 32  # 24 bytes, in pymalloc's size class of 32
                if allowance.memory < 0:
                    self._oversized()
                append(_F64.unpack_from(data, pos + 1)[0])
            elif tag == 106 and pos + 2 <= end:  # "j"
                self.pos = pos + 2
                append(data[pos + 1])
            else:
                append(read(child))
        return out

    def _list(self, depth: int) -> list[Any]:
        value: list[Any] = []
        slot = self._slot(value)
        saved = self._enter(depth)
        n = self._count()
        self._charge(_SLOT + list_bytes(n))
        self._values(n, depth, value)  # into the list itself: no second pointer array
        self._leave(slot, depth, saved)
        return value

    def _packed(self, code: str, depth: int) -> list[Any]:
        n = self._count(8)
        # The list, the array it is made from, and a float or int object per item.
        self._charge(_SLOT + 160 + (40 if code == "d" else 48) * n)
        start = self._take(8 * n)
        values = array(code)
        values.frombytes(self.data[start : start + 8 * n])
        if not _LITTLE:
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

    def _tuple(self, depth: int) -> tuple[Any, ...]:
        slot = self._slot()
        saved = self._enter(depth)
        n = self._count()
        temporary = list_bytes(n)
        self._charge(_SLOT + 56 + 8 * n + temporary)
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

    def _set(self, depth: int) -> set[Any]:
        value: set[Any] = set()
        slot = self._slot(value)
        saved = self._enter(depth)
        n = self._count()
        temporary = list_bytes(n)
        self._charge(_SLOT + set_bytes(n) + temporary)  # before the elements: refused before built
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
        self._charge(_SLOT + set_bytes(n) + temporary)  # before the elements: refused before built
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
        self._charge(_SLOT + 824 + 9 * n)  # the object with its first block, a block per 64 items
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
        self._charge(_SLOT + header + table + temporary)  # refused before built
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
        if code >= len(_FACTORIES):
            raise DecodeError(f"unknown defaultdict factory {code}")
        value: collections.defaultdict[Any, Any] = collections.defaultdict(_FACTORIES[code])
        filled: collections.defaultdict[Any, Any] = self._fill(value, depth)
        return filled

    # standard library values

    def _tzinfo(self, depth: int) -> datetime.timezone | None:
        tag = self.data[self._take(1)]
        if tag == ord("N"):
            return None
        if tag == ord("z"):
            return self._timezone(depth)
        raise DecodeError(f"a tzinfo tagged {tag:#04x}")

    def _datetime(self, depth: int) -> datetime.datetime:
        self._charge(64)
        year, month, day, hour, minute, second, micro, fold = self._unpack(_DATETIME)
        tz = self._tzinfo(depth)
        return datetime.datetime(year, month, day, hour, minute, second, micro, tz, fold=fold)

    def _date(self, depth: int) -> datetime.date:
        self._charge(32)
        return datetime.date(*self._unpack(_DATE))

    def _time(self, depth: int) -> datetime.time:
        self._charge(64)
        hour, minute, second, micro, fold = self._unpack(_TIME)
        return datetime.time(hour, minute, second, micro, self._tzinfo(depth), fold=fold)

    def _timedelta(self, depth: int) -> datetime.timedelta:
        self._charge(40)
        days, seconds, micro = self._unpack(_TIMEDELTA)
        return datetime.timedelta(days=days, seconds=seconds, microseconds=micro)

    def _timezone(self, depth: int) -> datetime.timezone:
        self._charge(64)
        if self.data[self._take(1)] != ord("g"):
            raise DecodeError("a timezone without its offset")
        offset = self._timedelta(depth)
        tag = self.data[self._take(1)]
        if tag == ord("N"):
            return datetime.timezone(offset)
        if tag == ord("s"):
            return datetime.timezone(offset, self._text())
        raise DecodeError(f"a timezone name tagged {tag:#04x}")

    def _decimal(self, depth: int) -> decimal.Decimal:
        if self.data[self._take(1)] != ord("s"):
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
            if tag not in _INT_TAGS and not (none and tag == ord("N")):
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
        if kind >= len(_PATHS):
            raise DecodeError(f"a path of unknown kind {kind}")
        parts = []
        n = self._count(5)
        # The path object, its parts list and str, and the copies of each part pathlib splits off.
        self._charge(512 + list_bytes(n) + 160 * n)
        for _ in range(n):
            if self.data[self._take(1)] != ord("s"):
                raise DecodeError("a path part that is not a str")
            parts.append(self._text())
        path: pathlib.PurePath = _PATHS[kind](*parts)
        return path

    # arrays and tensors

    def _name(self) -> str:
        n = self.data[self._take(1)]
        start = self._take(n)
        try:
            return self.data[start : start + n].decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError("a type name that is not UTF-8") from None

    def _shape(self) -> tuple[int, ...]:
        ndim = self.data[self._take(1)]
        if ndim > _arrays.MAX_DIMS:
            raise DecodeError(f"{ndim} dimensions (at most {_arrays.MAX_DIMS})")
        start = self._take(8 * ndim)
        return struct.unpack_from(f"<{ndim}Q", self.data, start)

    def _buffer(self) -> Buffer:
        kind = self.data[self._take(1)]
        if kind == 0:
            raw = self._raw()
            self._charge(64 + len(raw))
            return bytearray(raw)
        if kind != 1:
            raise DecodeError(f"unknown array data kind {kind}")
        index = self._u32()
        if index >= len(self.buffers) or self.used[index]:
            raise DecodeError(f"out-of-band buffer {index} does not exist or is used twice")
        self.used[index] = True
        return self.buffers[index]

    def _array_call(self, function: Callable[..., Any], *args: Any) -> Any:
        try:
            return function(*args)
        except _arrays.ArrayError as exc:
            raise DecodeError(str(exc)) from None

    def _ndarray(self, depth: int) -> Any:
        self._charge(_SLOT + 256)  # the array with its shape and strides
        slot = self._slot()
        name, shape = self._name(), self._shape()
        fortran = self.data[self._take(1)]
        if fortran > 1:
            raise DecodeError(f"unknown array order {fortran}")
        value = self._array_call(_arrays.numpy_array, name, shape, bool(fortran), self._buffer())
        self.memo[slot] = value
        return value

    def _numpy_scalar(self, depth: int) -> Any:
        self._charge(48)
        name = self._name()
        n = self._u32()
        start = self._take(n)
        self._charge(40 + 2 * n)  # the slice, and a str_ or bytes_ scalar of it
        return self._array_call(_arrays.numpy_scalar, name, self.data[start : start + n])

    def _numpy_dtype(self, depth: int) -> Any:
        self._charge(160)  # a new dtype object each time (str and datetime dtypes are not cached)
        return self._array_call(_arrays.numpy_dtype, self._name())

    def _tensor(self, depth: int) -> Any:
        self._charge(_SLOT + 1024)
        slot = self._slot()
        name, shape = self._name(), self._shape()
        flags = self.data[self._take(1)]
        if flags > 3:
            raise DecodeError(f"unknown tensor flags {flags}")
        value = self._array_call(
            _arrays.torch_tensor, name, shape, bool(flags & 1), bool(flags & 2), self._buffer()
        )
        self.memo[slot] = value
        return value

    def _torch_size(self, depth: int) -> Any:
        self._charge(128)
        n = self._count(8)
        if n > _arrays.MAX_DIMS:
            raise DecodeError(f"a torch.Size of {n} dimensions")
        dims = list(struct.unpack_from(f"<{n}q", self.data, self._take(8 * n)))
        value = self._array_call(_arrays.torch_size, dims)
        self._record(value, 1 + n, 1 + n)
        return value

    def _torch_device(self, depth: int) -> Any:
        self._charge(64)
        return self._array_call(_arrays.torch_device, self._name())

    def _torch_dtype(self, depth: int) -> Any:
        return self._array_call(_arrays.torch_dtype, self._name())

    def _registered(self, depth: int) -> Any:
        self._charge(_SLOT + 64)
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


_READERS: list[Callable[[Decoder, int], Any]] = [Decoder._bad] * 256
for _tag, _reader in {
    "N": Decoder._none, "T": Decoder._true, "F": Decoder._false,
    "j": Decoder._small_int, "i": Decoder._int64, "I": Decoder._big_int,
    "f": Decoder._float, "c": Decoder._complex,
    "s": Decoder._str, "S": Decoder._long_str,
    "y": Decoder._bytes, "Y": Decoder._long_bytes, "a": Decoder._bytearray,
    "l": Decoder._list, "L": Decoder._floats, "K": Decoder._ints,
    "t": Decoder._tuple, "e": Decoder._set, "E": Decoder._frozenset,
    "d": Decoder._dict, "o": Decoder._ordered_dict, "C": Decoder._counter,
    "D": Decoder._defaultdict, "q": Decoder._deque, "r": Decoder._ref,
    "x": Decoder._datetime, "X": Decoder._date, "h": Decoder._time,
    "g": Decoder._timedelta, "z": Decoder._timezone,
    "G": Decoder._range, "H": Decoder._slice,
    "m": Decoder._decimal, "Q": Decoder._fraction, "u": Decoder._uuid, "p": Decoder._path,
    "A": Decoder._ndarray, "n": Decoder._numpy_scalar, "k": Decoder._numpy_dtype,
    "P": Decoder._tensor, "Z": Decoder._torch_size, "V": Decoder._torch_device, "W": Decoder._torch_dtype,
    "U": Decoder._registered,
}.items():
    _READERS[ord(_tag)] = _reader


def decode(
    stream: bytes,
    buffers: Sequence[Buffer],
    *,
    bound_memory: bool = True,
    allowance: Allowance | None = None,
) -> Any:
    """Return the value a payload holds; raise DecodeError (or UnknownType) if it is malformed.

    It draws from ``allowance``, the allowance of the whole read (by default, one for this payload
    alone); ``bound_memory=False`` (for trusted files) makes that default lift the memory bound of
    ALLOC_FACTOR. Every other bound holds.

    Raises:
        Oversized: the read's allowance would be exceeded.
    """
    return Decoder(stream, buffers, bound_memory=bound_memory, allowance=allowance).decode()


def _str_bytes(n: int) -> int:
    """Return what decoding ``n`` bytes of UTF-8 into a str costs if they are ASCII: str and slice.

    sys.getsizeof gives 49 + n and 33 + n; pymalloc rounds each up to a multiple of 16.
    """
    return 112 + 2 * n


# What a str of n bytes of UTF-8 may cost more when they are not all ASCII: 2 or 4 bytes a
# character (of at most n characters) and a larger header, sys.getsizeof's 76 + 4n at most.
_WIDE_STR = 24
