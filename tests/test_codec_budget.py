"""One allowance per read: decoding a crafted file of N bytes grows the process by at most 16 x N + 64 MiB.

Each payload is built here, written into a container whose checksums and index are right, and read
with ``callstate.read`` in a subprocess capped by ``RLIMIT_AS``. The child resets its peak resident
size (``/proc/self/clear_refs``), reads, and reports how far ``VmHWM`` rose above its resident size
before the read. That growth must stay within ``16 x N + 64 MiB`` for the N bytes of the file, plus
the file's own pages (it is memory mapped: its pages count as resident once read) and ``MARGIN``.
The read either decodes or raises CorruptCheckpointError naming the file and the entry.
"""

from __future__ import annotations

import json
import pathlib
import struct
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from callstate._encoding import _format
from callstate._encoding._encoded import chained_crc

MIB = 1 << 20
# The interpreter's own share, not any object decoded: pymalloc keeps 1 MiB arenas of which a part is
# in use, glibc keeps freed blocks below its trim threshold, the first decode warms caches and builds
# an exception with its traceback. A read of a small legitimate file grows the process by ~1 MiB.
MARGIN = 8 * MIB
TIME_CAP = 240  # seconds for the whole child

_CHILD = textwrap.dedent(
    """
    import json, resource, sys
    import callstate, callstate._encoding._codec, decimal  # imported before the baseline: not the read's

    def status(field):
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise AssertionError(field)

    path, cap = sys.argv[1], int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_AS, (status("VmSize") + cap, resource.RLIM_INFINITY))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the resident size now
    before = status("VmRSS")
    out = {}
    try:
        callstate.read(path)
    except BaseException as exc:
        out = {"type": type(exc).__name__, "callstate": isinstance(exc, callstate.CallstateError),
               "key": getattr(exc, "key", None), "path": getattr(exc, "path", None),
               "message": str(exc)[:300]}
    out["growth"] = status("VmHWM") - before
    print(json.dumps(out))
    """
)


def _u32(n: int) -> bytes:
    return struct.pack("<I", n)


def _write(path: pathlib.Path, entries: dict[str, tuple[bytes, ...]]) -> int:
    """Write ``{key: parts}`` as a callstate file, every checksum right; return its size."""
    records = [(key, "data", parts, chained_crc(parts), {}) for key, parts in entries.items()]
    with open(path, "wb") as out:
        _format.write_container(out, records, {})
    return path.stat().st_size


def _read_in_child(path: pathlib.Path, size: int) -> dict[str, Any]:
    bound = 16 * size + 64 * MIB + size + MARGIN
    run = subprocess.run(
        [sys.executable, "-W", "error", "-c", _CHILD, str(path), str(bound + 512 * MIB)],
        capture_output=True,
        text=True,
        timeout=TIME_CAP,
        check=False,
        cwd=path.parent,  # not the checkout: -c puts the working directory first on sys.path
    )
    assert run.returncode == 0, run.stderr[-2000:]
    result: dict[str, Any] = json.loads(run.stdout)
    result["bound"] = bound
    return result


def _assert_bounded(path: pathlib.Path, size: int, keys: set[str]) -> dict[str, Any]:
    result = _read_in_child(path, size)
    assert result["growth"] <= result["bound"], (
        f"grew {result['growth'] / MIB:.0f} MiB for {size / MIB:.1f} MiB read "
        f"(bound {result['bound'] / MIB:.0f} MiB): {result}"
    )
    if "type" in result:
        assert result["type"] == "CorruptCheckpointError" and result["callstate"], result
        assert result["path"] == str(path) and result["key"] in keys, result
    return result


def _list(items: list[bytes] | bytes, count: int | None = None) -> bytes:
    """A list payload of the items given (or of ``count`` copies of one item)."""
    if isinstance(items, bytes):
        assert count is not None
        return b"l" + _u32(count) + items * count
    return b"l" + _u32(len(items)) + b"".join(items)


EMPTY_SET = b"e" + _u32(0)


@pytest.mark.slow
def test_entries_share_one_allowance(tmp_path: pathlib.Path) -> None:
    """16 entries, each just within an allowance of its own, are bounded together by the file's."""
    # Each entry needs about 64 MiB beyond 16x its 2.2 MB: it fitted the per-entry slack of before.
    entries = {f"e{i}": (_list(EMPTY_SET, 440_000),) for i in range(16)}
    path = tmp_path / "entries.callstate"
    _assert_bounded(path, _write(path, entries), set(entries))


@pytest.mark.slow
def test_empty_set_flood_is_charged_at_its_real_size(tmp_path: pathlib.Path) -> None:
    """A list of millions of empty sets (5 bytes each, ~220 in memory with their bookkeeping) stays bounded."""
    path = tmp_path / "sets.callstate"
    _assert_bounded(path, _write(path, {"k": (_list(EMPTY_SET, 4_000_000),)}), {"k"})


@pytest.mark.slow
def test_one_item_tuple_flood_charges_memo_and_cost_table(tmp_path: pathlib.Path) -> None:
    """Millions of one-item tuples referring to one shared tuple: memo, heights and hash-cost entries charged."""
    # Slot 0 is the list, slot 1 the shared tuple (None,); each later tuple is (shared,), a memo
    # slot and a hash-cost entry of its own (its cost, 3, is not a flat tuple's).
    shared = b"t" + _u32(1) + b"N"
    tuples = [shared] + [b"t" + _u32(1) + b"r" + _u32(1)] * 2_000_000
    path = tmp_path / "tuples.callstate"
    _assert_bounded(path, _write(path, {"k": (_list(tuples),)}), {"k"})


@pytest.mark.slow
def test_decimal_flood_is_charged_at_its_real_size(tmp_path: pathlib.Path) -> None:
    """Millions of Decimals (7 bytes each, 104 in memory) stay bounded."""
    one = b"m" + b"s" + _u32(1) + b"7"
    path = tmp_path / "decimals.callstate"
    _assert_bounded(path, _write(path, {"k": (_list(one, 2_000_000),)}), {"k"})


@pytest.mark.slow
def test_dict_refused_after_its_table_is_charged_before_it_is_built(tmp_path: pathlib.Path) -> None:
    """A dict of 2 million float keys whose last key repeats the first: its table is charged before it is built."""
    n = 2_000_000
    pairs = b"".join(b"f" + struct.pack("<d", float(i)) + b"N" for i in range(n - 1))
    pairs += b"f" + struct.pack("<d", 0.0) + b"N"  # there twice: refused once built
    path = tmp_path / "dict.callstate"
    result = _assert_bounded(path, _write(path, {"k": (b"d" + _u32(n) + pairs,)}), {"k"})
    assert result["type"] == "CorruptCheckpointError", result


@pytest.mark.slow
def test_zero_size_parts_are_charged_before_their_views_are_made(tmp_path: pathlib.Path) -> None:
    """32 entries of 65,536 parts each, all but one empty: the views and copies of parts are charged."""
    parts = (b"N",) + (b"",) * (_format.MAX_PARTS - 1)
    entries = {f"e{i}": parts for i in range(32)}
    path = tmp_path / "parts.callstate"
    result = _assert_bounded(path, _write(path, entries), set(entries))
    assert result["type"] == "CorruptCheckpointError", result

