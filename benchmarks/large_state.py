"""One large-state case, run in a fresh process so its peak memory is its own.

Usage: ``python benchmarks/large_state.py KIND MB METHOD REPEATS DIR``, where KIND is ``numpy`` or
``torch``, METHOD is ``callstate``, ``stateful`` (callstate, with a ``@callstate.stateful``
callback whose generated state methods need no rollback copy), ``torch`` (torch.save, then
torch.load and deepcopy, as Lightning restores a callback) or ``copy`` (copying the same bytes into
new buffers: the physical limit). Prints one JSON object: median save and load seconds, and the
peak extra RSS of each phase in bytes (the peak above the RSS just before the phase, with the state
already allocated). For callstate it also gives where its loads kept the rollback copy
(``rollback_copy``), the part of the save spent in fsync (``fsync_s``;
``save_s`` less it is the save without its fsync), and, for a ``callstate.save_async`` of the same
state, the time it blocks the caller (``async_block_s``), its time until the file is in place
(``async_total_s``) and its peak extra RSS from the call until then (``async_peak_bytes``).
"""

from __future__ import annotations

import copy
import gc
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import callstate

ARRAYS = 4  # the state is split over this many float32 arrays, like the layers of an EMA copy
ROLLBACK_COPY: set[str] = set()  # where callstate's loads kept the rollback copy


class EMA:
    """An exponential-moving-average callback: a shadow copy of the weights, plus two scalars."""

    def __init__(self, shadow: dict[str, Any]) -> None:
        self.decay = 0.999
        self.num_updates = 0
        self.shadow = shadow

    @property
    def state_key(self) -> str:
        return f"EMA{{'decay': {self.decay!r}}}"

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = state["decay"]
        self.num_updates = state["num_updates"]
        self.shadow = state["shadow"]


@callstate.stateful(identity=("decay",), state=("decay", "num_updates", "shadow"))
class StatefulEMA:
    """The same callback with callstate's generated state methods (its restore needs no rollback copy)."""

    def __init__(self, shadow: dict[str, Any]) -> None:
        self.decay = 0.999
        self.num_updates = 0
        self.shadow = shadow


def make_state(kind: str, mb: int) -> dict[str, Any]:
    n = mb * 1024 * 1024 // 4 // ARRAYS
    arrays = {f"layer{i}": np.arange(n, dtype=np.float32) for i in range(ARRAYS)}
    if kind == "torch":
        return {k: torch.from_numpy(v) for k, v in arrays.items()}
    return arrays


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


class PeakRSS:
    """Peak resident memory of this process during a ``with`` block, above its RSS at the start.

    Uses the kernel's high-water mark, reset through /proc/self/clear_refs; where that is not
    possible, samples the RSS every millisecond from a thread.
    """

    def __init__(self) -> None:
        self.extra = 0
        self._stop = threading.Event()
        self._sampled = 0
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakRSS:
        gc.collect()
        self._start = _status("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self._kernel = _status("VmHWM") <= self._start + 4096 * 16
        except OSError:
            self._kernel = False
        if not self._kernel:
            self._sampled = self._start
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self._sampled = max(self._sampled, _status("VmRSS"))

    def __exit__(self, *exc: object) -> None:
        if self._kernel:
            peak = _status("VmHWM")
        else:
            self._stop.set()
            assert self._thread is not None
            self._thread.join()
            peak = max(self._sampled, _status("VmRSS"))
        self.extra = max(0, peak - self._start)


def methods(kind: str, path: str) -> dict[str, tuple[Callable[[Any], None], Callable[[Any], None]]]:
    key = EMA({}).state_key

    def cs_save(cb: EMA) -> None:
        callstate.save([cb], path)

    def cs_load(cb: EMA) -> None:
        # Where the restore kept its rollback copy ("memory", "file", "none"), where it says so.
        ROLLBACK_COPY.add(str(getattr(callstate.load([cb], path), "rollback_copy", "?")))

    def torch_save(cb: EMA) -> None:
        torch.save({"callbacks": {cb.state_key: cb.state_dict()}}, path)

    def torch_load(cb: EMA) -> None:
        checkpoint = torch.load(path, weights_only=True)
        cb.load_state_dict(copy.deepcopy(checkpoint["callbacks"][key]))

    saved: dict[str, Any] = {}

    def _copy(state: Any) -> Any:
        if kind == "torch":
            return {k: v.clone() for k, v in state.items()}
        return {k: v.copy() for k, v in state.items()}

    def copy_save(cb: EMA) -> None:
        saved["shadow"] = _copy(cb.shadow)

    def copy_load(cb: EMA) -> None:
        cb.shadow = _copy(saved["shadow"])

    return {
        "callstate": (cs_save, cs_load),
        "stateful": (cs_save, cs_load),
        "torch": (torch_save, torch_load),
        "copy": (copy_save, copy_load),
    }


class FsyncTimer:
    """Time spent in os.fsync (the file's and the directory's) while it is installed."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._real = os.fsync

    def __call__(self, fd: Any) -> None:
        start = time.perf_counter()
        try:
            self._real(fd)
        finally:
            self.seconds += time.perf_counter() - start


def background_save(cb: Any, path: str) -> tuple[float, float, int]:
    """Return the seconds save_async blocks, its seconds until done, and its peak extra RSS."""
    os.sync()
    with PeakRSS() as peak:
        start = time.perf_counter()
        future = callstate.save_async([cb], path)
        blocked = time.perf_counter() - start
        future.result()
        total = time.perf_counter() - start
    return blocked, total, peak.extra


def main(argv: list[str]) -> None:
    kind, mb, method, repeats, directory = argv[0], int(argv[1]), argv[2], int(argv[3]), argv[4]
    if kind == "numpy":
        torch.serialization.add_safe_globals(
            [np._core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.float32))]
        )
    path = os.path.join(directory, f"{kind}-{mb}-{method}.ckpt")
    save, load = methods(kind, path)[method]
    cb: Any = (StatefulEMA if method == "stateful" else EMA)(make_state(kind, mb))
    state_bytes = sum(int(v.nbytes) for v in cb.shadow.values())
    save_times, load_times, save_peaks, load_peaks = [], [], [], []
    fsync_times: list[float] = []
    background: list[tuple[float, float, int]] = []
    timer = FsyncTimer()
    if method in ("callstate", "stateful"):
        os.fsync = timer
    for _ in range(repeats):
        # Start each phase with no dirty pages left by an earlier case (or another process):
        # the kernel would otherwise make this one wait while it writes them out.
        os.sync()
        timer.seconds = 0.0
        with PeakRSS() as peak:
            start = time.perf_counter()
            save(cb)
            save_times.append(time.perf_counter() - start)
        save_peaks.append(peak.extra)
        fsync_times.append(timer.seconds)
        before = {k: float(v[-1]) for k, v in cb.shadow.items()}
        cb.shadow = make_state(kind, mb)  # a state of the same size, which the load replaces
        for v in cb.shadow.values():
            v.fill(-1.0) if kind == "numpy" else v.fill_(-1.0)
        os.sync()
        with PeakRSS() as peak:
            start = time.perf_counter()
            load(cb)
            load_times.append(time.perf_counter() - start)
        load_peaks.append(peak.extra)
        after = {k: float(v[-1]) for k, v in cb.shadow.items()}
        if after != before or sum(int(v.nbytes) for v in cb.shadow.values()) != state_bytes:
            raise SystemExit(f"{method}: the state did not come back intact")
        if method in ("callstate", "stateful") and hasattr(callstate, "save_async"):
            background.append(background_save(cb, path))
        gc.collect()
    if os.path.exists(path):
        os.unlink(path)
    result: dict[str, Any] = {
        "kind": kind,
        "mb": mb,
        "method": method,
        "state_bytes": state_bytes,
        "save_s": statistics.median(save_times),
        "load_s": statistics.median(load_times),
        "save_peak_bytes": max(save_peaks),
        "load_peak_bytes": max(load_peaks),
    }
    if method in ("callstate", "stateful"):
        result["fsync_s"] = statistics.median(fsync_times)
        without = [s - f for s, f in zip(save_times, fsync_times, strict=True)]
        result["save_nofsync_s"] = statistics.median(without)
        result["rollback_copy"] = ",".join(sorted(ROLLBACK_COPY))
    if background:
        result["async_block_s"] = statistics.median(b for b, _, _ in background)
        result["async_total_s"] = statistics.median(t for _, t, _ in background)
        result["async_peak_bytes"] = max(p for _, _, p in background)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
