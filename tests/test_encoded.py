"""The checksum every callstate file records: CRC-32, by ISA-L (python-isal, a dependency where it has wheels), else zlib."""

from __future__ import annotations

import platform
import random
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import callstate
from callstate._encoding import _parts

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture
def without_isal(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """callstate as it is where python-isal is not installed."""
    monkeypatch.setitem(sys.modules, "isal.isal_zlib", None)
    _parts._crc32_function.cache_clear()
    yield
    _parts._crc32_function.cache_clear()


@given(st.binary(max_size=5000), st.integers(0, 2**32 - 1), st.integers(0, 5000))
def test_crc32_gives_zlibs_values(data: bytes, start: int, cut: int) -> None:
    """callstate's crc32 equals zlib.crc32, from any start value and chained over any split."""
    assert _parts.crc32(data, start) == zlib.crc32(data, start)
    assert _parts.crc32(data[cut:], _parts.crc32(data[:cut])) == zlib.crc32(data)


def test_crc32_gives_zlibs_values_on_large_buffers() -> None:
    """On a 20 MB buffer and views of it (memoryview, a numpy array where numpy is), crc32 equals zlib.crc32."""
    array = bytearray(random.Random(1).randbytes(20 << 20))
    assert _parts.crc32(array) == zlib.crc32(array)
    assert _parts.crc32(memoryview(array)[5:], 7) == zlib.crc32(memoryview(array)[5:], 7)
    try:
        import numpy as np
    except ImportError:  # the core suite: the views above are the ones callstate makes itself
        return
    view = np.frombuffer(array, dtype=np.uint8)[5:]
    assert _parts.crc32(view, 7) == zlib.crc32(view, 7)


def test_isal_is_installed_and_used_where_callstate_depends_on_it() -> None:
    """On CPython 3.10-3.15 on x86-64 or 64-bit ARM python-isal comes with callstate and the checksum is ISA-L's; elsewhere whichever is importable."""
    depends = (
        platform.python_implementation() == "CPython"
        and sys.version_info < (3, 16)
        and platform.machine() in ("x86_64", "AMD64", "aarch64", "arm64")
    )
    try:
        from isal import isal_zlib
    except ImportError:
        isal_zlib = None
    assert isal_zlib is not None or not depends, "python-isal is a dependency here but is not installed"
    assert _parts._crc32_function() is (zlib.crc32 if isal_zlib is None else isal_zlib.crc32)


@pytest.mark.usefixtures("without_isal")
def test_without_isal_zlib_is_used_and_files_still_verify(tmp_path: Path) -> None:
    """Without python-isal the checksum is zlib's; a file written either way, and the golden files, verify."""
    assert _parts._crc32_function() is zlib.crc32
    path = tmp_path / "a.callstate"
    callstate.save({"a": list(range(100_000)), "b": [1, 2]}, path)
    assert all(e.ok for e in callstate.inspect(path))
    # Read back with ISA-L where it is installed: the values are the same.
    _parts._crc32_function.cache_clear()
    sys.modules.pop("isal.isal_zlib")
    assert callstate.read(path)["a"] == list(range(100_000))
    goldens = sorted(GOLDEN.rglob("*.callstate"))
    assert goldens
    for golden in goldens:
        assert all(e.ok for e in callstate.inspect(golden)), golden
