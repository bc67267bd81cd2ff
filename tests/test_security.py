"""Security corpus: hostile payloads in valid containers are refused with a typed error, in bounded time and memory.

Every case is a crafted payload inside a container whose checksums and index are correct, so only the
decoder stands between it and the process. Each case is decoded in a subprocess (``hostile_child.py``)
whose address space is capped at what it uses after its imports plus ``HEADROOM``, under a kill timer
of ``TIME_CAP`` per decode, with an empty canary directory as its working directory: a payload that
ran would create a file there, and one that poisoned a class process-wide would show in the child's
checks after the attempt. Four decodes per case: ``callstate.read``, ``read(lazy=True)`` then
``.decode()``, ``callstate.loads`` with a callback that claims the entry, and ``callstate.loads([])``,
which must keep the entry undecoded (nothing claims it, so nothing of it runs). Cases that need no
isolation share a child; each case's outcome is still asserted on its own.
"""

from __future__ import annotations

import _pickle
import collections
import concurrent.futures
import datetime
import decimal
import fractions
import io
import json
import os
import pathlib
import pickle
import pickletools
import resource
import signal
import struct
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import cloudpickle
import numpy as np
import pytest
import torch
from exact import same
from hostile_child import EXTENSION_CODE

import callstate
from callstate._encoding import _codec, _format
from callstate._encoding._parts import chained_crc

CHILD = pathlib.Path(__file__).with_name("hostile_child.py")
TIME_CAP = 10.0  # seconds per decode; the child is killed by SIGALRM past it
HEADROOM = 400 * 2**20  # bytes of address space a child may add to what its imports take
KEY = "k"
MODES = ("read", "read_lazy", "loads", "loads_unclaimed")
FATAL = {"MemoryError", "RecursionError"}
P = 2**61 - 1  # sys.hash_info.modulus: k * P hashes to 0 for every int k

# -- the data codec's layouts (callstate._encoding._codec's tag table) --------------------------------------


def u8(n: int) -> bytes:
    return struct.pack("<B", n)


def u32(n: int) -> bytes:
    return struct.pack("<I", n)


def u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def i64(n: int) -> bytes:
    return struct.pack("<q", n)


def f64(x: float) -> bytes:
    return struct.pack("<d", x)


def text(value: str, tag: bytes = b"s") -> bytes:
    raw = value.encode("utf-8", "surrogatepass")
    return tag + u32(len(raw)) + raw


def integer(n: int) -> bytes:
    if 0 <= n < 256:
        return b"j" + u8(n)
    if -(2**63) <= n < 2**63:
        return b"i" + i64(n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"I" + u32(len(raw)) + raw


def seq(tag: bytes, *items: bytes) -> bytes:
    return tag + u32(len(items)) + b"".join(items)


def ref(index: int) -> bytes:
    return b"r" + u32(index)


def slug(value: str) -> str:
    """``value`` in characters that read well in a test id."""
    return "".join(c if c.isalnum() else "_" for c in value[:16]) or "empty"


def name(tag: bytes, value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return tag + u8(len(raw)) + raw


def shape(*dims: int) -> bytes:
    return u8(len(dims)) + b"".join(u64(d) for d in dims)


def inline(raw: bytes) -> bytes:
    return b"\x00" + u64(len(raw)) + raw


def part(index: int) -> bytes:
    return b"\x01" + u32(index)


def array(dtype: str, dims: tuple[int, ...], data: bytes, order: int = 0) -> bytes:
    return name(b"A", dtype) + shape(*dims) + u8(order) + data


def tensor(dtype: str, dims: tuple[int, ...], data: bytes, flags: int = 0) -> bytes:
    return name(b"P", dtype) + shape(*dims) + u8(flags) + data


def datetime_fields(year: int, month: int, day: int, hour: int, minute: int, second: int, micro: int, fold: int) -> bytes:
    return b"x" + struct.pack("<HBBBBBIB", year, month, day, hour, minute, second, micro, fold) + b"N"


def timedelta_fields(days: int, seconds: int, micro: int) -> bytes:
    return b"g" + struct.pack("<iii", days, seconds, micro)


def tuple_chain(first_slot: int, length: int, width: int) -> bytes:
    """Tuples t_0 = () and t_i = (t_{i-1},) * width, each referring to the one before (slots from ``first_slot``)."""
    out = [b"t" + u32(0)]
    for i in range(1, length):
        out.append(b"t" + u32(width) + ref(first_slot + i - 1) * width)
    return b"".join(out)


def tuple_dag(first_slot: int, levels: int) -> bytes:
    """A tuple of t_0 .. t_levels with t_i = (t_{i-1}, t_{i-1}): 2**levels leaves in about 10 bytes a level."""
    return b"t" + u32(levels + 1) + tuple_chain(first_slot + 1, levels + 1, 2)


# -- pickle opcodes (protocol 4), for payloads that would run code or allocate if unpickled -----------


def p_str(value: str) -> bytes:
    raw = value.encode()
    return b"\x8c" + u8(len(raw)) + raw if len(raw) < 256 else b"X" + u32(len(raw)) + raw


def p_bytes(raw: bytes) -> bytes:
    return b"C" + u8(len(raw)) + raw if len(raw) < 256 else b"B" + u32(len(raw)) + raw


def p_int(n: int) -> bytes:
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True) if n else b""
    return b"\x8a" + u8(len(raw)) + raw


def p_global(module: str, qualname: str) -> bytes:
    return p_str(module) + p_str(qualname) + b"\x93"


def p_tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def p_call(func: bytes, *args: bytes) -> bytes:
    return func + p_tuple(*args) + b"R"


def p_dict(*pairs: tuple[bytes, bytes]) -> bytes:
    return b"}(" + b"".join(k + v for k, v in pairs) + b"u"


def pickled(body: bytes) -> bytes:
    return b"\x80\x04" + body + b"."


_RECONSTRUCT = p_global("numpy._core.multiarray", "_reconstruct")
_NDARRAY = p_global("numpy", "ndarray")


def _p_dtype(code: str) -> bytes:
    return p_call(p_global("numpy", "dtype"), p_str(code), b"\x89", b"\x88")


def _p_array(dims: tuple[int, ...], dtype: bytes, raw: bytes) -> bytes:
    """An ndarray as numpy pickles one: _reconstruct, then BUILD with (version, shape, dtype, fortran, bytes)."""
    empty = p_call(_RECONSTRUCT, _NDARRAY, p_tuple(p_int(0)), p_bytes(b"b"))
    return empty + p_tuple(p_int(1), p_tuple(*map(p_int, dims)), dtype, b"\x89", p_bytes(raw)) + b"b"


_NESTED = b")" + b"\x85" * 200_000  # (((...(),),),) 200,000 deep: hashing it overflows the C stack

PICKLES: dict[str, bytes] = {
    # numpy.dtype('f8') rebuilt with forged flags (object-holding), then an array of raw "pointers" in it.
    "dtype-forged-flags": pickled(
        _p_array(
            (2,),
            _p_dtype("f8") + p_tuple(p_int(3), p_str("|"), b"N", b"N", b"N", p_int(8), p_int(8), p_int(0x3F)) + b"b",
            b"\x41" * 16,
        )
    ),
    # a = array; v = a[8:]; BUILD on a again frees the buffer v still points into.
    "array-build-under-live-view": pickled(
        _p_array((16,), _p_dtype("u1"), bytes(16))
        + b"\x940"  # MEMOIZE as 0, POP
        + p_call(p_global("operator", "getitem"), b"h\x00", p_call(p_global("builtins", "slice"), p_int(8), b"N"))
        + b"h\x00"
        + p_tuple(p_int(1), p_tuple(p_int(0)), _p_dtype("u1"), b"\x89", p_bytes(b""))
        + b"b\x86"
    ),
    # BUILD on a class with (None, slot state): setattr on the class itself, for the whole process.
    "purepath-slot-state": pickled(
        p_global("pathlib", "PurePath") + p_tuple(b"N", p_dict((p_str("name"), p_str("pwned")))) + b"b"
    ),
    "fraction-slot-state": pickled(
        p_global("fractions", "Fraction")
        + p_tuple(b"N", p_dict((p_str("__add__"), p_global("operator", "sub"))))
        + b"b"
    ),
    "counter-slot-state": pickled(
        p_global("collections", "Counter")
        + p_tuple(b"N", p_dict((p_str("__missing__"), p_global("os", "system"))))
        + b"b"
    ),
    # EXT1 names os.system through the copyreg extension the child registered.
    "copyreg-ext1": pickled(b"\x82" + u8(EXTENSION_CODE) + p_tuple(p_str("touch CANARY-ext")) + b"R"),
    "bytearray-3e9": pickled(p_call(p_global("builtins", "bytearray"), p_int(3 * 10**9))),
    "fraction-1e30000000": pickled(p_call(p_global("fractions", "Fraction"), p_str("1e30000000"))),
    "deque-range-1e18": pickled(
        p_call(p_global("collections", "deque"), p_call(p_global("builtins", "range"), p_int(10**18)), p_int(0))
    ),
    "numpy-reconstruct-3GiB": pickled(p_call(_RECONSTRUCT, _NDARRAY, p_tuple(p_int(3 * 2**30)), p_bytes(b"b"))),
    "rebuild-tensor-empty-buffer-huge-shape": pickled(
        p_call(
            p_global("callstate._encoding._tensors", "rebuild_tensor"),
            p_bytes(b""),
            p_str("float32"),
            p_tuple(p_int(2**40)),
            b"\x89",
            b"\x89",
        )
    ),
    "nested-tuple-in-set": pickled(b"\x8f(" + _NESTED + b"\x90"),
    "nested-tuple-in-frozenset": pickled(b"(" + _NESTED + b"\x91"),
    "nested-tuple-as-dict-key": pickled(b"}" + _NESTED + b"Ns"),
    "os-system": pickled(p_call(p_global("os", "system"), p_str("touch CANARY-system"))),
    "path-write-text": pickled(
        p_call(
            p_global("pathlib", "Path.write_text"),
            p_call(p_global("pathlib", "Path"), p_str("CANARY-pathlib")),
            p_str("ran"),
        )
    ),
    "builtins-exec": pickled(p_call(p_global("builtins", "exec"), p_str("open('CANARY-exec', 'w').close()"))),
}

# -- containers -----------------------------------------------------------------------------------


def container(
    parts: tuple[bytes, ...],
    codec: str = "data",
    version: int = 2,
    info: dict[str, Any] | None = None,
    fields: int | None = None,
) -> bytes:
    """A callstate file holding one entry ``KEY`` with these parts, every checksum right.

    Index records have the ``fields`` of the version (5 in version 1, 6 with ``info`` in version 2)
    unless told otherwise; version 2 files are written by ``_format.write_container``, others by hand.
    """
    crc = zlib.crc32(parts[0]) if len(parts) == 1 else chained_crc(parts)
    fields = fields if fields is not None else (5 if version == 1 else 6)
    info = info if info is not None else {}
    if version == 2 and fields == 6:
        out = io.BytesIO()
        _format.write_container(out, [(KEY, codec, parts, crc, info)], {})
        return out.getvalue()
    head = struct.pack("<8sHH", _format.MAGIC, version, 0)
    head += struct.pack("<I", zlib.crc32(head))
    record: list[Any] = [KEY, codec, len(head), [len(p) for p in parts], crc, info][:fields]
    index = json.dumps({"entries": [record], "meta": {}}).encode()
    body = struct.pack("<QQI", len(head) + sum(map(len, parts)), len(index), zlib.crc32(index))
    return head + b"".join(parts) + index + body + struct.pack("<I", zlib.crc32(body)) + _format.END_MAGIC


# -- the corpus -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One hostile file: its entry's parts, how it is stored, and the error every decode must raise."""

    name: str
    parts: tuple[bytes, ...]
    expected: str = "CorruptCheckpointError"
    codec: str = "data"
    version: int = 2
    info: tuple[tuple[str, Any], ...] = ()
    fields: int | None = None  # index record fields, if not the version's own
    imports: tuple[str, ...] = ("numpy",)
    container_error: bool = False  # refused while the index is read: loads([]) raises too
    bug: str = ""  # a known bug: the case runs alone and is expected to fail

    def data(self) -> bytes:
        return container(self.parts, self.codec, self.version, dict(self.info), self.fields)

    @property
    def batch(self) -> str:
        if self.bug:
            return f"alone-{self.name}"
        if "torch" in self.imports:
            return "torch"
        return "pickle" if self.codec != "data" else "data"


def _data(case_name: str, stream: bytes, *buffers: bytes, expected: str = "CorruptCheckpointError", bug: str = "") -> Case:
    return Case(case_name, (stream, *buffers), expected=expected, bug=bug)


def _torch(case_name: str, stream: bytes, *buffers: bytes) -> Case:
    return Case(case_name, (stream, *buffers), imports=("numpy", "torch"))


def _pickle_cases() -> Iterator[Case]:
    unsafe = "UnsafeCheckpointError"
    for label, payload in PICKLES.items():
        yield Case(f"v1-pickle-{label}", (payload,), unsafe, "pickle", version=1)
        yield Case(f"v2-pickle-{label}", (payload,), unsafe, "pickle", info=(("pickled", "numpy.ndarray"),))
        yield Case(f"v2-cloudpickle-{label}", (payload,), unsafe, "cloudpickle")
    yield Case("v1-cloudpickle-os-system", (PICKLES["os-system"],), unsafe, "cloudpickle", version=1)
    yield Case("v2-pickle-os-system-no-info", (PICKLES["os-system"],), unsafe, "pickle")
    # A pickle cannot pass for the data codec, nor a version 1 record claim it.
    yield Case("v1-data-codec", (b"N",), codec="data", version=1, container_error=True)
    yield Case("v1-six-field-record", (PICKLES["os-system"],), codec="pickle", version=1, fields=6, container_error=True)
    yield Case("v2-five-field-record", (PICKLES["os-system"],), codec="pickle", fields=5, container_error=True)
    yield Case("v2-unknown-codec-marshal", (b"N",), codec="marshal", container_error=True)
    yield Case("v2-info-not-text", (PICKLES["os-system"],), codec="pickle", info=(("pickled", [1]),), container_error=True)
    yield Case("v2-pickle-as-data", (PICKLES["os-system"],))


def _malformed() -> Iterator[Case]:
    yield _data("empty-stream", b"")
    yield _data("unknown-tag-00", b"\x00")
    yield _data("unknown-tag-ff", b"\xff")
    yield _data("unknown-tag-in-list", seq(b"l", b"N", b"?"))
    yield _data("pickle-opcode-as-tag", b"\x80\x04N.")
    yield _data("trailing-bytes", b"NN")
    yield _data("list-missing-item", b"l" + u32(1))
    yield _data("str-not-utf8", b"s" + u32(2) + b"\xff\xfe")
    yield _data("defaultdict-unknown-factory", b"D" + u8(99) + u32(0))
    yield _data("path-unknown-kind", b"p" + u8(9) + text("a"))
    yield _data("path-value-not-str", b"p" + u8(0) + b"j\x01")
    yield _data("array-unknown-order", array("<f8", (1,), inline(bytes(8)), order=2))
    yield _data("array-unknown-data-kind", array("<f8", (1,), b"\x02" + u64(8) + bytes(8)))
    yield _data("datetime-tzinfo-tag-not-timezone", b"x" + struct.pack("<HBBBBBIB", 2024, 1, 1, 0, 0, 0, 0, 0) + b"j\x01")
    yield _data("timezone-name-not-str", b"z" + timedelta_fields(0, 0, 0) + b"j\x01")
    yield _data("registered-name-not-utf8", b"U" + u8(2) + b"\xff\xfe" + b"N")


def _lengths_past_the_end() -> Iterator[Case]:
    yield _data("str-past-end", b"s" + u32(100) + b"abc")
    yield _data("long-str-past-end", b"S" + u32(2**32 - 1) + b"x")
    yield _data("bytes-past-end", b"y" + u64(100) + b"abc")
    yield _data("bytes-length-u64-max", b"y" + u64(2**64 - 1))
    yield _data("long-bytes-past-end", b"Y" + u64(2**40) + b"x")
    yield _data("bytearray-past-end", b"a" + u64(2**63) + b"x")
    yield _data("big-int-past-end", b"I" + u32(100) + b"\x01" * 5)
    yield _data("packed-floats-past-end", b"L" + u32(10) + bytes(8))
    yield _data("packed-ints-past-end", b"K" + u32(2**32 - 1) + bytes(16))
    yield _data("array-inline-data-past-end", array("<f8", (4,), b"\x00" + u64(32) + bytes(8)))
    yield _data("array-inline-length-u64-max", array("<f8", (4,), b"\x00" + u64(2**64 - 1)))
    yield _data("array-shape-past-end", name(b"A", "<f8") + u8(3) + u64(1))
    yield _data("dtype-name-past-end", b"A" + u8(50) + b"<f8")
    yield _data("numpy-scalar-past-end", name(b"n", "<f8") + u32(8) + b"\x00\x00")
    yield _data("registered-name-past-end", b"U" + u8(200) + b"abc")
    yield _data("uuid-past-end", b"u" + bytes(5))
    yield _data("datetime-past-end", b"x" + bytes(3))
    yield _data("float-past-end", b"f" + bytes(3))
    yield _data("deque-header-past-end", b"q" + bytes(4))
    yield _data("ref-past-end", b"r\x00")


def _huge_counts() -> Iterator[Case]:
    for tag, label in [
        (b"l", "list"), (b"t", "tuple"), (b"e", "set"), (b"E", "frozenset"), (b"d", "dict"),
        (b"o", "ordereddict"), (b"C", "counter"), (b"D\x01", "defaultdict"),
    ]:
        yield _data(f"{label}-count-2**32-1", tag + u32(2**32 - 1) + b"NNNN")
    yield _data("deque-count-2**32-1", b"q" + i64(-1) + u32(2**32 - 1) + b"NNNN")


def _nesting() -> Iterator[Case]:
    n = 200_000
    yield _data("nested-lists-200000", b"l\x01\x00\x00\x00" * n + b"N")
    yield _data("nested-tuples-200000", b"t\x01\x00\x00\x00" * n + b"N")
    yield _data("nested-frozensets-200000", b"E\x01\x00\x00\x00" * n + b"N")
    yield _data("nested-tuples-in-set-200000", b"e" + u32(1) + b"t\x01\x00\x00\x00" * n + b"N")
    yield _data("nested-dicts-200000", (b"d" + u32(1) + b"j\x00") * n + b"N")
    yield _data("nested-deques-200000", (b"q" + i64(-1) + u32(1)) * n + b"N")
    yield _data("nested-lists-101", b"l\x01\x00\x00\x00" * 101 + b"N")
    # Through references: t_k = (t_{k-1},) is one level deeper each time, however few bytes it takes.
    chain = tuple_chain(1, n, 1)
    yield _data("ref-chain-200000-then-set", b"l" + u32(n + 1) + chain + seq(b"e", ref(n)))
    legal = tuple_chain(1, 98, 1)  # t_97 is 98 levels high: fine in the list, too deep two levels further in
    yield _data("ref-chain-98-into-nested-set", b"l" + u32(99) + legal + seq(b"l", seq(b"e", ref(98))))
    yield _data("ref-chain-98-into-frozenset-key", b"l" + u32(99) + legal + seq(b"l", b"d" + u32(1) + seq(b"E", ref(98)) + b"N"))


def _references() -> Iterator[Case]:
    yield _data("ref-to-in-progress-tuple", seq(b"t", ref(0)))
    yield _data("ref-to-in-progress-frozenset", seq(b"E", ref(0)))
    yield _data("ref-to-in-progress-outer-tuple", seq(b"l", seq(b"t", integer(1), seq(b"t", ref(1)))))
    yield _data("ref-to-index-not-built-yet", seq(b"l", ref(5), b"N"))
    yield _data("ref-with-empty-memo", ref(0))
    yield _data("ref-index-2**32-1", seq(b"l", ref(2**32 - 1)))
    yield _data("set-in-itself-through-tuple", seq(b"e", seq(b"t", ref(0))))
    yield _data("dict-keyed-by-itself", b"d" + u32(1) + ref(0) + b"N")
    yield _data("list-as-set-element", seq(b"e", seq(b"l")))
    yield _data("ndarray-as-dict-key", b"d" + u32(1) + array("<f8", (1,), inline(bytes(8))) + b"N")


_NUMPY_NAMES = [
    "|O8", "|O", "<O8", "|V8", "<V8", "[('a', '|O8')]", "{'names': ['a'], 'formats': ['O']}", "(2,)<f8",
    "<f8,<i4", "float64", "<f8 ", "<f8\x00", "O", "<i9", "<U999999999", "<b1", ">u1", "<M8[999999Y]",
    "", "<f8" * 20, "<m8[0Y]", "<M8[0D]", ">m8[0us]",
]
_TORCH_NAMES = [
    "qint8", "quint8", "qint32", "quint4x2", "Tensor", "__class__", "float", "strided", "FloatTensor",
    "manual_seed", "load", "nn", "", "float32\x00", "dtype",
]


def _type_confusion() -> Iterator[Case]:
    yield _data("fraction-list-terms", b"Q" + seq(b"l") + seq(b"l"))
    yield _data("fraction-str-terms", b"Q" + text("1") + text("3"))
    yield _data("fraction-float-term", b"Q" + b"f" + f64(1.0) + b"j\x03")
    yield _data("fraction-zero-denominator", b"Q" + b"j\x01" + b"j\x00")
    yield _data("fraction-negative-denominator", b"Q" + b"j\x01" + integer(-3))
    yield _data("range-float-terms", b"G" + (b"f" + f64(1.0)) * 3)
    yield _data("range-none-terms", b"GNNN")
    yield _data("range-step-zero", b"G" + b"j\x00" + b"j\x05" + b"j\x00")
    yield _data("slice-str-term", b"H" + text("a") + b"NN")
    yield _data("timezone-without-g", b"z" + b"j\x01" + b"N")
    yield _data("timezone-offset-24h", b"z" + timedelta_fields(1, 0, 0) + b"N")
    yield _data("decimal-digits-not-str", b"m" + b"j\x01")
    yield _data("decimal-digits-garbage", b"m" + text("1.2.3"))
    yield _data("decimal-exponent-100000-digits", b"m" + text("1e" + "9" * 100_000))
    yield _data("path-value-list", b"p" + u8(0) + seq(b"l"))
    yield _data("registered-name-with-list-tag", b"U" + seq(b"l"))
    for i, dtype in enumerate(_NUMPY_NAMES):
        yield _data(f"numpy-array-dtype-{i}-{slug(dtype)}", array(dtype, (1,), inline(bytes(8))))
        yield _data(f"numpy-dtype-tag-{i}-{slug(dtype)}", name(b"k", dtype))
    yield _data("numpy-scalar-dtype-O8", name(b"n", "|O8") + u32(8) + bytes(8))
    yield _data("numpy-scalar-dtype-m8-0Y", name(b"n", "<m8[0Y]") + u32(8) + bytes(8))
    yield _data("numpy-scalar-wrong-size", name(b"n", "<f8") + u32(4) + bytes(4))
    yield _data("numpy-scalar-invalid-code-point", name(b"n", "<U1") + u32(4) + b"\xff\xff\xff\xff")
    for i, dtype in enumerate(_TORCH_NAMES):
        yield _torch(f"torch-tensor-dtype-{i}-{slug(dtype)}", tensor(dtype, (1,), inline(bytes(8))))
        yield _torch(f"torch-dtype-tag-{i}-{slug(dtype)}", name(b"W", dtype))
    for i, device in enumerate(["cuda:1234567", "cpu;touch CANARY", "foo", "", "CPU", "../cpu", "cpu:-1"]):
        yield _torch(f"torch-device-{i}-{slug(device)}", name(b"V", device))


def _registered() -> Iterator[Case]:
    unknown = "UnknownTypeError"
    for type_name in ["os.system", "builtins.eval", "callstate._encoding._tensors.rebuild_tensor", "__main__.Claimer", "numpy.ndarray", ""]:
        yield _data(f"unregistered-type-{slug(type_name)}", name(b"U", type_name) + b"N", expected=unknown)
    yield _data("unregistered-type-in-list", seq(b"l", b"N", name(b"U", "x.Y") + seq(b"l")), expected=unknown)
    yield _data("unregistered-type-before-huge-data", name(b"U", "x.Y") + b"l" + u32(2**32 - 1), expected=unknown)


def _buffers() -> Iterator[Case]:
    f8 = bytes(8)
    yield _data("part-index-out-of-range", array("<f8", (1,), part(1)), f8)
    yield _data("part-index-2**32-1", array("<f8", (1,), part(2**32 - 1)), f8)
    yield _data("part-with-no-buffers", array("<f8", (1,), part(0)))
    yield _data("part-used-twice", seq(b"l", array("<f8", (1,), part(0)), array("<f8", (1,), part(0))), f8)
    yield _data("part-unused", array("<f8", (1,), inline(f8)), f8)
    yield _data("part-belongs-to-no-value", b"N", f8)
    yield _data("part-size-mismatch", array("<f8", (3,), part(0)), bytes(16))
    yield _data("inline-size-mismatch", array("<f8", (2, 2), inline(f8)))
    yield _data("empty-buffer-huge-shape", array("<f8", (2**40,), inline(b"")))
    yield _data("empty-part-huge-shape", array("<f8", (2**62, 2**62), part(0)), b"")
    yield _data("empty-buffer-zero-and-u64-max-dims", array("<f8", (0, 2**64 - 1), inline(b"")))
    # Zero-sized items make dtype x shape 0 for any shape: no check by size can refuse those.
    yield _data("zero-itemsize-bytes-huge-shape", array("|S0", (2**64 - 1,) * 2, inline(b"")))
    yield _data("zero-itemsize-str-huge-shape-part", array("<U0", (2**63,) * 64, part(0)), b"")
    yield _data("empty-buffer-huge-itemsize", array("|S999999999", (2**40,), inline(b"")))
    yield _data("dims-65", array("<f8", (1,) * 65, inline(f8)))
    yield _data("dims-255", array("<f8", (1,) * 255, inline(f8)))
    yield _data("dims-64-of-2", array("|u1", (2,) * 64, inline(f8)))
    yield _data("bool-array-byte-2", array("|b1", (4,), inline(b"\x00\x01\x02\x01")))
    yield _data("bool-array-part-byte-ff", array("|b1", (2**16,), part(0)), bytes(2**16 - 1) + b"\xff")
    yield _data("bool-scalar-byte-2", name(b"n", "|b1") + u32(1) + b"\x02")
    four = bytes(4)
    yield _torch("tensor-part-out-of-range", tensor("float32", (1,), part(1)), four)
    yield _torch("tensor-and-array-share-a-part", seq(b"l", tensor("float32", (2,), part(0)), array("<f4", (2,), part(0))), bytes(8))
    yield _torch("tensor-part-unused", tensor("float32", (1,), inline(four)), four)
    yield _torch("tensor-size-mismatch", tensor("float32", (3,), part(0)), bytes(8))
    yield _torch("tensor-empty-buffer-huge-shape", tensor("float32", (2**40,), inline(b"")))
    yield _torch("tensor-empty-part-huge-shape", tensor("float32", (2**62, 2**62), part(0)), b"")
    yield _torch("tensor-empty-buffer-zero-and-u64-max-dims", tensor("float32", (0, 2**64 - 1), inline(b"")))
    yield _torch("tensor-dims-65", tensor("float32", (1,) * 65, inline(four)))
    yield _torch("tensor-bool-byte-2", tensor("bool", (2,), inline(b"\x01\x02")))
    yield _torch("tensor-flags-4", tensor("float32", (1,), inline(four), flags=4))
    yield _torch("tensor-int-requires-grad", tensor("int64", (1,), inline(bytes(8)), flags=1))
    yield _torch("parameter-int-requires-grad", tensor("int64", (1,), inline(bytes(8)), flags=3))
    yield _torch("torch-size-count-2**32-1", b"Z" + u32(2**32 - 1) + bytes(16))
    yield _torch("torch-size-65-dims", b"Z" + u32(65) + i64(1) * 65)


def _big_numbers() -> Iterator[Case]:
    mb = 2**20
    yield _data("big-int-10MB-declared", b"I" + u32(10 * mb) + b"\x01" * 16)
    yield _data("big-int-10MB-present", b"I" + u32(10 * mb) + b"\x01" * (10 * mb))
    yield _data("big-int-64KB-plus-1", b"I" + u32(_codec.MAX_INT_BYTES + 1) + b"\x01" * (_codec.MAX_INT_BYTES + 1))
    yield _data("fraction-1MB-numerator", b"Q" + b"I" + u32(mb) + b"\x01" * mb + b"j\x01")
    yield _data("fraction-1MB-denominator", b"Q" + b"j\x01" + b"I" + u32(mb) + b"\x01" * mb)
    yield _data("fraction-60KB-numerator", b"Q" + integer(2 ** (8 * 60_000)) + b"j\x01")
    yield _data("fraction-denominator-at-cap", b"Q" + b"j\x01" + integer(2 ** (8 * _codec.MAX_FRACTION_BYTES)))


def _collisions_and_duplicates() -> Iterator[Case]:
    n = 100_000
    keys = [integer(k * P) for k in range(1, n + 1)]
    pairs = b"".join(k + b"N" for k in keys)
    yield _data("dict-100000-int-keys-one-hash", b"d" + u32(n) + pairs)
    yield _data("ordereddict-100000-int-keys-one-hash", b"o" + u32(n) + pairs)
    yield _data("counter-100000-int-keys-one-hash", b"C" + u32(n) + pairs)
    yield _data("set-100000-ints-one-hash", seq(b"e", *keys))
    yield _data("frozenset-100000-ints-one-hash", seq(b"E", *keys))
    tuples = [seq(b"t", integer(k * P)) for k in range(1, 2001)]
    yield _data("set-2000-tuples-one-hash", seq(b"e", *tuples))
    yield _data("dict-duplicate-int-keys", b"d" + u32(2) + b"j\x01N" + b"j\x01N")
    yield _data("dict-duplicate-str-keys", b"d" + u32(2) + text("a") + b"N" + text("a") + b"N")
    yield _data("dict-keys-1-and-True", b"d" + u32(2) + b"j\x01N" + b"TN")
    yield _data("ordereddict-duplicate-keys", b"o" + u32(2) + b"j\x01N" + b"j\x01N")
    yield _data("counter-duplicate-keys", b"C" + u32(2) + b"j\x01j\x01" + b"j\x01j\x02")
    yield _data("defaultdict-duplicate-keys", b"D\x01" + u32(2) + b"j\x01N" + b"j\x01N")
    yield _data("set-duplicate-elements", seq(b"e", b"j\x01", b"j\x01"))
    yield _data("frozenset-duplicate-elements", seq(b"E", text("a"), text("a")))
    yield _data("set-duplicate-via-reference", seq(b"e", seq(b"t", b"j\x01"), ref(1)))


def _invalid_values() -> Iterator[Case]:
    for label, fields in {
        "month-13": (2024, 13, 1, 0, 0, 0, 0, 0),
        "day-0": (2024, 1, 0, 0, 0, 0, 0, 0),
        "february-30": (2023, 2, 30, 0, 0, 0, 0, 0),
        "hour-24": (2024, 1, 1, 24, 0, 0, 0, 0),
        "minute-60": (2024, 1, 1, 0, 60, 0, 0, 0),
        "second-60": (2024, 1, 1, 0, 0, 60, 0, 0),
        "microsecond-1e6": (2024, 1, 1, 0, 0, 0, 10**6, 0),
        "fold-2": (2024, 1, 1, 0, 0, 0, 0, 2),
        "year-0": (0, 1, 1, 0, 0, 0, 0, 0),
        "year-65535": (65535, 1, 1, 0, 0, 0, 0, 0),
    }.items():
        yield _data(f"datetime-{label}", datetime_fields(*fields))
    yield _data("date-year-0", b"X" + struct.pack("<HBB", 0, 1, 1))
    yield _data("date-month-0", b"X" + struct.pack("<HBB", 2024, 0, 1))
    yield _data("time-hour-25", b"h" + struct.pack("<BBBIB", 25, 0, 0, 0, 0) + b"N")
    yield _data("time-fold-2", b"h" + struct.pack("<BBBIB", 0, 0, 0, 0, 2) + b"N")
    yield _data("timedelta-days-2**31-1", timedelta_fields(2**31 - 1, 0, 0))
    yield _data("timedelta-days-minus-2**31", timedelta_fields(-(2**31), -(2**31), -(2**31)))
    yield _data("deque-count-over-maxlen", b"q" + i64(1) + u32(2) + b"NN")
    yield _data("deque-maxlen-0-one-item", b"q" + i64(0) + u32(1) + b"N")
    yield _data("deque-maxlen-minus-2", b"q" + i64(-2) + u32(0))
    yield _data("deque-maxlen-int64-min", b"q" + i64(-(2**63)) + u32(0))
    yield _data("windows-path-concrete-on-posix", b"p" + u8(3) + text("C:\\x"))


def _decimals_and_ints_sharing_a_hash(int_bytes: int) -> bytes:
    big = 2 ** (8 * int_bytes)
    colliding = seq(
        b"e", *[integer(big * P + k * P) for k in range(9)], *[b"m" + text(str(k * P)) for k in range(1, 9)]
    )
    return seq(b"l", colliding, colliding, colliding)


def _found_by_review() -> Iterator[Case]:
    # Each of these decoded (slowly, or into a broken object) before the bound that now refuses it.
    # 17 keys that share a hash pass the collision check (16 allowed), but comparing a Decimal with a
    # big int converts the int to a Decimal: ints are capped at MAX_INT_BYTES, so at 64 KB the file is
    # refused outright.
    yield _data("decimal-and-64KB-int-keys-sharing-a-hash", _decimals_and_ints_sharing_a_hash(65_000))
    # At the cap each comparison is milliseconds, but 136 of them per set: charged, and refused.
    yield _data(
        "decimal-and-largest-int-keys-sharing-a-hash", _decimals_and_ints_sharing_a_hash(_codec.MAX_INT_BYTES - 16)
    )
    # A tuple DAG (t_i = (t_{i-1}, t_{i-1}), 64 levels in 975 bytes, within MAX_DEPTH) costs 2**64
    # steps to hash (tuples do not cache their hash): refused by the hashing allowance.
    yield _data("tuple-dag-in-set", seq(b"e", tuple_dag(1, 64)))
    yield _data("tuple-dag-as-dict-key", b"d" + u32(1) + tuple_dag(1, 64) + b"N")
    # 13 payload bytes make a ~790-byte deque (empty sets ~50x): refused by the memory allowance.
    n = 600_000
    yield _data("empty-deques-amplify-memory", b"l" + u32(n) + (b"q" + i64(-1) + u32(0)) * n)
    yield _data("empty-sets-amplify-memory", b"l" + u32(n) + (b"e" + u32(0)) * n)
    # Names looked up with getattr(torch, name) could import submodules or call deprecated functions
    # (a warning, under -W error here); packed dtypes decoded into tensors torch cannot convert.
    for dtype in ("onnx", "has_cuda", "uint3", "bits16", "float4_e2m1fn_x2", "qint8"):
        yield _torch(f"torch-dtype-name-{dtype}", tensor(dtype, (1,), inline(b"\x00\x00")))
        yield _torch(f"torch-dtype-value-{dtype}", name(b"W", dtype))
    # torch keeps a device index in an int8: cuda:128 would come back as cuda:-128.
    for device in ("cuda:128", "cpu:200", "cuda:999999"):
        yield _torch(f"torch-device-index-{slug(device)}-wraps", name(b"V", device))
    # An empty array whose other dimensions would make tolist() build 2**40 lists.
    yield _data("empty-array-with-a-huge-extent", array("<f8", (2**40, 0), inline(b"")))
    yield _torch("empty-tensor-with-a-huge-extent", tensor("float32", (2**40, 0), inline(b"")))
    # A '<U' array holding code points above U+10FFFF would raise SystemError on every use.
    yield _data(
        "numpy-str-array-invalid-code-points",
        array("<U1", (2,), inline(b"\xff\xff\xff\xff" + b"\x00\x00\x11\x00")),
    )


CASES: list[Case] = [
    *_pickle_cases(),
    *_malformed(),
    *_lengths_past_the_end(),
    *_huge_counts(),
    *_nesting(),
    *_references(),
    *_type_confusion(),
    *_registered(),
    *_buffers(),
    *_big_numbers(),
    *_collisions_and_duplicates(),
    *_invalid_values(),
    *_found_by_review(),
]
assert len({c.name for c in CASES}) == len(CASES), "case names must be unique"


def _param(case: Case) -> Any:
    marks = [pytest.mark.xfail(strict=True, reason=f"BUG: {case.bug}")] if case.bug else []
    return pytest.param(case, id=case.name, marks=marks)


# -- running the corpus in capped subprocesses ----------------------------------------------------


def _signal_name(returncode: int) -> str:
    if returncode >= 0:
        return f"exit status {returncode}"
    try:
        return f"signal {signal.Signals(-returncode).name}"
    except ValueError:
        return f"signal {-returncode}"


def _run_batch(
    batch: str, cases: list[Case], workdir: pathlib.Path, trusted: bool = False
) -> dict[str, dict[str, Any]]:
    """Run ``cases`` in children until each has a result; a child that dies is blamed on the case it was in.

    Each result records ``exit``: 0 if its child went on to exit cleanly or to die in a later case,
    else how the child ended after it.
    """
    results: dict[str, dict[str, Any]] = {}
    paths = {}
    for i, case in enumerate(cases):
        paths[case.name] = workdir / f"{batch}-{i}.callstate"
        paths[case.name].write_bytes(case.data())
    imports = sorted({m for c in cases for m in c.imports})
    pending = list(cases)
    attempt = 0
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    while pending:
        canary = workdir / f"canary-{batch}-{attempt}"
        canary.mkdir()
        manifest = workdir / f"{batch}-{attempt}.json"
        manifest.write_text(
            json.dumps(
                {
                    "imports": imports,
                    "setup": ["copyreg"] if any(c.codec != "data" for c in pending) else [],
                    "trusted": trusted,
                    "headroom": HEADROOM,
                    "time_cap": TIME_CAP,
                    "cases": [{"name": c.name, "path": str(paths[c.name]), "key": KEY} for c in pending],
                }
            )
        )
        proc = subprocess.run(
            [sys.executable, "-W", "error", str(CHILD), str(manifest)],
            cwd=canary,
            env=env,
            capture_output=True,
            text=True,
            timeout=60 + len(pending) * len(MODES) * (TIME_CAP + 1),
            check=False,
        )
        started = None
        finished = []
        for line in proc.stdout.splitlines():
            message = json.loads(line)
            if "start" in message:
                started = message["start"]
            else:
                finished.append(message["result"]["name"])
                results[finished[-1]] = message["result"]
        stray = sorted(os.listdir(canary))
        died_in_a_case = proc.returncode != 0 and started is not None and started not in results
        for case_name in finished:
            results[case_name]["stray"] = stray  # files left in the directory by any case of this child
            results[case_name]["exit"] = 0 if died_in_a_case else proc.returncode
            results[case_name]["stderr"] = proc.stderr[-3000:]
        if died_in_a_case:
            results[started] = {"death": _signal_name(proc.returncode), "stderr": proc.stderr[-3000:]}
        elif not finished:  # ended before its first case: retrying would end the same way
            for case in pending:
                results[case.name] = {"death": _signal_name(proc.returncode), "stderr": proc.stderr[-3000:]}
        pending = [c for c in pending if c.name not in results]
        attempt += 1
    return results


@pytest.fixture(scope="module")
def outcomes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The child's report for every selected case, batches running two at a time."""
    selected = {
        params["case"].name
        for item in request.session.items
        if isinstance(params := getattr(getattr(item, "callspec", None), "params", {}), dict)
        and isinstance(params.get("case"), Case)
    }
    batches: dict[str, list[Case]] = collections.defaultdict(list)
    for case in CASES:
        if case.name in selected:
            batches[case.batch].append(case)
    workdir = tmp_path_factory.mktemp("hostile")
    results: dict[str, dict[str, Any]] = {}
    # The cases that hang or exhaust memory first, so they overlap the long batches.
    order = sorted(batches, key=lambda b: (not b.startswith("alone-"), -len(batches[b])))
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(_run_batch, b, batches[b], workdir) for b in order]
        for future in futures:
            results.update(future.result())
    return results


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_hostile_payload_is_refused_in_bounded_time_and_memory(case: Case, outcomes: dict[str, dict[str, Any]]) -> None:
    """Each decode of the case raises the expected CallstateError, in time, under the memory cap, running nothing."""
    result = outcomes[case.name]
    assert "death" not in result, f"the child died in this case ({result['death']}):\n{result['stderr']}"
    assert result["exit"] == 0, f"the child ended with {_signal_name(result['exit'])}:\n{result['stderr']}"
    assert result["stderr"] == "", f"the child wrote to stderr:\n{result['stderr']}"
    for mode in MODES:
        outcome, seconds = result["outcomes"][mode], result["times"][mode]
        assert seconds < TIME_CAP, f"{mode} took {seconds:.1f} s"
        if mode == "loads_unclaimed" and not case.container_error:
            # No callback claims the entry: it is kept encoded and never decoded.
            report = {"restored": [], "unexpected": [KEY], "warnings": ["CallstateWarning"]}
            assert outcome == {"type": None, "report": report}, f"{mode}: {outcome}"
            continue
        assert outcome["type"] == case.expected, f"{mode}: {outcome}"
        assert outcome["callstate"], f"{mode}: {outcome}"
        assert not FATAL & set(outcome["chain"]), f"{mode} ran out of memory or stack: {outcome}"
    assert result["canary"] == [] and result["stray"] == [], "a payload ran and left a file"
    assert result["poisoned"] == [], "the process was altered"


def test_the_checks_see_a_payload_that_runs(tmp_path: pathlib.Path) -> None:
    """Decoded trusted, corpus pickles leave canaries, poison classes, exhaust memory and crash: each is seen."""
    wanted = [
        "v2-pickle-os-system", "v2-pickle-copyreg-ext1", "v2-pickle-path-write-text", "v2-pickle-bytearray-3e9",
        "v2-pickle-fraction-slot-state", "v2-pickle-purepath-slot-state", "v2-pickle-nested-tuple-in-set",
    ]
    by_name = {c.name: c for c in CASES}
    results = _run_batch("trusted", [by_name[n] for n in wanted], tmp_path, trusted=True)
    assert "CANARY-system" in results["v2-pickle-os-system"]["canary"]
    assert "CANARY-ext" in results["v2-pickle-copyreg-ext1"]["canary"]
    assert "CANARY-pathlib" in results["v2-pickle-path-write-text"]["canary"]
    assert "MemoryError" in results["v2-pickle-bytearray-3e9"]["outcomes"]["read"]["chain"]
    assert any("Fraction" in p for p in results["v2-pickle-fraction-slot-state"]["poisoned"])
    assert any("PurePath" in p for p in results["v2-pickle-purepath-slot-state"]["poisoned"])
    stack, _hard = resource.getrlimit(resource.RLIMIT_STACK)
    if stack != resource.RLIM_INFINITY and stack <= 64 * 2**20:  # 200,000 C frames do not fit
        assert results["v2-pickle-nested-tuple-in-set"]["death"] == "signal SIGSEGV"


# -- the corpus itself ----------------------------------------------------------------------------


def test_every_corpus_container_is_valid() -> None:
    """Each case's file has a correct header, index and checksums, so only the payload is hostile."""
    for case in CASES:
        data = case.data()
        if case.container_error:
            with pytest.raises(callstate.CorruptCheckpointError):
                callstate.inspect(data)
            continue
        [entry] = callstate.inspect(data)
        assert (entry.key, entry.codec, entry.ok) == (KEY, case.codec, True), case.name
        assert entry.size == sum(map(len, case.parts)), case.name


def test_every_corpus_pickle_is_well_formed() -> None:
    """Each pickle payload is a complete pickle (checked by pickletools, nothing run), so refusing it means something."""
    for label, payload in PICKLES.items():
        opcodes = [op.name for op, _arg, _pos in pickletools.genops(payload)]
        assert opcodes[-1] == "STOP", label
        pickletools.dis(payload, out=io.StringIO())  # checks the stack and memo use too


def test_containers_of_the_builder_decode_when_harmless() -> None:
    """The same builder around harmless payloads gives files that decode: v1 and v2 pickles trusted, data untrusted."""
    harmless = pickle.dumps({"a": [1, 2]}, protocol=4)
    assert callstate.read(container((harmless,), "pickle", version=1), trusted=True) == {KEY: {"a": [1, 2]}}
    assert callstate.read(container((harmless,), "pickle"), trusted=True) == {KEY: {"a": [1, 2]}}
    assert callstate.read(container((harmless,), "cloudpickle"), trusted=True) == {KEY: {"a": [1, 2]}}
    assert callstate.read(container((array("<f8", (1,), part(0)), bytes(8))))[KEY].tolist() == [0.0]
    assert callstate.read(container((seq(b"l", integer(P), text("x")),)))[KEY] == [P, "x"]


def test_near_misses_of_the_corpus_decode() -> None:
    """Payloads just inside the limits the corpus crosses decode quickly: the refusals come from the attack."""
    near_misses: dict[str, bytes] = {
        "ref-chain-98-in-a-list": b"l" + u32(98) + tuple_chain(1, 98, 1),
        "tuple-dag-in-a-list": seq(b"l", tuple_dag(1, 64)),
        "16-keys-sharing-a-hash": b"d" + u32(17) + b"".join(integer(k * P) + b"N" for k in range(17)),
        "nested-lists-100": b"l\x01\x00\x00\x00" * 100 + b"N",
        "fraction-term-under-cap": b"Q" + integer(2 ** (8 * _codec.MAX_FRACTION_BYTES - 9)) + b"j\x03",
        "deque-at-maxlen": b"q" + i64(2) + u32(2) + b"NN",
    }
    for label, stream in near_misses.items():
        started = time.perf_counter()
        decoded = callstate.read(container((stream,)))[KEY]
        assert decoded is not None, label
        assert time.perf_counter() - started < 5, label


# -- found by an adversarial review after the corpus: comparing, not only hashing ----------------------


def _frozenset_twins(k: int, in_set: bool = True, first: int = 1) -> bytes:
    """Two equal chains X_i = {X_i-1, Y_i-1}, Y_i = {X_i-1, Y_i-1, 0} of distinct frozensets, both in one set.

    The list holding them takes memo slot ``first - 1``.
    """
    slot = first
    chains = []
    tops = []
    for _ in range(2):
        out = [seq(b"E", integer(1)), seq(b"E", integer(2))]
        x, y = slot, slot + 1
        slot += 2
        for _ in range(k):
            out.append(seq(b"E", ref(x), ref(y)))
            out.append(seq(b"E", ref(x), ref(y), b"j\x00"))
            x, y = slot, slot + 1
            slot += 2
        chains.append(b"".join(out))
        tops.append(x)
    both = seq(b"e", ref(tops[0]), ref(tops[1])) if in_set else seq(b"l", ref(tops[0]), ref(tops[1]))
    return b"l" + u32(slot - first + 1) + chains[0] + chains[1] + both


def _int_and_decimal_tuple_keys(dicts: int) -> bytes:
    """Tuples of a 4 KiB int and of Decimals with the same hash, used as keys of many small dicts."""
    h = 12345
    base = (1 << 32700) // P * P
    items = [seq(b"t", integer(base + a * P + h)) for a in range(8)]
    items += [seq(b"t", b"m" + text(str(h + b * P))) for b in range(8)]
    items += [b"d" + u32(16) + b"".join(ref(s) + b"N" for s in range(1, 17)) for _ in range(dicts)]
    return b"l" + u32(len(items)) + b"".join(items)


def _fraction_leaf_dag(levels: int) -> bytes:
    big = int.from_bytes(b"\x7f" * 4095 + b"\x01", "little")
    items = [seq(b"t", b"Q" + integer(big) + integer(big + 2))]
    items += [seq(b"t", ref(i), ref(i)) for i in range(1, levels + 1)]
    items.append(b"d" + u32(1) + ref(levels + 1) + b"N")
    return b"l" + u32(len(items)) + b"".join(items)


class _Point(NamedTuple):
    x: Any
    y: Any


def _registered_tuple_dag(levels: int) -> bytes:
    items = [seq(b"t", b"f" + f64(1.5))] + [seq(b"t", ref(i), ref(i)) for i in range(1, levels + 1)]
    items.append(seq(b"e", name(b"U", "test_security.Point") + seq(b"t", ref(levels + 1), b"j\x00")))
    return b"l" + u32(len(items)) + b"".join(items)


class _Alarm(Exception):
    pass


def _within(seconds: int, call: Any) -> Any:
    """Run ``call()``, failing (not hanging) if it takes more than ``seconds``."""

    def ring(signum: int, frame: Any) -> None:
        raise _Alarm

    previous = signal.signal(signal.SIGALRM, ring)
    signal.alarm(seconds)
    try:
        return call()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize(
    "stream",
    [
        _frozenset_twins(90),
        _int_and_decimal_tuple_keys(200),
        _fraction_leaf_dag(18),
    ],
    ids=["equal-frozenset-twins", "int-and-decimal-tuple-keys", "fraction-leaf-tuple-dag"],
)
def test_keys_that_are_slow_to_compare_are_refused_quickly(stream: bytes) -> None:
    """Keys whose comparison (not only hashing) costs their whole expansion are charged and refused within seconds."""
    with pytest.raises(callstate.CorruptCheckpointError, match="more steps than"):
        _within(10, lambda: callstate.read(container((stream,))))


def test_small_versions_of_those_keys_still_decode() -> None:
    """The same shapes at a small size decode: the allowance refuses only what would be slow."""
    h = 12345
    one_pair = b"d" + u32(2) + seq(b"t", integer((1 << 32700) // P * P + h)) + b"N" + seq(b"t", b"m" + text(str(h))) + b"N"
    for stream in (_frozenset_twins(8, in_set=False), one_pair, _fraction_leaf_dag(4)):
        assert _within(10, lambda s=stream: callstate.read(container((s,))))[KEY] is not None


def test_a_registered_tuple_type_as_a_key_is_charged_like_a_tuple() -> None:
    """A registered NamedTuple built from a tuple DAG costs its expansion as a key: refused, not hung."""
    callstate.register_type(_Point, to_data=tuple, from_data=lambda d: _Point(*d), name="test_security.Point")
    try:
        with pytest.raises(callstate.CorruptCheckpointError, match="more steps than"):
            _within(10, lambda: callstate.read(container((_registered_tuple_dag(60),))))
        assert _within(10, lambda: callstate.read(container((_registered_tuple_dag(4),))))[KEY]
    finally:
        callstate.unregister_type(_Point)


# The register_type examples of the docs: (page, the from_data function it defines).
_DOC_FROM_DATA = [
    ("docs/security.md", "interval_from_data"),
    ("docs/security.md", "strict_interval_from_data"),
    ("docs/security.md", "array_from_data"),
    ("docs/guide/files.md", "interval_from_data"),
]

_FROM_DATA_CHILD = r"""
import array, ast, io, json, re, resource, signal, sys, textwrap, time, zlib
import callstate
from callstate._encoding import _format

page, function = sys.argv[1], sys.argv[2]
size = int(re.search(r"^VmSize:\s+(\d+) kB", open("/proc/self/status").read(), re.M).group(1)) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + (1 << 30), resource.getrlimit(resource.RLIMIT_AS)[1]))
signal.alarm(30)
# The page's code blocks (indented ones too); from the one defining the function, its classes and defs.
blocks = re.findall(r"^( *)```python\n(.*?)^\1```", open(page).read(), re.M | re.S)
code = next(textwrap.dedent(b) for _, b in blocks if f"def {function}(" in b)
namespace = {"array": array, "callstate": callstate}
for _, b in blocks:  # the classes it builds (Interval) may be defined in an earlier block
    defs = [n for n in ast.parse(textwrap.dedent(b)).body if isinstance(n, ast.ClassDef)]
    exec(compile(ast.Module(defs, []), page, "exec"), namespace)
defs = [n for n in ast.parse(code).body if isinstance(n, ast.FunctionDef) and n.name == function]
exec(compile(ast.Module(defs, []), page, "exec"), namespace)

class Box:
    pass

callstate.register_type(Box, to_data=lambda b: None, from_data=namespace[function], name="hostile.T")
name = b"hostile.T"
big = (10**10).to_bytes(8, "little", signed=True)
stream = b"U" + bytes([len(name)]) + name + b"G" + b"j\x00" + b"i" + big + b"j\x01"  # range(0, 10**10, 1)
out = io.BytesIO()
_format.write_container(out, [("k", "data", (stream,), zlib.crc32(stream), {})], {})
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
try:
    callstate.read(out.getvalue())
    result = {"error": None}
except BaseException as exc:
    chain, seen = [], exc
    while seen is not None:
        chain.append(type(seen).__name__)
        seen = seen.__cause__ or seen.__context__
    result = {"error": type(exc).__name__, "chain": chain}
result["seconds"] = time.perf_counter() - started
result["grown_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
result["size"] = len(out.getvalue())
print(json.dumps(result))
"""


@pytest.mark.slow
@pytest.mark.parametrize(("page", "function"), _DOC_FROM_DATA)
def test_the_docs_from_data_refuse_a_huge_range_quickly(page: str, function: str) -> None:
    """A small file holding range(10**10) under a docs example's registered name is refused by its from_data, at once, in little memory."""
    root = pathlib.Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-c", _FROM_DATA_CHILD, page, function],
        capture_output=True, text=True, timeout=120, cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["size"] < 200
    assert result["error"] == "CorruptCheckpointError", result
    assert "MemoryError" not in result["chain"] and result["chain"][-1] in ("ValueError", "TypeError"), result
    assert result["seconds"] < 2 and result["grown_kb"] < 64 * 1024, result


def test_a_stateful_restore_error_does_not_repr_a_huge_key() -> None:
    """A generated load_state_dict names unknown fields without walking them (a frozenset chain's repr is 2**60 steps)."""

    @callstate.stateful(state=("chain",))
    class Chained:
        def __init__(self) -> None:
            self.chain: Any = None

    # {"chain": [...], X_60: None}: the frozenset chain hashes cheaply (cached) but prints forever.
    chain = _frozenset_twins(60, in_set=False, first=2)  # the dict is slot 0, the chain's list 1
    top = 2 * 60 + 2  # the slot of X_60 in the first chain
    stream = b"d" + u32(2) + text("chain") + chain + ref(top) + b"N"
    registry = callstate.CallbackRegistry()
    registry.register(Chained(), key=KEY)
    with pytest.raises(callstate.RestoreError) as e:
        _within(10, lambda: callstate.loads(registry, container((stream,))))
    assert "<a frozenset>" in str(e.value.__cause__)


# -- plain states never touch pickle --------------------------------------------------------------


class PickleUsed(Exception):
    """Raised by the stand-ins for pickle's loaders."""


def _no_pickle(*args: Any, **kwargs: Any) -> Any:
    raise PickleUsed


class Holder:
    """A callback that claims one key and keeps the state it is given."""

    def __init__(self, key: str) -> None:
        self.state_key = key
        self.state: Any = None

    def state_dict(self) -> Any:
        return {}

    def load_state_dict(self, state: Any) -> None:
        self.state = state


def _plain_states() -> dict[str, Any]:
    shared = [1, 2]
    tz = datetime.timezone(datetime.timedelta(hours=5, minutes=30), "IST")
    return {
        "scalars": {
            "none": None, "bools": [True, False], "ints": [0, 255, -1, 2**63, -(2**200)], "floats": [-0.0, 1e308],
            "complex": 1 - 2j, "str": "é" * 2000, "bytes": b"\x00" * 2000, "bytearray": bytearray(b"ab"),
        },
        "containers": [
            (1, (2, "3")), {1, 2.5, "x"}, frozenset({(1, 2)}), {1: "int key", (2, 3): "tuple key"},
            collections.OrderedDict(b=1, a=2), collections.Counter("abracadabra"),
            collections.defaultdict(list, {"x": [1]}), collections.deque([1, 2], maxlen=5),
            range(1, 10, 3), slice(1, None, 2), [0.5] * 10, list(range(20)),
        ],
        "stdlib": {
            "datetime": datetime.datetime(2024, 2, 29, 23, 59, 59, 999_999, tz, fold=1),
            "date": datetime.date(1, 1, 1), "time": datetime.time(12, 0, tzinfo=datetime.timezone.utc),
            "timedelta": datetime.timedelta(days=-3, microseconds=7), "decimal": decimal.Decimal("-1.10E+5"),
            "fraction": fractions.Fraction(-22, 7), "uuid": uuid.UUID(int=2**127 + 5),
            "paths": [pathlib.PurePosixPath("a/b"), pathlib.PureWindowsPath("C:/x"), pathlib.PosixPath("/tmp")],
        },
        "numpy": {
            "ints": np.arange(6, dtype="<i4").reshape(2, 3), "fortran": np.asfortranarray(np.ones((3, 4))),
            "out-of-band": np.arange(20_000, dtype=">f8"), "bools": np.array([True, False]),
            "datetimes": np.array(["2024-01-01"], dtype="M8[D]"), "strs": np.array(["ab", "c"]),
            "scalar": np.float32(1.5), "dtype": np.dtype(">u2"),
        },
        "torch": {
            "floats": torch.arange(6.0).reshape(2, 3), "out-of-band": torch.arange(40_000, dtype=torch.int32),
            "parameter": torch.nn.Parameter(torch.ones(2)), "grad": torch.ones(2, requires_grad=True),
            "bfloat16": torch.ones(3, dtype=torch.bfloat16), "bools": torch.tensor([True, False]),
            "size": torch.Size([2, 3]), "device": torch.device("cpu"), "dtype": torch.float16,
        },
        "shared": [shared, shared],
    }


def test_plain_states_load_with_every_pickle_loader_made_to_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    """A version 2 file of plain states loads through read, lazy read and loads while no unpickler can run."""
    states = _plain_states()
    data = callstate.dumps(states)
    assert {e.codec for e in callstate.inspect(data)} == {"data"}
    for module in (pickle, _pickle, cloudpickle):
        for attr in ("Unpickler", "loads", "load"):
            if hasattr(module, attr):
                monkeypatch.setattr(module, attr, _no_pickle)
    # The stand-ins are the ones callstate would reach: a pickled entry now fails through them.
    with pytest.raises(callstate.CorruptCheckpointError) as refused:
        callstate.read(container((pickle.dumps(1),), "pickle"), trusted=True)
    assert isinstance(refused.value.__context__, PickleUsed)

    decoded = callstate.read(data)
    lazy = {key: state.decode() for key, state in callstate.read(data, lazy=True).items()}
    holders = [Holder(key) for key in states]
    report = callstate.loads(holders, data, strict=True)
    assert sorted(report.restored) == sorted(states)
    for key, state in states.items():
        assert same(state, decoded[key]), key
        assert same(state, lazy[key]), key
        assert same(state, holders[list(states).index(key)].state), key
    assert decoded["shared"][0] is decoded["shared"][1]
