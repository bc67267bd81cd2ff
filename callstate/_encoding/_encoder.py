"""The data codec's encoder: a state as one stream of tagged values and its arrays' out-of-band buffers."""

from __future__ import annotations

import collections
import datetime
import decimal
import fractions
import pathlib
import struct
import sys
import uuid
from array import array
from collections.abc import Callable
from typing import Any

from . import _arrays, _jax, _types
from ._tags import (
    BIG_INT,
    BYTEARRAY,
    BYTES,
    COMPLEX,
    COUNTER,
    DATE,
    DATE_FIELDS,
    DATETIME,
    DATETIME_FIELDS,
    DECIMAL,
    DEFAULTDICT,
    DEQUE,
    DICT,
    FACTORIES,
    FALSE,
    FLOAT,
    FLOATS,
    FRACTION,
    FROZENSET,
    I64,
    INLINE,
    INT64,
    INT64S,
    JAX_ARRAY,
    LIST,
    LITTLE,
    LONG_BYTES,
    LONG_STR,
    MAX_DEPTH,
    MAX_FRACTION_BYTES,
    MAX_INT_BYTES,
    MEMO_MIN_LEN,
    NDARRAY,
    NONE,
    NUMPY_DTYPE,
    NUMPY_SCALAR,
    ORDERED_DICT,
    OUT_OF_BAND,
    OUT_OF_BAND_MIN,
    PATH,
    PATHS,
    RANGE,
    REF,
    REGISTERED,
    SET,
    SLICE,
    SMALL_INT,
    STR,
    TENSOR,
    TIME,
    TIME_FIELDS,
    TIMEDELTA,
    TIMEDELTA_FIELDS,
    TIMEZONE,
    TORCH_DEVICE,
    TORCH_DTYPE,
    TORCH_SIZE,
    TRUE,
    TUPLE,
    U8,
    U32,
    U64,
    UUID,
    ToDataError,
    Unsupported,
)

# Bound here, not imported by name: see callstate._encoding._reader.
_U8, _U32, _U64, _I64 = U8, U32, U64, I64
_DATETIME, _DATE, _TIME, _TIMEDELTA = DATETIME_FIELDS, DATE_FIELDS, TIME_FIELDS, TIMEDELTA_FIELDS

# A tag and what follows it, packed in one call.
_TAG_U8 = struct.Struct("<BB")
_TAG_U32 = struct.Struct("<BI")
_TAG_U64 = struct.Struct("<BQ")
_TAG_I64 = struct.Struct("<Bq")
_TAG_F64 = struct.Struct("<Bd")
_TAG_C128 = struct.Struct("<Bdd")
_TAG_DEQUE = struct.Struct("<BqI")
_PACKED_MIN = 8
_FACTORY_CODES = {f: i for i, f in enumerate(FACTORIES)}
_PATH_CODES = {cls: i for i, cls in enumerate(PATHS)}


def _qualname(cls: type) -> str:
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


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
            raise contains_itself(obj)
        reach = depth + self.heights[index]
        if reach > MAX_DEPTH:
            raise Unsupported(f"nesting deeper than {MAX_DEPTH} levels")
        self.deepest = max(self.deepest, reach)
        self.out += _TAG_U32.pack(REF, index)
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
        self.out.append(NONE)

    def _bool(self, obj: bool, depth: int) -> None:
        self.out.append(TRUE if obj else FALSE)

    def _int(self, obj: int, depth: int) -> None:
        if 0 <= obj < 256:
            self.out += _TAG_U8.pack(SMALL_INT, obj)
        elif -(1 << 63) <= obj < (1 << 63):
            self.out += _TAG_I64.pack(INT64, obj)
        else:
            size = (obj.bit_length() + 8) // 8
            if size > MAX_INT_BYTES:
                raise Unsupported(f"an int of more than {MAX_INT_BYTES * 8} bits")
            self.out += _TAG_U32.pack(BIG_INT, size)
            self.out += obj.to_bytes(size, "little", signed=True)

    def _float(self, obj: float, depth: int) -> None:
        self.out += _TAG_F64.pack(FLOAT, obj)

    def _complex(self, obj: complex, depth: int) -> None:
        self.out += _TAG_C128.pack(COMPLEX, obj.real, obj.imag)

    def _str(self, obj: str, depth: int) -> None:
        if len(obj) >= MEMO_MIN_LEN:
            if self._ref(obj, depth):
                return
            self._text(obj, LONG_STR)
        else:
            self._text(obj)

    def _text(self, text: str, tag: int = STR) -> None:
        """Write ``text`` under ``tag``; unmemoized ``STR``, as fixed layouts (Decimal, paths) expect."""
        data = text.encode("utf-8", "surrogatepass")
        self.out += _TAG_U32.pack(tag, len(data))
        self.out += data

    def _bytes(self, obj: bytes, depth: int) -> None:
        if len(obj) >= MEMO_MIN_LEN:
            if self._ref(obj, depth):
                return
            tag = LONG_BYTES
        else:
            tag = BYTES
        self.out += _TAG_U64.pack(tag, len(obj))
        self.out += obj

    def _bytearray(self, obj: bytearray, depth: int) -> None:
        if self._ref(obj, depth):
            return
        self.out += _TAG_U64.pack(BYTEARRAY, len(obj))
        self.out += obj

    # containers

    def _items(self, tag: int, obj: Any, depth: int) -> None:
        """Write a sequence container: tag, count, values."""
        saved = self._enter(depth)
        out = self.out
        out += _TAG_U32.pack(tag, len(obj))
        write, child = self._write, depth + 1
        for item in obj:
            # Floats and small ints written here, not through _write (see _pairs).
            kind = type(item)
            if kind is float:
                out += _TAG_F64.pack(FLOAT, item)
            elif kind is int and 0 <= item < 256:
                out += _TAG_U8.pack(SMALL_INT, item)
            else:
                write(item, child)
        self._leave(obj, depth, saved)

    def _list(self, obj: list[Any], depth: int) -> None:
        if self._ref(obj, depth):
            return
        if len(obj) >= _PACKED_MIN:
            if all(type(x) is float for x in obj):
                self._packed(FLOATS, "d", obj, depth)
                return
            if all(type(x) is int for x in obj):
                try:
                    self._packed(INT64S, "q", obj, depth)
                    return
                except OverflowError:
                    pass  # an int beyond int64: written one by one
        self._items(LIST, obj, depth)

    def _packed(self, tag: int, code: str, obj: list[Any], depth: int) -> None:
        values = array(code, obj)
        if not LITTLE:
            values.byteswap()
        if depth >= MAX_DEPTH:
            raise Unsupported(f"nesting deeper than {MAX_DEPTH} levels")
        self.out += _TAG_U32.pack(tag, len(obj))
        self.out += values.tobytes()
        self.heights[self.memo[id(obj)]] = 1  # one level, like any list
        self.deepest = max(self.deepest, depth + 1)

    def _immutable(self, tag: int, obj: Any, depth: int) -> None:
        if self._ref(obj, depth):
            return
        self.building.add(id(obj))
        self._items(tag, obj, depth)
        self.building.discard(id(obj))

    def _tuple(self, obj: tuple[Any, ...], depth: int) -> None:
        self._immutable(TUPLE, obj, depth)

    def _frozenset(self, obj: frozenset[Any], depth: int) -> None:
        self._immutable(FROZENSET, obj, depth)

    def _set(self, obj: set[Any], depth: int) -> None:
        if not self._ref(obj, depth):
            self._items(SET, obj, depth)

    def _deque(self, obj: collections.deque[Any], depth: int) -> None:
        if self._ref(obj, depth):
            return
        saved = self._enter(depth)
        maxlen = -1 if obj.maxlen is None else obj.maxlen
        self.out += _TAG_DEQUE.pack(DEQUE, maxlen, len(obj))
        for item in obj:
            self._write(item, depth + 1)
        self._leave(obj, depth, saved)

    def _pairs(self, tag: int, obj: dict[Any, Any], depth: int, prefix: bytes = b"") -> None:
        if self._ref(obj, depth):
            return
        saved = self._enter(depth)
        out = self.out
        out.append(tag)
        out += prefix
        out += _U32.pack(len(obj))
        write, child = self._write, depth + 1
        for key, value in obj.items():
            # Short str keys, floats and small ints written here, not through _write: encoding an
            # EarlyStopping-sized state is about 1.4x faster (benchmarks/codec.py).
            if type(key) is str and len(key) < MEMO_MIN_LEN:
                data = key.encode("utf-8", "surrogatepass")
                out += _TAG_U32.pack(STR, len(data))
                out += data
            else:
                write(key, child)
            kind = type(value)
            if kind is float:
                out += _TAG_F64.pack(FLOAT, value)
            elif kind is int and 0 <= value < 256:
                out += _TAG_U8.pack(SMALL_INT, value)
            else:
                write(value, child)
        self._leave(obj, depth, saved)

    def _dict(self, obj: dict[Any, Any], depth: int) -> None:
        self._pairs(DICT, obj, depth)

    def _ordered_dict(self, obj: collections.OrderedDict[Any, Any], depth: int) -> None:
        self._pairs(ORDERED_DICT, obj, depth)

    def _counter(self, obj: collections.Counter[Any], depth: int) -> None:
        self._pairs(COUNTER, obj, depth)

    def _defaultdict(self, obj: collections.defaultdict[Any, Any], depth: int) -> None:
        self._pairs(DEFAULTDICT, obj, depth, _U8.pack(factory_code(obj)))

    # standard library values

    def _tzinfo(self, tz: Any, depth: int) -> None:
        if tz is None:
            self.out.append(NONE)
        elif type(tz) is datetime.timezone:
            self._timezone(tz, depth)
        else:
            raise Unsupported(f"a datetime with tzinfo {_qualname(type(tz))}")

    def _datetime(self, obj: datetime.datetime, depth: int) -> None:
        self.out.append(DATETIME)
        self.out += _DATETIME.pack(
            obj.year, obj.month, obj.day, obj.hour, obj.minute, obj.second, obj.microsecond, obj.fold
        )
        self._tzinfo(obj.tzinfo, depth)

    def _date(self, obj: datetime.date, depth: int) -> None:
        self.out.append(DATE)
        self.out += _DATE.pack(obj.year, obj.month, obj.day)

    def _time(self, obj: datetime.time, depth: int) -> None:
        self.out.append(TIME)
        self.out += _TIME.pack(obj.hour, obj.minute, obj.second, obj.microsecond, obj.fold)
        self._tzinfo(obj.tzinfo, depth)

    def _timedelta(self, obj: datetime.timedelta, depth: int) -> None:
        self.out.append(TIMEDELTA)
        self.out += _TIMEDELTA.pack(obj.days, obj.seconds, obj.microseconds)

    def _timezone(self, obj: datetime.timezone, depth: int) -> None:
        args = obj.__getinitargs__()  # type: ignore[attr-defined]
        self.out.append(TIMEZONE)
        self._timedelta(args[0], depth)
        if len(args) > 1:
            self._text(args[1])
        else:
            self.out.append(NONE)

    def _decimal(self, obj: decimal.Decimal, depth: int) -> None:
        self.out.append(DECIMAL)
        self._text(str(obj))

    def _fraction(self, obj: fractions.Fraction, depth: int) -> None:
        if max(obj.numerator.bit_length(), obj.denominator.bit_length()) >= MAX_FRACTION_BYTES * 8:
            raise Unsupported(f"a Fraction with terms of more than {MAX_FRACTION_BYTES * 8} bits")
        self.out.append(FRACTION)
        self._int(obj.numerator, depth)
        self._int(obj.denominator, depth)

    def _range(self, obj: range, depth: int) -> None:
        self.out.append(RANGE)
        for term in (obj.start, obj.stop, obj.step):
            self._int(term, depth)

    def _slice(self, obj: slice, depth: int) -> None:
        terms = (obj.start, obj.stop, obj.step)
        if not all(term is None or type(term) is int for term in terms):
            raise Unsupported("a slice of values other than ints and None")
        self.out.append(SLICE)
        for term in terms:
            self._write(term, depth)

    def _uuid(self, obj: uuid.UUID, depth: int) -> None:
        self.out.append(UUID)
        self.out += obj.bytes

    def _path(self, obj: pathlib.PurePath, depth: int) -> None:
        # By its parts, as pickle does: str() does not round-trip every Windows path.
        self.out += _TAG_U8.pack(PATH, _PATH_CODES[type(obj)])
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
        if _jax.is_jax_type(cls):
            self._jax_array(obj, depth)
            return
        raise Unsupported(_qualname(cls))

    def _write_numpy(self, np: Any, obj: Any, depth: int) -> bool:
        """Write a numpy array, scalar or dtype; return False for anything else."""
        if type(obj) is np.ndarray:
            self._ndarray(obj, depth)
        elif isinstance(obj, np.generic):
            self._numpy_scalar(obj)
        elif isinstance(obj, np.dtype):
            self._name(NUMPY_DTYPE, self._numpy_name(obj))
        else:
            return False
        return True

    def _write_torch(self, torch: Any, obj: Any, depth: int) -> bool:
        """Write a torch tensor, Parameter, Size, device or dtype; return False for anything else."""
        cls = type(obj)
        if cls is torch.Tensor or cls is torch.nn.Parameter:
            self._tensor(obj, depth)
        elif cls is torch.Size:
            self.out += _TAG_U32.pack(TORCH_SIZE, len(obj))
            for dim in obj:
                self.out += _I64.pack(dim)
        elif cls is torch.device:
            self._name(TORCH_DEVICE, str(obj))
        elif cls is torch.dtype:
            self._name(TORCH_DTYPE, self._array_call(_arrays.torch_dtype_name, obj))
        else:
            return False
        return True

    def _name(self, tag: int, name: str) -> None:
        data = name.encode("ascii")
        self.out += _TAG_U8.pack(tag, len(data))
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
        self._name(NUMPY_SCALAR, self._numpy_name(obj.dtype))
        raw = obj.tobytes() if obj.dtype.itemsize else b""  # np.str_("").tobytes() has 4 bytes
        self.out += _U32.pack(len(raw))
        self.out += raw

    def _shape(self, shape: tuple[int, ...]) -> None:
        self.out += _U8.pack(len(shape))
        for dim in shape:
            self.out += _U64.pack(dim)

    def _data(self, raw: memoryview) -> None:
        if raw.nbytes >= OUT_OF_BAND_MIN:
            self.out += _TAG_U32.pack(OUT_OF_BAND, len(self.buffers))
            self.buffers.append(raw)
        else:
            self.out += _TAG_U64.pack(INLINE, raw.nbytes)
            self.out += raw

    def _ndarray(self, obj: Any, depth: int) -> None:
        if not self._ref(obj, depth):
            self._data(self._ndarray_head(obj))

    def _ndarray_head(self, obj: Any) -> memoryview:
        """Write an array's dtype, shape and order; return its data."""
        name, shape, fortran, raw = self._array_call(_arrays.numpy_parts, obj)
        self._name(NDARRAY, name)
        self._shape(shape)
        self.out.append(1 if fortran else 0)
        return raw  # type: ignore[no-any-return]

    def _tensor(self, obj: Any, depth: int) -> None:
        if not self._ref(obj, depth):
            self._data(self._tensor_head(obj))

    def _tensor_head(self, obj: Any) -> memoryview:
        """Write a tensor's dtype, shape and flags; return its data."""
        name, shape, requires_grad, is_parameter, raw = self._array_call(_arrays.torch_parts, obj)
        self._name(TENSOR, name)
        self._shape(shape)
        self.out.append(int(requires_grad) | (2 if is_parameter else 0))
        return raw  # type: ignore[no-any-return]

    def _jax_array(self, obj: Any, depth: int) -> None:
        if not self._ref(obj, depth):
            self._data(self._jax_head(obj))

    def _jax_head(self, obj: Any) -> memoryview:
        """Write a jax array's dtype, shape and key implementation; return its data."""
        name, shape, impl, raw = self._array_call(_jax.jax_parts, obj)
        self._name(JAX_ARRAY, name)
        self._shape(shape)
        impl_name = impl.encode("ascii")  # "" for an array that is not a key array
        self.out += _U8.pack(len(impl_name))
        self.out += impl_name
        return raw  # type: ignore[no-any-return]

    def _registered(self, registered: _types.RegisteredType, obj: Any, depth: int) -> None:
        if self._ref(obj, depth):
            return
        head, data = registered_data(registered, obj)
        saved = self._enter(depth)
        self.building.add(id(obj))
        self.out += head
        self._write(data, depth + 1)
        self.building.discard(id(obj))
        self._leave(obj, depth, saved)


# The writer of each type the codec writes itself, but for arrays and tensors (found by _write_other).
# callstate._encoding._native names the same types without importing their modules; a test keeps them alike.
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
    **{cls: Encoder._path for cls in PATHS},
}


# -- the compiled encoder's Python half ---------------------------------------------------------
# callstate._encoding._cencode writes plain data and keeps the memo, depth and buffers itself; for
# a value of any other type it calls other(), and for an array, tensor or registered object (which
# have memo slots) the functions below, once it has given the object its slot. Each writes what
# the Encoder above writes, so both encoders give the same bytes.

LEAF, ARRAY, REGISTERED_TYPE = 0, 1, 2


class _Scratch(Encoder):
    """An Encoder for one value with no memo slot, or the head of an array: only ``out`` is used."""

    def __init__(self) -> None:
        self.out = bytearray()

    def leaf(self, writer: Callable[[Encoder, Any, int], None], obj: Any) -> bytes:
        """Return the bytes ``writer`` writes for ``obj``."""
        writer(self, obj, 0)
        return bytes(self.out)

    def array(self, obj: Any) -> tuple[bytes, memoryview | None]:
        """Return the bytes of an array, tensor or jax array up to its data, and its data if out of band."""
        np = sys.modules.get("numpy")
        if np is not None and type(obj) is np.ndarray:
            raw = self._ndarray_head(obj)
        elif _jax.is_jax_type(type(obj)):
            raw = self._jax_head(obj)
        else:
            raw = self._tensor_head(obj)
        if raw.nbytes >= OUT_OF_BAND_MIN:
            return bytes(self.out), raw
        self._data(raw)
        return bytes(self.out), None


def other(obj: Any) -> tuple[int, Any]:
    """Return ``(LEAF, its bytes)``, ``(ARRAY, None)`` or ``(REGISTERED_TYPE, the RegisteredType)``.

    Raises Unsupported for a type the codec does not write, as the Encoder does.
    """
    cls = type(obj)
    writer = _WRITERS.get(cls)
    if writer is None:
        registered = _types.by_class(cls)
        if registered is not None:
            return REGISTERED_TYPE, registered
        if _is_array(cls):
            return ARRAY, None
        writer = Encoder._write_other
    return LEAF, _Scratch().leaf(writer, obj)


def _is_array(cls: type) -> bool:
    """Whether the compiled encoder gives ``cls`` a memo slot and takes its head from array_data."""
    np, torch = sys.modules.get("numpy"), sys.modules.get("torch")
    if (np is not None and cls is np.ndarray) or _jax.is_jax_type(cls):
        return True
    return torch is not None and (cls is torch.Tensor or cls is torch.nn.Parameter)


def array_data(obj: Any) -> tuple[bytes, memoryview | None]:
    """Return an array's or tensor's bytes up to its data, and the data if it goes out of band.

    Data kept inline is in the bytes returned (and None is returned with them); data out of band
    is the compiled encoder's to number, as its buffers are its own.
    """
    return _Scratch().array(obj)


def registered_data(registered: _types.RegisteredType, obj: Any) -> tuple[bytes, Any]:
    """Return a registered object's head (tag and type name) and the data its ``to_data`` made."""
    try:
        data = registered.to_data(obj)
    except Exception as exc:
        raise ToDataError(registered.name) from exc
    encoded = registered.name.encode("utf-8")
    return _TAG_U8.pack(REGISTERED, len(encoded)) + encoded, data


def factory_code(obj: collections.defaultdict[Any, Any]) -> int:
    """Return the code of a defaultdict's default_factory; raise Unsupported for one with none."""
    code = _FACTORY_CODES.get(obj.default_factory)
    if code is None:
        raise Unsupported(f"a defaultdict whose default_factory is {obj.default_factory!r:.60}")
    return code


def contains_itself(obj: Any) -> Unsupported:
    """Return the error for a reference to ``obj`` while it is being written."""
    return Unsupported(f"a {_qualname(type(obj))} that contains itself")
