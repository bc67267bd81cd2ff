"""Checksum candidates against a memory copy of the same bytes, on this machine.

Usage: ``python benchmarks/checksums.py [--mb N] [--repeats R]``. Prints one line per candidate:
its median GB/s on an N MB buffer (out of cache) and on a 1 MB buffer (in cache), the ratio of its
time to a memory copy of the same bytes timed in alternation with it, and whether it gives the same
values as ``zlib.crc32`` (the CRC-32 that callstate files of format versions 1 and 2 record).
Candidates that are not installed are listed as such: ``pip install isal zlib-ng xxhash crc32c
google-crc32c`` to measure them all.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import time
import zlib
from collections.abc import Callable
from typing import Any

CASTAGNOLI = "CRC-32C (Castagnoli), another polynomial"


def _candidates() -> dict[str, tuple[Callable[[Any], int] | None, bool, str]]:
    """Return name -> (function or None if missing, gives zlib's CRC-32 values, what it is)."""

    def load(module: str, attr: str) -> Callable[[Any], int] | None:
        try:
            return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]
        except ImportError:
            return None

    xxh3 = load("xxhash", "xxh3_64_intdigest")
    return {
        "zlib.crc32": (zlib.crc32, True, "CRC-32, the standard library"),
        "isal.isal_zlib.crc32": (load("isal.isal_zlib", "crc32"), True, "CRC-32, Intel ISA-L (python-isal)"),
        "zlib_ng.zlib_ng.crc32": (load("zlib_ng.zlib_ng", "crc32"), True, "CRC-32, zlib-ng"),
        "google_crc32c.value": (load("google_crc32c", "value"), False, CASTAGNOLI),
        "crc32c.crc32c": (load("crc32c", "crc32c"), False, CASTAGNOLI),
        "xxhash.xxh3_64": (xxh3, False, "XXH3 64-bit, not a CRC"),
    }


def _time(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def measure(mb: int, repeats: int) -> list[dict[str, Any]]:
    """Time every installed candidate against a memory copy, alternating; return one record each."""
    import numpy as np

    big = np.random.default_rng(0).integers(0, 256, mb << 20, dtype=np.uint8)
    small = big[: 1 << 20].copy()
    target = np.empty_like(big)
    small_target = np.empty_like(small)
    reference = zlib.crc32(big)
    rows = []
    for name, (function, same_values, what) in _candidates().items():
        if function is None:
            rows.append({"name": name, "what": what, "installed": False})
            continue
        ratios, times, small_times = [], [], []
        for _ in range(repeats):
            copy_s = _time(lambda: np.copyto(target, big))
            crc_s = _time(lambda f=function: f(big))  # type: ignore[misc]
            ratios.append(crc_s / copy_s)
            times.append(crc_s)
            small_copy = min(_time(lambda: np.copyto(small_target, small)) for _ in range(20))
            small_crc = min(_time(lambda f=function: f(small)) for _ in range(20))  # type: ignore[misc]
            small_times.append((small_crc, small_copy))
        equal = same_values and function(big) == reference
        rows.append(
            {
                "name": name,
                "what": what,
                "installed": True,
                "same_as_zlib": bool(equal),
                "gbps": (mb << 20) / statistics.median(times) / 1e9,
                "x_copy": statistics.median(ratios),
                "gbps_in_cache": (1 << 20) / statistics.median(t for t, _ in small_times) / 1e9,
                "x_copy_in_cache": statistics.median(t / c for t, c in small_times),
            }
        )
    copy_s = statistics.median(_time(lambda: np.copyto(target, big)) for _ in range(repeats))
    rows.append({"name": "memory copy", "what": "numpy.copyto of the same bytes", "installed": True,
                 "gbps": (mb << 20) / copy_s / 1e9, "x_copy": 1.0, "same_as_zlib": None})
    return rows


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    rows = measure(args.mb, args.repeats)
    if args.json:
        print(json.dumps(rows))
        return
    python = sys.version.split()[0]
    print(f"{args.mb} MB buffer, median of {args.repeats}, {os.cpu_count()} cores, Python {python}")
    head = f"{'candidate':24} {'GB/s':>6} {'x copy':>7} {'GB/s 1MB':>9} {'x copy 1MB':>11}"
    print(head + "  same as zlib  what")
    for r in rows:
        if not r["installed"]:
            print(f"{r['name']:24} {'(not installed)':>36}  {r['what']}")
            continue
        cached = " " * 21
        if "gbps_in_cache" in r:
            cached = f"{r['gbps_in_cache']:9.2f} {r['x_copy_in_cache']:11.2f}"
        same = {True: "yes", False: "no", None: "-"}[r["same_as_zlib"]]
        print(f"{r['name']:24} {r['gbps']:6.2f} {r['x_copy']:7.2f} {cached}  {same:12}  {r['what']}")


if __name__ == "__main__":
    main(sys.argv[1:])
