"""The on-disk format: golden files, and corruption of every kind detected, never decoded."""

from __future__ import annotations

import contextlib
import io
import pathlib
import random
import struct
import sys
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import callstate
from callstate._encoding import _codec, _format

GOLDEN = pathlib.Path(__file__).parent / "golden"
sys.path.insert(0, str(GOLDEN))
import golden_states  # noqa: E402
from exact import same  # noqa: E402

GOLDEN_FILES = sorted(p for p in GOLDEN.glob("v*/*.callstate"))

# The core suite runs with neither: the golden states (arrays and tensors) are then not built, and
# real_file() is plain states only (no part out of band).
try:
    import numpy as np
    import torch
except ImportError:
    np = torch = None
# golden_states.files() builds arrays and tensors, for every version.
needs_golden_states = pytest.mark.needs("numpy", "torch")


@needs_golden_states
def test_golden_files_exist_for_the_current_version() -> None:
    """Every format version up to the current one has its golden files committed."""
    for version in range(1, _format.VERSION + 1):
        assert sorted(p.stem for p in (GOLDEN / f"v{version}").glob("*.callstate")) == sorted(
            golden_states.files(version)
        )


def _version(path: pathlib.Path) -> int:
    return int(path.parent.name.removeprefix("v"))


@needs_golden_states
@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_golden_file_loads_exactly(path: pathlib.Path) -> None:
    """Each golden file still reads back to exactly its states: version 1 when trusted, version 2 always."""
    golden_states.register_interval()
    expected = golden_states.files(_version(path))[path.stem]
    got = callstate.read(path, trusted=_version(path) == 1)
    assert same(got, expected), (got, expected)
    assert all(info.ok for info in callstate.inspect(path))


@pytest.mark.parametrize("path", [p for p in GOLDEN_FILES if p.parent.name == "v1" and p.stem != "empty"])
def test_golden_version_1_file_needs_trusted_and_says_how_to_convert(path: pathlib.Path) -> None:
    """Version 1 states are pickles: an untrusted read runs none of them and says how to move to version 2."""
    with pytest.raises(callstate.UnsafeCheckpointError, match=r"format version 1.*trusted=True.*version 2"):
        callstate.read(path)


@needs_golden_states
def test_golden_version_1_file_converts_to_version_2(tmp_path: pathlib.Path) -> None:
    """The conversion the error message gives writes a version 2 file that reads back untrusted, exactly."""
    path = tmp_path / "arrays.callstate"
    path.write_bytes((GOLDEN / "v1" / "arrays.callstate").read_bytes())
    callstate.save(callstate.read(path, trusted=True), path)
    assert path.read_bytes()[8:10] == struct.pack("<H", 2)
    assert [i.codec for i in callstate.inspect(path)] == ["data"]
    assert same(callstate.read(path), golden_states.files(1)["arrays"])


def real_file() -> bytes:
    """A small file with plain, array and tensor entries, some buffers out of band (plain ones only without numpy and torch)."""
    if np is None:
        return callstate.dumps(
            {"Counter{'what': 'epochs'}": {"epochs": 2, "batches": 0}, "EMA": {"w": [0.5] * 20, "n": 3}, "Big": {"a": b"x" * 1000}}
        )
    return callstate.dumps(
        {
            "Counter{'what': 'epochs'}": {"epochs": 2, "batches": 0},
            "EMA": {"w": np.arange(20, dtype=np.float32), "t": torch.ones(3)},
            "Big": {"a": np.arange(_codec.OUT_OF_BAND_MIN // 8 + 1, dtype=np.float64)},
        }
    )


def small_file() -> bytes:
    """A file small enough to fuzz byte by byte."""
    return callstate.dumps(
        {"Counter{'what': 'epochs'}": {"epochs": 2, "batches": 0}, "EMA": {"w": [0.5, 1.5], "n": 3}}
    )


def test_every_truncation_is_corrupt() -> None:
    """Every proper prefix of a real file raises CorruptCheckpointError."""
    data = small_file()
    for n in range(len(data)):
        with pytest.raises(callstate.CorruptCheckpointError):
            callstate.read(data[:n])


def test_truncation_of_a_file_on_disk_names_the_file(tmp_path: pathlib.Path) -> None:
    """A truncated file on disk raises CorruptCheckpointError naming the path."""
    path = tmp_path / "t.callstate"
    path.write_bytes(real_file()[:-7])
    with pytest.raises(callstate.CorruptCheckpointError, match=str(path)) as e:
        callstate.load([], path)
    assert e.value.path == str(path)
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("extra", [b"\x00", b"garbage", real_file()[:40]])
def test_trailing_garbage_is_corrupt(extra: bytes) -> None:
    """Bytes appended after a complete file raise CorruptCheckpointError."""
    with pytest.raises(callstate.CorruptCheckpointError, match=r"trailing|truncated|size"):
        callstate.read(small_file() + extra)


@pytest.mark.slow
def test_ten_thousand_random_bit_flips_are_corrupt() -> None:
    """10,000 random single-bit flips anywhere in a real file each raise CorruptCheckpointError."""
    data = real_file()
    rng = random.Random(20261128)
    for _ in range(10_000):
        bit = rng.randrange(len(data) * 8)
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(callstate.CorruptCheckpointError):
            callstate.read(bytes(flipped))


def test_every_bit_flip_of_a_small_file_is_corrupt() -> None:
    """Flipping any single bit of a small file, exhaustively, raises CorruptCheckpointError."""
    data = small_file()
    for bit in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(callstate.CorruptCheckpointError):
            callstate.read(bytes(flipped))


def test_bit_flip_in_a_payload_names_the_entry() -> None:
    """A flipped bit inside an entry's payload names that entry."""
    data = bytearray(small_file())
    data[_format.HEADER.size + 5] ^= 0x10
    with pytest.raises(callstate.CorruptCheckpointError, match=r"entry \"Counter\{'what': 'epochs'\}\"") as e:
        callstate.read(bytes(data))
    assert e.value.key == "Counter{'what': 'epochs'}"


def _with_index(index: bytes, body: bytes = b"") -> bytes:
    """A file with valid header and footer checksums around an arbitrary index."""
    out = io.BytesIO()
    out.write(_format._header())
    out.write(body)
    offset = _format.HEADER.size + len(body)
    foot = struct.pack("<QQI", offset, len(index), zlib.crc32(index))
    out.write(index)
    out.write(foot + struct.pack("<I", zlib.crc32(foot)) + _format.END_MAGIC)
    return out.getvalue()


@pytest.mark.parametrize(
    "index",
    [
        b"not json",
        b"[]",
        b'{"entries": 5}',
        b'{"entries": [["k", "data", 16, [5], 0, 9]]}',
        b'{"entries": [["k", "data", 16, [2], 0]]}',
        b'{"entries": [["k", "data", 16, [2], 0, {}, 1]]}',
        b'{"entries": [["k", "data", 16, [2], 0, {"a": 1}]]}',
        b'{"entries": [["k", "data", 16, [2], 0, {"a": "%s"}]]}' % (b"x" * 2000),
        b'{"entries": [[1, "data", 16, [0], 0, {}]]}',
        b'{"entries": [["k", "zip", 16, [0], 0, {}]]}',
        b'{"entries": [["k", "data", 16, [99999999999], 0, {}]]}',
        b'{"entries": [["k", "data", 0, [4], 0, {}]]}',
        b'{"entries": [["k", "data", 16, [-1], 0, {}]]}',
        b'{"entries": [["k", "data", 16, [], 0, {}]]}',
        b'{"entries": [["k", "data", 16, [1], 0, {}], ["k", "data", 17, [1], 0, {}]]}',
        b'{"entries": [], "meta": []}',
        b"[" * 100_000,
    ],
)
def test_crafted_index_with_valid_checksums_is_corrupt(index: bytes) -> None:
    """An index that passes its checksum but is malformed, out of bounds or absurd is rejected."""
    with pytest.raises(callstate.CorruptCheckpointError):
        callstate.read(_with_index(index, body=b"ab"))


def test_declared_sizes_are_capped_before_allocating() -> None:
    """A part size far beyond the file is rejected without allocating it."""
    index = b'{"entries": [["k", "data", 16, [1099511627776], 0, {}]]}'
    with pytest.raises(callstate.CorruptCheckpointError, match="outside the file"):
        callstate.read(_with_index(index))


@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_callstate_errors(data: bytes) -> None:
    """Any byte string given to read/loads raises only CallstateError subclasses, or decodes."""
    for candidate in (data, _format.MAGIC + data, _format._header() + data):
        with contextlib.suppress(callstate.CallstateError):
            callstate.read(candidate)
        with contextlib.suppress(callstate.CallstateError):
            callstate.loads([], candidate)


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_arbitrary_payload_with_valid_checksums_raises_only_callstate_errors(payload: bytes) -> None:
    """A checksummed entry holding arbitrary bytes decodes or raises a CallstateError, for every codec."""
    for codec in ("data", "pickle"):
        out = io.BytesIO()
        _format.write_container(out, [("k", codec, (payload,), zlib.crc32(payload), {})], {})
        with contextlib.suppress(callstate.CallstateError):
            callstate.read(out.getvalue())


@pytest.mark.parametrize(
    "payload",
    [
        b"(" * 200_000 + b".",  # a huge MARK stack
        b"\x80\x05\x8d" + struct.pack("<Q", 1 << 40) + b".",  # BINUNICODE8 with a huge size
        b"\x80\x05\x8e" + struct.pack("<Q", 1 << 40) + b".",  # BINBYTES8 with a huge size
        b"\x80\x05\x96" + struct.pack("<Q", 1 << 40) + b".",  # BYTEARRAY8 with a huge size
        b"\x80\x05\x97.",  # NEXT_BUFFER with no buffer
        b"\x80\x05h\x07.",  # BINGET of a missing memo entry
    ],
)
def test_hostile_pickles_are_never_unpickled_untrusted_and_corrupt_when_trusted(payload: bytes) -> None:
    """Pickles built to exhaust memory or recursion: untrusted, refused unread; trusted, CorruptCheckpointError."""
    out = io.BytesIO()
    _format.write_container(out, [("k", "pickle", (payload,), zlib.crc32(payload), {})], {})
    with pytest.raises(callstate.UnsafeCheckpointError, match="nothing was run"):
        callstate.read(out.getvalue())
    with pytest.raises(callstate.CorruptCheckpointError, match="does not decode"):
        callstate.read(out.getvalue(), trusted=True)
