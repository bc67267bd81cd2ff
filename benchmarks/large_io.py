"""Large states against a memory copy of the same bytes: load, save, fsync, background save, peak memory.

Usage::

    python benchmarks/large_io.py [--sizes 64,512,2048] [--kinds numpy,torch] [--rounds 3] [--repeats 3]
                                  [--variant NAME=PYTHONPATH ...] [--json FILE]

Each case is ``benchmarks/large_state.py`` in a fresh process (so its peak memory is its own), for
callstate and for the ``copy`` baseline, alternating round by round so that the load of a shared
machine touches both alike. A ``--variant`` runs the callstate cases with that PYTHONPATH (another
checkout of callstate, or one with python-isal on the path), to compare code before and after a
change in one run. Ratios are medians over the rounds, each against the copy of its own round:

- load / copy: ``callstate.load`` against copying the arrays into new ones;
- save w/o fsync / copy: ``callstate.save`` less the time spent in fsync, against the same copy;
- fsync: the seconds spent in fsync (file and directory), on their own;
- async block / copy: what ``callstate.save_async`` blocks the caller, against the copy;
- peaks: extra RSS of the load, and from the ``save_async`` call until its file is in place, over
  the state's size.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def run_case(
    kind: str, mb: int, method: str, repeats: int, directory: str, pythonpath: str | None
) -> dict[str, Any]:
    """Run one case of large_state.py in a fresh process; return its JSON."""
    env = dict(os.environ)
    env["PYTHONPATH"] = pythonpath if pythonpath is not None else str(ROOT)
    proc = subprocess.run(
        [sys.executable, str(HERE / "large_state.py"), kind, str(mb), method, str(repeats), directory],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{kind} {mb} MB {method} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def ratios(cases: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, float]:
    """Return the median ratios of (callstate, copy) pairs, one pair per round."""
    state = cases[0][0]["state_bytes"]

    def med(f: Any) -> float:
        return statistics.median(f(c, b) for c, b in cases)

    out = {
        "load_s": med(lambda c, b: c["load_s"]),
        "copy_s": med(lambda c, b: b["load_s"]),
        "load_x_copy": med(lambda c, b: c["load_s"] / b["load_s"]),
        "save_nofsync_s": med(lambda c, b: c["save_nofsync_s"]),
        "save_nofsync_x_copy": med(lambda c, b: c["save_nofsync_s"] / b["save_s"]),
        "fsync_s": med(lambda c, b: c["fsync_s"]),
        "load_peak_x_state": max(c["load_peak_bytes"] for c, _ in cases) / state,
        "rollback_copy": ",".join(sorted({c.get("rollback_copy", "?") for c, _ in cases})),
    }
    if "async_block_s" in cases[0][0]:
        out.update(
            async_block_s=med(lambda c, b: c["async_block_s"]),
            async_block_x_copy=med(lambda c, b: c["async_block_s"] / b["save_s"]),
            async_total_s=med(lambda c, b: c["async_total_s"]),
            async_peak_x_state=max(c["async_peak_bytes"] for c, _ in cases) / state,
        )
    return out


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,512,2048")
    parser.add_argument("--kinds", default="numpy,torch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--methods", default="callstate,stateful", help="callstate and/or stateful")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--variant", action="append", default=[], help="NAME=PYTHONPATH for the callstate runs"
    )
    parser.add_argument("--dir", default=None, help="where the files go (default: the temp directory)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    given = [tuple(v.split("=", 1)) for v in args.variant] or [("callstate", None)]
    # Each variant with each method: the hand-written callback, and the @stateful one.
    methods = args.methods.split(",")
    variants = [(f"{name}/{method}", path, method) for name, path in given for method in methods]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        for mb in [int(s) for s in args.sizes.split(",")]:
            # The state, the loaded copy and the file's pages in the page cache.
            if _available_bytes() < 4 * (mb << 20):
                print(f"skipping {mb} MB: {_available_bytes() >> 20} MB available, {4 * mb} MB needed")
                continue
            for kind in args.kinds.split(","):
                pairs: dict[str, list[Any]] = {name: [] for name, _, _ in variants}
                for _ in range(args.rounds):
                    for name, path, method in variants:
                        cs = run_case(kind, mb, method, args.repeats, directory, path)
                        base = run_case(kind, mb, "copy", args.repeats, directory, None)
                        pairs[name].append((cs, base))
                for name, _, _ in variants:
                    row = {"kind": kind, "mb": mb, "variant": name, **ratios(pairs[name])}
                    results.append(row)
                    print(_line(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


def _line(r: dict[str, Any]) -> str:
    text = (
        f"{r['kind']:5} {r['mb']:5} MB {r['variant']:22} load {r['load_s']:.3f} s = "
        f"{r['load_x_copy']:.2f}x copy ({r['copy_s']:.3f} s) | save w/o fsync "
        f"{r['save_nofsync_x_copy']:.2f}x copy, fsync {r['fsync_s']:.3f} s"
        f" | load peak {r['load_peak_x_state']:.2f}x state (rollback copy: {r['rollback_copy']})"
    )
    if "async_block_s" in r:
        text += (
            f" | save_async blocks {r['async_block_s']:.3f} s = {r['async_block_x_copy']:.2f}x copy, "
            f"done after {r['async_total_s']:.3f} s, peak {r['async_peak_x_state']:.2f}x state"
        )
    return text


if __name__ == "__main__":
    main(sys.argv[1:])
