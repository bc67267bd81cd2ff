"""Write the seed corpus of fuzz/fuzz_read.py into fuzz/corpus/ (deterministic; rerun to refresh).

Three kinds of seeds, named by prefix, matching the ways fuzz_read.py reads an input:

- ``raw-*``: whole callstate files from ``callstate.dumps`` (first byte 0x89);
- ``payload-*``: a mode byte (the number of out-of-band buffers), then an entry's payload stream
  and its out-of-band buffers joined by fuzz_read.SEP: the target wraps them with correct CRCs;
- ``index-*``: mode byte 0x31 (or 0x30), a version byte, a file's entries region, SEP, its index
  JSON: the target adds the header and footer with correct CRCs;
- ``repro-*``: inputs that made the fuzzer fail (kept as regression seeds; see REPRODUCERS).

It also writes the seeds of fuzz/fuzz_torch.py into fuzz/corpus_torch/ (OUT_DIR_torch when OUT_DIR
is given), if torch is installed: ``pkl-*``, a mode byte 0 then the ``data.pkl`` of a torch.save
(the target zips it); ``file-*``, a mode byte 1 then a whole torch.save file; ``hostile-*``,
pickles that once hung or exhausted the pre-scan.

Usage: ``.venv/bin/python fuzz/make_corpus.py [OUT_DIR]`` (default: fuzz/corpus next to this file).
Files of the first three kinds are rewritten; other files in OUT_DIR are left alone.
"""

from __future__ import annotations

import collections
import datetime
import decimal
import fractions
import hashlib
import math
import os
import pathlib
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import fuzz_types

import callstate
from callstate._encoding import _encoder as _codec  # its Encoder reads OUT_OF_BAND_MIN there, set below
from callstate._encoding import _format

SEP = b"\xffOOB"  # as in fuzz_read.py (not imported: that module imports and sets up atheris)
PREFIXES = ("raw-", "payload-", "index-", "repro-")
TORCH_PREFIXES = ("pkl-", "file-", "hostile-")
MAX_TOTAL = 300_000  # bytes: the corpus stays small

try:
    import numpy as np
except ImportError:
    np = None  # type: ignore[assignment]
try:
    import torch
except ImportError:
    torch = None  # type: ignore[assignment]


def _states() -> Iterator[tuple[str, Any]]:
    """(name, state) pairs: each kind of value the data codec writes, alone and mixed."""
    yield "empty-dict", {}
    yield "none-bools", [None, True, False]
    yield "ints", [0, 1, 255, 256, -1, 2**63 - 1, -(2**63), 2**63, -(2**64) - 1]
    yield "big-ints", [2**200, -(3**150), 1 << 4000]
    yield "floats", [0.0, -0.0, 1.5, math.inf, -math.inf, math.nan, 5e-324, 1.7976931348623157e308]
    yield "complex", [1 + 2j, complex(math.nan, -0.0)]
    yield "strs", ["", "a", "é€😀", "\ud800", "x" * 1024]
    yield "bytes", [b"", b"\x00\xff", b"b" * 1024, bytearray(b"ba")]
    yield "packed-floats", [i / 7 for i in range(12)]
    yield "packed-ints", list(range(-5, 10))
    yield "list-nested", [[1, [2, [3, [4, []]]]], ["a", ("b",)]]
    yield "tuples", [(), (1,), (1, "a", (2.5, None))]
    yield "sets", [set(), {1, 2, 3}, {"a", "b"}, frozenset({(1, 2), 3.5}), frozenset()]
    yield "dicts", {"a": 1, 2: "b", (1, 2): [3], None: {}, 2.5: frozenset({1}), True: False}
    yield (
        "ordered-counter",
        [collections.OrderedDict([("b", 1), ("a", 2)]), collections.Counter("abracadabra")],
    )
    yield (
        "defaultdicts",
        [
            collections.defaultdict(list, {"a": [1]}),
            collections.defaultdict(int),
            collections.defaultdict(None, {1: 2}),
        ],
    )
    yield (
        "deques",
        [collections.deque([1, 2, 3]), collections.deque([1], maxlen=2), collections.deque(maxlen=0)],
    )
    yield (
        "datetimes",
        [
            datetime.datetime(2024, 2, 29, 23, 59, 59, 999999),
            datetime.datetime(2021, 11, 7, 1, 30, fold=1),
            datetime.datetime(1, 1, 1, tzinfo=datetime.timezone.utc),
            datetime.datetime(
                9999, 12, 31, tzinfo=datetime.timezone(-datetime.timedelta(hours=23, minutes=59))
            ),
            datetime.date(2000, 1, 1),
            datetime.time(
                12, 30, 15, 7, tzinfo=datetime.timezone(datetime.timedelta(hours=5, minutes=30), "IST")
            ),
            datetime.time(0),
            datetime.timedelta(days=-3, seconds=5, microseconds=7),
            datetime.timezone(datetime.timedelta(0)),
        ],
    )
    yield (
        "decimals",
        [
            decimal.Decimal("1.10"),
            decimal.Decimal("-0"),
            decimal.Decimal("NaN"),
            decimal.Decimal("sNaN123"),
            decimal.Decimal("-Infinity"),
            decimal.Decimal("1E+999"),
        ],
    )
    yield "fractions", [fractions.Fraction(1, 3), fractions.Fraction(-7, 2**70), fractions.Fraction(0)]
    yield (
        "uuid-paths",
        [
            uuid.UUID(int=0x1234),
            pathlib.PurePosixPath("/a/b"),
            pathlib.PureWindowsPath("C:\\x\\y"),
            pathlib.PosixPath("rel/p"),
        ],
    )
    yield (
        "ranges-slices",
        [
            range(10),
            range(-5, 100, 7),
            range(2**70, 0, -(2**65)),
            slice(None),
            slice(1, -1, 2),
            slice(None, 2**80, None),
        ],
    )
    shared = [1, 2]
    yield "shared", {"a": shared, "b": shared, "t": (shared, shared), "s": "long" * 300, "s2": "long" * 300}
    cycle: list[Any] = [1]
    cycle.append(cycle)
    d: dict[str, Any] = {}
    d["self"] = d
    yield "cycles", [cycle, d]
    dag: Any = None
    for _ in range(6):
        dag = (dag, dag)
    yield "tuple-dag", [dag]
    for _ in range(4):
        dag = (dag, dag)
    yield "tuple-dag-hashed", [{dag}, {dag: 1}, frozenset({dag})]  # hashed: a set element, a key
    yield "deep", _deep(90)
    yield (
        "registered",
        [fuzz_types.Point(1, 2), fuzz_types.Box({"k": [fuzz_types.Point(0.5, "y")]}), fuzz_types.Box(None)],
    )
    p = fuzz_types.Point(3, 4)
    yield "registered-shared", {"p": p, "q": p, "in-set": {fuzz_types.Point(1, 1)}}
    yield (
        "callback-like",
        {
            "best": 0.25,
            "wait": 3,
            "patience": 5,
            "history": [0.5, 0.4, 0.3, 0.25, 0.3, 0.31, 0.29, 0.28],
            "mode": "min",
            "when": datetime.datetime(2024, 5, 1, 12),
        },
    )
    if np is not None:
        yield (
            "numpy",
            [
                np.arange(6, dtype="<i4").reshape(2, 3),
                np.asfortranarray(np.arange(12, dtype="<f8").reshape(3, 4)),
                np.array([True, False]),
                np.array([1 + 2j], dtype="<c8"),
                np.array(["ab", "c"]),
                np.array([b"x", b"yz"]),
                np.array(["2024-01-01"], dtype="<M8[D]"),
                np.array([5], dtype="<m8[ns]"),
                np.array(3.5, dtype=">f8"),
                np.empty((0, 3), dtype="<f4"),
                np.zeros((2, 0, 2), dtype="|u1"),
            ],
        )
        yield (
            "numpy-scalars-dtypes",
            [
                np.float32(1.5),
                np.int8(-3),
                np.bool_(True),
                np.datetime64(1, "s"),
                np.dtype("<u2"),
                np.dtype("|S4"),
                np.str_("u"),
            ],
        )
        arr = np.arange(4, dtype="<i2")
        yield "numpy-shared", {"a": arr, "b": arr}
    if torch is not None:
        yield (
            "torch",
            [
                torch.arange(6, dtype=torch.float32).reshape(2, 3),
                torch.tensor([1, 2], dtype=torch.int64),
                torch.tensor([True, False]),
                torch.tensor([1.5], dtype=torch.bfloat16),
                torch.tensor([1 + 1j], dtype=torch.complex64),
                torch.empty(0, 2, dtype=torch.float16),
                torch.nn.Parameter(torch.ones(2)),
                torch.nn.Parameter(torch.zeros(1), requires_grad=False),
                torch.ones(1, requires_grad=True),
            ],
        )
        yield (
            "torch-meta",
            [
                torch.Size([2, 3]),
                torch.Size([]),
                torch.device("cpu"),
                torch.device("cuda", 1),
                torch.float64,
                torch.uint8,
                torch.bool,
            ],
        )


def _deep(levels: int) -> Any:
    value: Any = "leaf"
    for i in range(levels):
        value = [value] if i % 2 else {"k": value}
    return value


def _files() -> Iterator[tuple[str, bytes]]:
    """(file name, content) of every seed except the reproducers."""
    fuzz_types.register()
    for name, state in _states():
        data = callstate.dumps({"state": state})
        yield f"raw-{name}", data
        yield from _payload_seeds(name, data)
    # Out-of-band buffers: one real file with a >= 64 KiB array (the only large seed), and small
    # buffers written out of band by lowering the threshold for this process (so seeds stay small).
    if np is not None:
        data = callstate.dumps({"big": np.arange(1 << 16, dtype="|u1"), "small": [1]})
        yield "raw-numpy-out-of-band-64k", data
    saved = _codec.OUT_OF_BAND_MIN
    _codec.OUT_OF_BAND_MIN = 8
    try:
        if np is not None:
            data = callstate.dumps(
                {"s": [np.arange(4, dtype="<f8"), np.ones((2, 2), "<i4"), np.arange(3, dtype="|u1")]}
            )
            yield "raw-numpy-out-of-band-small", data
            yield from _payload_seeds("numpy-out-of-band", data)
        if torch is not None:
            data = callstate.dumps({"s": {"w": torch.ones(3), "b": torch.arange(4, dtype=torch.int16)}})
            yield "raw-torch-out-of-band-small", data
            yield from _payload_seeds("torch-out-of-band", data)
    finally:
        _codec.OUT_OF_BAND_MIN = saved
    # Multi-entry files, with meta and (from pickled states) info: raw and as index seeds.
    multi = callstate.dumps(
        {"EarlyStopping{'monitor': 'loss'}": {"best": 0.1, "wait": 2}, "Timer": {"t": 1.5}, "empty": {}},
        meta={"epoch": 3, "note": "x"},
    )
    yield "raw-multi-entry", multi
    yield from _index_seeds("multi-entry", multi)
    yield from _index_seeds("one-entry", callstate.dumps({"k": [1, 2, 3]}))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", callstate.PickledStateWarning)
        pickled = callstate.dumps({"p": {"obj": _Unregistered()}, "d": [1]})
    yield "raw-pickled-entry", pickled  # refused without trusted=True (the fuzzer never trusts)
    yield from _index_seeds("pickled-entry", pickled)
    if np is not None:
        saved = _codec.OUT_OF_BAND_MIN
        _codec.OUT_OF_BAND_MIN = 8
        try:
            oob = callstate.dumps({"a": np.arange(3, dtype="<i8"), "b": "x"})
        finally:
            _codec.OUT_OF_BAND_MIN = saved
        yield from _index_seeds("out-of-band", oob)
    golden = pathlib.Path(__file__).resolve().parent.parent / "tests" / "golden" / "v1"
    for path in sorted(golden.glob("*"))[:2] if golden.is_dir() else []:  # version 1 files, if any
        content = path.read_bytes()
        if content[:8] == _format.MAGIC and len(content) < 4096:
            yield f"raw-golden-v1-{path.stem}", content


class _Unregistered:
    """A class the data codec does not write: saved with pickle (as the file format allows)."""


def _entries(data: bytes) -> list[_format.RawEntry]:
    entries, _meta = _format.parse(memoryview(data), "<seed>")
    return entries


def _payload_seeds(name: str, data: bytes) -> Iterator[tuple[str, bytes]]:
    for i, entry in enumerate(_entries(data)):
        parts = [bytes(p) for p in entry.parts]
        if entry.codec != "data" or any(SEP in p for p in parts) or len(parts) > 8:
            continue
        suffix = f"-{i}" if i else ""
        yield f"payload-{name}{suffix}", bytes([len(parts) - 1]) + SEP.join(parts)


def _index_seeds(name: str, data: bytes) -> Iterator[tuple[str, bytes]]:
    view = memoryview(data)
    footer = _format.FOOTER.unpack(view[-_format.FOOTER.size :])
    index_offset, index_len = footer[0], footer[1]
    region = data[_format.HEADER.size : index_offset]
    index = data[index_offset : index_offset + index_len]
    if SEP in region or SEP in index:
        return
    version = _format.HEADER.unpack(view[: _format.HEADER.size])[1]
    yield f"index-{name}", bytes([0x31, version]) + region + SEP + index
    yield f"index-{name}-nofix", bytes([0x30, version]) + region + SEP + index


def _tuple_dag(levels: int) -> bytes:
    """The payload of ``[t]``, ``t`` a tuple DAG ``levels`` deep (each level pairs the one below)."""
    dag: Any = None
    for _ in range(levels):
        dag = (dag, dag)
    stream = _codec.Encoder().encode([dag])[0]
    assert isinstance(stream, bytes) and stream[:1] == b"l"
    return stream


def _u64(n: int) -> bytes:
    return n.to_bytes(8, "little")


# Inputs that made fuzz_read.py fail, found at commit 4b9dc76 (each a fuzz input: a mode byte 0,
# then a payload stream).
REPRODUCERS: list[tuple[str, bytes]] = [
    # A numpy str scalar whose UCS-4 item is U+110000: numpy raises SystemError ("invalid maximum
    # character passed to PyUnicode_New"), hidden in a CorruptCheckpointError.
    (
        "repro-numpy-str-scalar-code-point",
        b"\x00" + b"n\x03<U1" + (4).to_bytes(4, "little") + b"\x00\x00\x11\x00",
    ),
    # The same item in a str array: it decodes, and any use of the array (repr, [0], tolist())
    # raises SystemError in the caller's code.
    (
        "repro-numpy-str-array-code-point",
        b"\x00" + b"A\x03<U1" + b"\x01" + _u64(1) + b"\x00" + b"\x00" + _u64(4) + b"\x00\x00\x11\x00",
    ),
    # A 40-level tuple DAG (403 bytes) as a set element, a dict key and a frozenset element:
    # hashing it walks 2**40 paths (tuple hashes are not cached), a hang.
    ("repro-tuple-dag-set", b"\x00e" + _tuple_dag(40)[1:]),
    ("repro-tuple-dag-frozenset", b"\x00E" + _tuple_dag(40)[1:]),
    ("repro-tuple-dag-dict-key", b"\x00d\x01\x00\x00\x00" + _tuple_dag(40)[5:] + b"N"),
]


def _torch_seeds() -> Iterator[tuple[str, bytes]]:
    """Seeds of fuzz_torch.py: torch.save files and their pickles, and hostile pickles."""
    import io
    import zipfile

    states: dict[str, Any] = {
        "loop": {"callbacks": {"EarlyStopping": {"wait": 3, "best": 0.5}, "callstate:versions": {}}},
        "tensors": {"callbacks": {"EMA": {"shadow": torch.zeros(4), "n": 3}}, "w": torch.ones(2, 2)},
        "mixed": {"callbacks": {(1, "a"): [1.5, None, b"x", {"k": (2, 3)}], "s": {"x": frozenset({1})}}},
        "lightning-class-key": {"callbacks": {collections.OrderedDict: {"a": torch.arange(3)}}},
    }
    for name, state in states.items():
        buf = io.BytesIO()
        torch.save(state, buf)
        data = buf.getvalue()
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            pkl = next(zf.read(n) for n in zf.namelist() if n.endswith("/data.pkl"))
        yield f"pkl-{name}", b"\x00" + pkl
        yield f"file-{name}", b"\x01" + data
    head = b"\x80\x02}X\x09\x00\x00\x00callbacks}"
    dag = b")q\x00" + b"".join(b"h" + bytes([i]) + b"\x86q" + bytes([i + 1]) for i in range(40))
    yield "hostile-shared-tuple-key", b"\x00" + head + dag + b"K\x01ss."
    yield "hostile-empty-set-flood", b"\x00\x80\x02(" + b"\x8f" * 2000 + b"l."
    yield "hostile-global-flood", b"\x00\x80\x02(" + b"".join(b"cm\nG%d\n" % i for i in range(300)) + b"l."


def _write_torch_corpus(out: pathlib.Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        if old.name.startswith(TORCH_PREFIXES):
            old.unlink()
    total = 0
    for name, content in _torch_seeds():
        (out / f"{name}.bin").write_bytes(content)
        total += len(content)
    print(f"torch seeds: {total} bytes, in {os.path.relpath(out)}")


def main() -> int:
    if os.environ.get("PYTHONHASHSEED") != "0":
        # str hashes are salted per process, so a set of strs is written in another order each
        # run: re-run with a fixed seed, so the corpus is the same bytes every time.
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "PYTHONHASHSEED": "0"})
    out = (
        pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parent / "corpus"
    )
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        if old.name.startswith(PREFIXES):
            old.unlink()
    seen: dict[str, str] = {}
    total = 0
    for name, content in [*_files(), *REPRODUCERS]:
        digest = hashlib.sha1(content).hexdigest()
        if digest in seen:
            continue  # libFuzzer would only run it twice
        seen[digest] = name
        (out / f"{name}.bin").write_bytes(content)
        total += len(content)
    print(f"{len(seen)} seeds, {total} bytes, in {os.path.relpath(out)}")
    if total > MAX_TOTAL:
        print(f"the corpus is over {MAX_TOTAL} bytes: drop large seeds", file=sys.stderr)
        return 1
    if torch is not None:
        _write_torch_corpus(out.with_name(out.name + "_torch"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
