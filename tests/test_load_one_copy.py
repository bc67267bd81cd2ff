"""Large buffers are read once, into the memory their arrays own, and checked as they are read."""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import pytest
import torch

import callstate
from callstate._encoding import _parts


@callstate.stateful(state=("shadow", "mask", "tensor"))
class EMA:
    """A callback holding large arrays."""

    def __init__(self) -> None:
        self.shadow = np.zeros(0, dtype=np.float32)
        self.mask = np.zeros(0, dtype=bool)
        self.tensor = torch.zeros(0)


def large_state() -> dict[str, object]:
    return {
        "shadow": np.arange(3 << 20, dtype=np.float32),  # 12 MB
        "mask": np.arange(3 << 20) % 3 == 0,  # a 3 MB bool array: each byte checked to be 0 or 1
        "tensor": torch.arange(1 << 20, dtype=torch.float64),
    }


@pytest.mark.parametrize("source", ["path", "bytes"])
def test_large_buffers_come_back_exact_owned_and_writable(tmp_path: Path, source: str) -> None:
    """Loaded from a file or from bytes, large arrays and tensors are exact, writable, and live in memory of their own."""
    path = tmp_path / "a.callstate"
    callstate.save({"EMA": large_state()}, path)
    ema = EMA()
    if source == "path":
        callstate.load([ema], path)
    else:
        callstate.loads([ema], path.read_bytes())
    expected = large_state()
    assert (ema.shadow == expected["shadow"]).all() and (ema.mask == expected["mask"]).all()
    assert torch.equal(ema.tensor, expected["tensor"])  # type: ignore[arg-type]
    ema.shadow[0] = 7
    ema.tensor[0] = 7
    assert ema.shadow.flags.writeable and ema.shadow[0] == 7 and ema.tensor[0] == 7
    # Memory mapped for the buffer alone (private, anonymous): not a view of the file.
    root = ema.shadow
    while isinstance(root, np.ndarray | memoryview):
        root = root.base if isinstance(root, np.ndarray) else root.obj
    assert isinstance(root, mmap.mmap)
    path.write_bytes(b"\0" * path.stat().st_size)
    assert ema.shadow[1] == 1 and ema.tensor[1] == 1


def test_read_gives_the_same_large_arrays(tmp_path: Path) -> None:
    """callstate.read (every checksum verified first, then decoded) gives the same large arrays."""
    path = tmp_path / "a.callstate"
    callstate.save({"EMA": large_state()}, path)
    out = callstate.read(path)["EMA"]
    assert (out["shadow"] == large_state()["shadow"]).all()


@pytest.mark.parametrize("where", [0.1, 0.5, 0.999])
def test_a_flipped_byte_anywhere_in_a_large_buffer_is_refused(tmp_path: Path, where: float) -> None:
    """A byte changed at the start, middle or end of a 12 MB buffer: CorruptCheckpointError naming the entry, nothing restored."""
    path = tmp_path / "a.callstate"
    callstate.save({"EMA": large_state()}, path)
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0x40
    path.write_bytes(bytes(data))
    ema = EMA()
    with pytest.raises(callstate.CorruptCheckpointError, match="EMA"):
        callstate.load([ema], path)
    assert ema.shadow.size == 0


def test_a_large_bool_array_with_a_byte_other_than_0_or_1_is_refused() -> None:
    """A 3 MB bool array whose bytes are checked in pieces: a 2 near its end is refused."""
    from callstate._encoding import _arrays

    buffer = _parts.new_buffer(3 << 20)
    buffer[-5] = 2
    with pytest.raises(_arrays.ArrayError, match="other than 0 and 1"):
        _arrays.numpy_array("|b1", (3 << 20,), False, buffer)
    buffer[-5] = 1
    assert _arrays.numpy_array("|b1", (3 << 20,), False, buffer).sum() == 1


def test_new_buffer_is_mapped_only_for_large_sizes() -> None:
    """Small buffers are bytearrays; from 1 MiB, private anonymous maps (no zero-fill pass)."""
    assert type(_parts.new_buffer(1000)) is bytearray
    big = _parts.new_buffer(1 << 20)
    assert isinstance(big, mmap.mmap) and len(big) == 1 << 20 and big[:8] == b"\0" * 8


def test_filled_continues_the_crc_and_skips_it_when_not_asked() -> None:
    """filled() computes the CRC-32 of the memory it fills, continued from the one given, or none."""
    import zlib

    data = bytes(range(256)) * 20_000
    out, crc = _parts.filled(len(data), lambda piece, start: piece.__setitem__(slice(None), data[start : start + piece.nbytes]), 5)
    assert bytes(out) == data and crc == zlib.crc32(data, 5)
    assert _parts.filled(10, lambda piece, start: None, None)[1] is None


def test_a_kept_stream_is_read_once_into_bytes_and_a_shrunk_file_is_named(tmp_path: Path) -> None:
    """A part kept from a local file comes back as its exact bytes (read straight into a bytes
    object); once the file has shrunk under it, asking for them raises CorruptCheckpointError naming it."""
    import os

    path = tmp_path / "parts.bin"
    path.write_bytes(bytes(range(256)) * 40)
    fd = os.open(path, os.O_RDONLY)
    part = _parts.FilePart(_parts.OpenFile(fd, str(path)), 100, 5000)
    assert bytes(part) == (bytes(range(256)) * 40)[100:5100]
    os.truncate(path, 3000)
    with pytest.raises(callstate.CorruptCheckpointError, match="shorter") as e:
        bytes(part)
    assert e.value.path == str(path)
