"""The torch zip's checks: every number of its directory and end records, at any value, is refused or read.

The central directory, the zip64 end record, its locator and the end record hold offsets, sizes and
counts that readers seek to and read by. Each field, set to the values that break arithmetic (0, the
file's own size and around it, 2**31, 2**32 - 1, 2**63 - 1, 2**63, 2**64 - 1), must give the file
read as it is or a CorruptCheckpointError naming it: never a seek error, an OverflowError or a hang.
Fuzzing found one (a zip64 directory offset of 2**63 and more, sought before it was checked).
"""

from __future__ import annotations

import io
import struct
import time
from pathlib import Path

import pytest
import torch

import callstate
from callstate._torch import _torch_reader

_WIDTHS = {2: "<H", 4: "<I", 8: "<Q"}


def _checkpoint() -> bytes:
    buffer = io.BytesIO()
    torch.save({"callbacks": {"Counter{'what': 'epochs'}": {"count": 3}}}, buffer)
    return buffer.getvalue()


def _tail(data: bytes) -> int:
    """Where the central directory starts: the tail from there holds every record the reader trusts."""
    return data.index(b"PK\x01\x02")


def _values(length: int, width: int) -> list[int]:
    values = {0, 1, length - 1, length, length + 1, 2**31, 2**32 - 1, 2**63 - 1, 2**63, 2**64 - 1}
    return sorted(v for v in values if 0 <= v < 2 ** (8 * width))


def _mutations(data: bytes) -> list[tuple[int, int, int]]:
    return [
        (at, width, value)
        for at in range(_tail(data), len(data) - 1)
        for width in _WIDTHS
        if at + width <= len(data)
        for value in _values(len(data), width)
    ]


def _mutate(data: bytes, at: int, width: int, value: int) -> bytes:
    return data[:at] + struct.pack(_WIDTHS[width], value) + data[at + width :]


def test_any_value_of_any_directory_field_is_refused_or_read() -> None:
    """Each field of the directory and end records, at each breaking value: read, or CorruptCheckpointError."""
    data = _checkpoint()
    mutations = _mutations(data)
    assert len(mutations) > 1000, "the tail holds the central directory, zip64 record, locator and end record"
    refused = 0
    started = time.monotonic()
    for at, width, value in mutations:
        try:
            _torch_reader.scan(io.BytesIO(_mutate(data, at, width, value)), "c.ckpt")
        except callstate.CorruptCheckpointError as exc:
            assert exc.path == "c.ckpt" and "c.ckpt" in str(exc)
            refused += 1
        except Exception as exc:  # pragma: no cover - the failure this test exists for
            pytest.fail(f"byte {at}, {width} bytes = {value}: {type(exc).__name__}: {exc}")
    assert refused > len(mutations) // 2, "most such changes damage the zip"
    assert time.monotonic() - started < 60


def test_a_zip64_directory_offset_past_any_seek_is_refused(tmp_path: Path) -> None:
    """The case fuzzing found, on a real file: a zip64 directory offset of 2**64 - 1 is a CorruptCheckpointError."""
    data = _checkpoint()
    record = data.rindex(b"PK\x06\x06")
    path = tmp_path / "c.ckpt"
    path.write_bytes(_mutate(data, record + 48, 8, 2**64 - 1))
    with pytest.raises(callstate.CorruptCheckpointError, match=r"c\.ckpt") as exc, path.open("rb") as f:
        _torch_reader.scan(f, str(path))
    assert exc.value.path == str(path)


def test_a_member_offset_below_zero_is_refused(tmp_path: Path) -> None:
    """A zip64 directory offset past the real one makes zipfile place members before the file: refused."""
    data = _checkpoint()
    record = data.rindex(b"PK\x06\x06")
    real = struct.unpack_from("<Q", data, record + 48)[0]
    path = tmp_path / "c.ckpt"
    path.write_bytes(_mutate(data, record + 48, 8, real + 10**6))
    with pytest.raises(callstate.CorruptCheckpointError, match="bytes before the file"), path.open("rb") as f:
        _torch_reader.scan(f, str(path))


def test_the_checkpoint_as_saved_is_read() -> None:
    """The unmutated file passes every check (so refusals above come of the change)."""
    _torch_reader.scan(io.BytesIO(_checkpoint()), "c.ckpt")
