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
J      jax.Array (or a typed PRNG key array)         yes     dtype name, shape, key impl name, data
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

Two implementations of this one format: the pure-Python reference (``_encoder``, ``_decoder``),
which defines it, and a compiled one (the C extensions ``_cencode`` and ``_cdecode``, built at install
where a C compiler exists). The compiled one runs where it is built; the reference where it is not
(no compiler, PyPy) or where ``CALLSTATE_PURE_PYTHON=1`` is set (``_implementation`` picks, once per
process). ``callstate.codec_implementation()`` says which (``"c"`` or ``"python"``), as does
``callstate --version``. They are tested to agree, byte for byte on encoding and value for value (or
error class for error class) on decoding: hypothesis properties over every supported type, the
golden files of versions 1 and 2 through both decoders, mutated and hostile payloads
(tests/test_cencode.py, tests/test_cdecode*.py), and the differential fuzzer fuzz/fuzz_codec_diff.py,
run in CI under AddressSanitizer and UndefinedBehaviorSanitizer (fuzz/sanitize.sh).

Why an encoder of our own and not msgpack (C-backed, well kept), measured with the reference
codec by ``benchmarks/codec.py`` in ``make bench`` (2-core shared VM, CPython 3.11.7, msgpack 1.2.4),
one state encoded and decoded:

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

The compiled codec closes the gap to pickle (``benchmarks/codec.py --files``, the issue 25 states,
same shared VM, loaded): it encodes in 0.20x to 0.80x ``pickle.dumps``'s time and decodes in 0.74x
to 1.46x ``pickle.loads``'s; dicts with non-str keys too, now that their hash-cost checks run in C
(100,000 int -> float: 0.97x, 3.0x when they ran in Python).

Where it lives: ``_tags`` names the tags, layouts, bounds and errors both sides share;
``_encoder`` writes; ``_decoder`` reads, with the reading core ``_reader`` (bytes, allowance, memo,
depth, hashing costs) and a builder module per family of tags (``_build_scalars``,
``_build_containers``, ``_build_library``, ``_build_arrays``, with jax arrays in ``_jax``); ``_native``
tells which types the codec writes itself without importing it. This module is the codec's entry
point: its ``Encoder`` and ``decode`` are the compiled ones where they are built (``_implementation``
picks them and says how a compiled part plugs in), else the reference's.
"""

from __future__ import annotations

from typing import Any

from . import _decoder, _encoder
from ._allowance import ALLOC_FACTOR as ALLOC_FACTOR
from ._allowance import ALLOC_SLACK as ALLOC_SLACK
from ._allowance import HASH_FACTOR as HASH_FACTOR
from ._allowance import HASH_SLACK as HASH_SLACK
from ._allowance import Oversized as Oversized
from ._decoder import Decoder as Decoder
from ._implementation import compiled
from ._tags import MAX_DECIMAL_CHARS as MAX_DECIMAL_CHARS
from ._tags import MAX_DEPTH as MAX_DEPTH
from ._tags import MAX_FRACTION_BYTES as MAX_FRACTION_BYTES
from ._tags import MAX_INT_BYTES as MAX_INT_BYTES
from ._tags import MEMO_MIN_LEN as MEMO_MIN_LEN
from ._tags import OUT_OF_BAND_MIN as OUT_OF_BAND_MIN
from ._tags import DecodeError as DecodeError
from ._tags import ToDataError as ToDataError
from ._tags import UnknownType as UnknownType
from ._tags import Unsupported as Unsupported

_cencode = compiled("encode")
_cdecode = compiled("decode")
# Any: the compiled Encoder is a class of the extension, with the reference's encode().
Encoder: Any = _encoder.Encoder if _cencode is None else _cencode.Encoder
decode: Any = _decoder.decode if _cdecode is None else _cdecode.decode
