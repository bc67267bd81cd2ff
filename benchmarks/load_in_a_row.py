"""Loads of one large hand-written callback in a row, in one process, each against a memory copy.

Usage: ``python benchmarks/load_in_a_row.py [MB] [LOADS]`` (default 512 MB, 5 loads). Prints, per
load: its time, the part spent in the rollback copy and in the decode (read and CRC-32, by
cProfile), where the copy was kept (``RestoreReport.rollback_copy``), and ``numpy.copy`` of the same
arrays timed right after. On a VM that hands free memory back to its host, the first loads pay for
touching new memory (see docs/performance.md); the later ones show callstate's own cost.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import sys
import tempfile
import time
from typing import Any

import numpy as np

import callstate


class EMA:
    """A hand-written callback (its own state methods) holding four float32 arrays."""

    state_key = "ema"

    def __init__(self, shadow: dict[str, Any]) -> None:
        self.shadow = shadow

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.shadow = state["shadow"]


def main(argv: list[str]) -> None:
    mb = int(argv[0]) if argv else 512
    loads = int(argv[1]) if len(argv) > 1 else 5
    cb = EMA({f"layer{i}": np.arange(mb * (1 << 20) // 16, dtype=np.float32) for i in range(4)})
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "ema.callstate")
        callstate.save([cb], path)
        for _ in range(loads):
            cb.shadow = {k: np.full_like(v, -1) for k, v in cb.shadow.items()}
            profile = cProfile.Profile()
            start = time.perf_counter()
            profile.enable()
            report = callstate.load([cb], path)
            profile.disable()
            load = time.perf_counter() - start
            spent = {k[2]: v[3] for k, v in pstats.Stats(profile).stats.items()}  # type: ignore[attr-defined]
            start = time.perf_counter()
            copies = {k: v.copy() for k, v in cb.shadow.items()}
            copy = time.perf_counter() - start
            del copies
            where = getattr(report, "rollback_copy", "a temp file")  # the code before issue 25: a file
            print(
                f"load {load:.3f} s (rollback copy {spent.get('_pickled_snapshot', 0):.3f} s in {where}, "
                f"decode {spent.get('decode_parts', 0):.3f} s), copy {copy:.3f} s, {load / copy:.2f}x",
                flush=True,
            )


if __name__ == "__main__":
    main(sys.argv[1:])
