"""The data codec's vocabulary, shared by its encoder and decoder: tag bytes, layouts, bounds, errors.

Each value in a payload starts with one tag byte; the names here stand for the letters of the tag
table in ``callstate._encoding._codec``, which documents what follows each one.
"""

from __future__ import annotations

import collections
import pathlib
import struct
import sys
from typing import Any

# -- tags -----------------------------------------------------------------------------------------

NONE = ord("N")
TRUE = ord("T")
FALSE = ord("F")
SMALL_INT = ord("j")  # 0..255
INT64 = ord("i")
BIG_INT = ord("I")
FLOAT = ord("f")
COMPLEX = ord("c")
STR = ord("s")
LONG_STR = ord("S")  # memoized
BYTES = ord("y")
LONG_BYTES = ord("Y")  # memoized
BYTEARRAY = ord("a")
LIST = ord("l")
FLOATS = ord("L")  # a list of floats, packed
INT64S = ord("K")  # a list of int64s, packed
TUPLE = ord("t")
SET = ord("e")
FROZENSET = ord("E")
DICT = ord("d")
ORDERED_DICT = ord("o")
COUNTER = ord("C")
DEFAULTDICT = ord("D")
DEQUE = ord("q")
REF = ord("r")  # a value met before
RANGE = ord("G")
SLICE = ord("H")
DATETIME = ord("x")
DATE = ord("X")
TIME = ord("h")
TIMEDELTA = ord("g")
TIMEZONE = ord("z")
DECIMAL = ord("m")
FRACTION = ord("Q")
UUID = ord("u")
PATH = ord("p")
NDARRAY = ord("A")
NUMPY_SCALAR = ord("n")
NUMPY_DTYPE = ord("k")
TENSOR = ord("P")
TORCH_SIZE = ord("Z")
TORCH_DEVICE = ord("V")
TORCH_DTYPE = ord("W")
JAX_ARRAY = ord("J")
REGISTERED = ord("U")

# The byte before an array's or tensor's data: its bytes follow, or the index of an out-of-band buffer.
INLINE = 0
OUT_OF_BAND = 1

# -- layouts --------------------------------------------------------------------------------------

U8 = struct.Struct("<B")
U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")
I64 = struct.Struct("<q")
F64 = struct.Struct("<d")
C128 = struct.Struct("<dd")
DATETIME_FIELDS = struct.Struct("<HBBBBBIB")
DATE_FIELDS = struct.Struct("<HBB")
TIME_FIELDS = struct.Struct("<BBBIB")
TIMEDELTA_FIELDS = struct.Struct("<iii")
LITTLE = sys.byteorder == "little"

# A defaultdict's default_factory and a path's class, by their code in the payload.
FACTORIES: tuple[Any, ...] = (
    None, list, dict, set, frozenset, tuple, int, float, complex, str, bytes, bool,
    collections.OrderedDict, collections.Counter, collections.deque, collections.defaultdict,
)
PATHS: tuple[type, ...] = (
    pathlib.PurePosixPath, pathlib.PureWindowsPath, pathlib.PosixPath, pathlib.WindowsPath,
)

# -- bounds ---------------------------------------------------------------------------------------

MAX_DEPTH = 100
# An int of 4 KiB (32,768 bits) is far beyond what a state holds (Python will not even print one
# without raising its str-digits limit), and keeps comparisons of colliding keys (a Decimal against
# an int converts the int) in milliseconds.
MAX_INT_BYTES = 4096
MAX_FRACTION_BYTES = 4096
# A Decimal of 10,000 digits is far beyond any state, and keeps comparisons with ints and Fractions
# of equal hash in milliseconds.
MAX_DECIMAL_CHARS = 10_000
# Buffers at least this large are written out of band: straight from the array's memory.
OUT_OF_BAND_MIN = 64 * 1024
# str and bytes this long are memoized, so one repeated many times is written once.
MEMO_MIN_LEN = 1024

# -- errors ---------------------------------------------------------------------------------------


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
