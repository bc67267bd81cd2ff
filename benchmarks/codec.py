"""The data codec against pickle and msgpack: one state encoded and decoded, per kind of state.

Run alone (``.venv/bin/python benchmarks/codec.py``) or as the ``codec`` workload of ``run.py``.
msgpack is the C-backed candidate the format's docstring compares with; it is measured only where
it is installed (the ``bench`` extra installs it), with ``strict_types`` and an ext type for tuples,
the least it needs to round-trip these states at all.
"""

from __future__ import annotations

import os
import pickle
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from callstate._encoding import _codec  # noqa: E402

STATES: dict[str, Any] = {
    # What an EarlyStopping keeps, as the small-callbacks workload of run.py.
    "early_stopping": {"wait_count": 3, "stopped_epoch": 0, "best_score": 0.25, "patience": 3,
                       "history": [0.5, 0.25, 0.125]},
    # A loss history: one long list of floats (the codec packs it).
    "history_10k": {"losses": [i / 7 for i in range(10_000)], "step": 10_000},
    # Nested plain data with tuples and int keys, which msgpack needs hooks for.
    "nested": {
        "per_epoch": {i: {"lr": 0.1 / (i + 1), "best": (i, 0.5 * i), "tags": ["a", "b"]} for i in range(50)}
    },
}


def _msgpack() -> tuple[Any, Any] | None:
    try:
        import msgpack
    except ImportError:
        return None

    def default(obj: Any) -> Any:
        if isinstance(obj, tuple):
            return msgpack.ExtType(1, msgpack.packb(list(obj), strict_types=True, default=default))
        raise TypeError(type(obj))

    def ext_hook(code: int, data: bytes) -> Any:
        return tuple(msgpack.unpackb(data, ext_hook=ext_hook, strict_map_key=False))

    def dumps(state: Any) -> bytes:
        return bytes(msgpack.packb(state, strict_types=True, default=default))

    def loads(data: bytes) -> Any:
        return msgpack.unpackb(data, ext_hook=ext_hook, strict_map_key=False)

    return dumps, loads


def codec(repeats: int, rounds: int = 200) -> dict[str, Any]:
    """Median microseconds per encode+decode of each state, for each codec that is installed."""
    import gc
    import statistics
    import time

    encoder = _codec.Encoder()
    candidates: dict[str, tuple[Any, Any]] = {
        "callstate": (lambda s: encoder.encode(s)[0], lambda d: _codec.decode(d, [])),
        "pickle": (lambda s: pickle.dumps(s, protocol=5), pickle.loads),
    }
    packer = _msgpack()
    if packer is not None:
        candidates["msgpack"] = packer
    results: dict[str, Any] = {}
    for name, state in STATES.items():
        times: dict[str, list[float]] = {c: [] for c in candidates}
        for _ in range(repeats):  # the codecs take turns, so machine load hits them alike
            for cname, (dumps, loads) in candidates.items():
                gc.collect()
                start = time.perf_counter()
                for _ in range(rounds):
                    loads(dumps(state))
                times[cname].append((time.perf_counter() - start) / rounds * 1e6)
        row = {f"{c}_us": statistics.median(t) for c, t in times.items()}
        row["ratio_vs_pickle"] = row["callstate_us"] / row["pickle_us"]
        if "msgpack_us" in row:
            row["ratio_vs_msgpack"] = row["callstate_us"] / row["msgpack_us"]
        results[name] = row
    return results


# The names of issue 25's five states, in the order of its table.
ISSUE_STATES = (
    "floats_1m", "str_float_100k", "int_float_tuples_100k", "metric_records_20k", "early_stopping_1k"
)


def issue_states() -> dict[str, Any]:
    """The five states of issue 25, each the state of one callback."""
    return {
        "floats_1m": [i / 7 for i in range(1_000_000)],
        "str_float_100k": {f"sample-{i}": i / 3 for i in range(100_000)},
        "int_float_tuples_100k": [(i, i / 3) for i in range(100_000)],
        "metric_records_20k": [
            {"step": i, "loss": i / 9, "shape": (i, 3), "tags": ["train", i % 7]} for i in range(20_000)
        ],
        "early_stopping_1k": {
            f"EarlyStopping{{'monitor': 'm{i}'}}": {
                "wait_count": i % 4, "stopped_epoch": 0, "best_score": i / 5, "patience": 3,
                "history": [0.5, 0.25, 0.125],
            }
            for i in range(1_000)
        },
    }


def save_ratios(repeats: int = 5) -> dict[str, dict[str, float]]:
    """Median milliseconds to encode each of the issue's states, and the ratio to pickle protocol 5.

    The compiled encoder ("c", where it is built) and the reference ("python") take turns with pickle.
    """
    import gc
    import statistics
    import time

    from callstate._encoding import _encoder

    encoders: dict[str, Any] = {"python": _encoder.Encoder()}
    if _codec.Encoder is not _encoder.Encoder:
        encoders["c"] = _codec.Encoder()
    candidates = {name: enc.encode for name, enc in encoders.items()}
    candidates["pickle"] = lambda s: pickle.dumps(s, protocol=5)
    results: dict[str, dict[str, float]] = {}
    for name, state in issue_states().items():
        times: dict[str, list[float]] = {c: [] for c in candidates}
        for _ in range(repeats):
            for cname, dumps in candidates.items():
                gc.collect()
                start = time.perf_counter()
                dumps(state)
                times[cname].append((time.perf_counter() - start) * 1e3)
        row = {f"{c}_ms": statistics.median(t) for c, t in times.items()}
        for c in encoders:
            row[f"{c}_vs_pickle"] = row[f"{c}_ms"] / row["pickle_ms"]
        results[name] = row
    return results


# -- issue 25: save and load of files, per implementation -----------------------------------------


class Holder:
    """A hand-written callback holding one state, as every Lightning callback has its own."""

    def __init__(self, state: Any) -> None:
        self.state = state

    def state_dict(self) -> Any:
        return self.state

    def load_state_dict(self, state: Any) -> None:
        self.state = state


class _FsyncTimer:
    """Seconds spent in os.fsync while installed: the codec's benchmark leaves the disk out."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._real = os.fsync

    def __call__(self, fd: Any) -> None:
        start = time.perf_counter()
        try:
            self._real(fd)
        finally:
            self.seconds += time.perf_counter() - start


def scaled_states(scale: int) -> dict[str, Any]:
    """The issue's five states, each count divided by ``scale`` (1: the issue's sizes)."""
    if scale == 1:
        return issue_states()
    n = max(10, 1_000_000 // scale)
    return {
        "floats_1m": [i / 7 for i in range(n)],
        "str_float_100k": {f"sample-{i}": i / 3 for i in range(n // 10)},
        "int_float_tuples_100k": [(i, i / 3) for i in range(n // 10)],
        "metric_records_20k": [
            {"step": i, "loss": i / 9, "shape": (i, 3), "tags": ["train", i % 7]} for i in range(n // 50)
        ],
        "early_stopping_1k": {
            f"EarlyStopping{{'monitor': 'm{i}'}}": {"wait_count": i % 4, "best_score": i / 5,
                                                     "history": [0.5, 0.25]}
            for i in range(max(2, n // 1000))
        },
    }


def file_ratios(
    repeats: int, scale: int = 1, extra: dict[str, Any] | None = None
) -> dict[str, dict[str, float]]:
    """Median seconds of ``callstate.save`` and ``callstate.load`` of one callback holding each state,
    and of pickle protocol 5 of the same state to and from a file, in alternating rounds.

    The codec that runs is this process's (``CALLSTATE_PURE_PYTHON`` picks the reference). Both
    sides write and read a real file in the same directory; the time callstate spends in fsync is
    taken out (pickle does none), so the ratios compare the codecs and their checks, not the disk.
    Loads run with every check and bound on (``trusted=False``), and restore the callback.
    """
    import gc
    import statistics
    import tempfile
    import warnings

    import callstate

    states = scaled_states(scale)
    states.update(extra or {})
    timer = _FsyncTimer()
    results: dict[str, dict[str, float]] = {}
    real_fsync = os.fsync
    os.fsync = timer
    try:
        with tempfile.TemporaryDirectory(prefix="callstate-codec-", dir=os.environ.get("BENCH_DIR")) as tmp:
            cs_path, pk_path = os.path.join(tmp, "state.callstate"), os.path.join(tmp, "state.pkl")
            for name, state in states.items():
                holder = Holder(state)
                key = callstate.state_key(holder)

                def cs_save(holder: Holder = holder) -> float:
                    timer.seconds = 0.0
                    start = time.perf_counter()
                    callstate.save([holder], cs_path)
                    return time.perf_counter() - start - timer.seconds

                def cs_load(holder: Holder = holder) -> float:
                    start = time.perf_counter()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", callstate.CallstateWarning)
                        callstate.load([holder], cs_path)
                    return time.perf_counter() - start

                def pk_save(holder: Holder = holder, key: str = key) -> float:
                    start = time.perf_counter()
                    with open(pk_path, "wb") as f:
                        pickle.dump({key: holder.state_dict()}, f, protocol=5)
                    return time.perf_counter() - start

                def pk_load(holder: Holder = holder, key: str = key) -> float:
                    start = time.perf_counter()
                    with open(pk_path, "rb") as f:
                        holder.load_state_dict(pickle.load(f)[key])
                    return time.perf_counter() - start

                parts = _codec.Encoder().encode(state)
                stream, buffers = bytes(parts[0]), [bytes(b) for b in parts[1:]]
                pickled = pickle.dumps(state, protocol=5)

                def encode(state: Any = state) -> float:
                    start = time.perf_counter()
                    _codec.Encoder().encode(state)
                    return time.perf_counter() - start

                def decode(stream: bytes = stream, buffers: list[bytes] = buffers) -> float:
                    start = time.perf_counter()
                    _codec.decode(stream, buffers)
                    return time.perf_counter() - start

                def dumps(state: Any = state) -> float:
                    start = time.perf_counter()
                    pickle.dumps(state, protocol=5)
                    return time.perf_counter() - start

                def loads(pickled: bytes = pickled) -> float:
                    start = time.perf_counter()
                    pickle.loads(pickled)
                    return time.perf_counter() - start

                cs_save(), pk_save(), cs_load(), pk_load()  # warm-up, and files for the first loads
                assert holder.state == state, f"{name}: the loaded state differs"
                fns = {"cs_save": cs_save, "pk_save": pk_save, "cs_load": cs_load, "pk_load": pk_load,
                       "encode": encode, "dumps": dumps, "decode": decode, "loads": loads}
                times: dict[str, list[float]] = {label: [] for label in fns}
                for _ in range(repeats):  # taking turns, so the machine's load hits both alike
                    for label, fn in fns.items():
                        gc.collect()
                        times[label].append(fn())
                row = {f"{k}_s": statistics.median(v) for k, v in times.items()}
                row["save_vs_pickle"] = row["cs_save_s"] / row["pk_save_s"]
                row["load_vs_pickle"] = row["cs_load_s"] / row["pk_load_s"]
                # The codec alone (bytes in memory), to tell its share from the rest of save and load.
                row["encode_vs_pickle"] = row["encode_s"] / row["dumps_s"]
                row["decode_vs_pickle"] = row["decode_s"] / row["loads_s"]
                results[name] = row
                holder.state = None
    finally:
        os.fsync = real_fsync
    return results


def int_keys_state(scale: int = 1) -> dict[str, Any]:
    """A dict of 100,000 int -> float: the decoder builds non-str keys through Python (issue 25)."""
    return {"int_float_dict_100k": {i: i / 3 for i in range(max(10, 100_000 // scale))}}


def _child(impl: str, repeats: int, scale: int, lightning: bool) -> dict[str, Any]:
    """One implementation's figures, in this process (started by ``by_implementation``)."""
    import callstate

    assert callstate.codec_implementation() == impl, (callstate.codec_implementation(), impl)
    out: dict[str, Any] = {"implementation": impl,
                           "files": file_ratios(repeats, scale, extra=int_keys_state(scale))}
    if lightning:
        from benchmarks.run import small_callbacks

        out["small"] = small_callbacks([max(10, 1000 // scale)], max(3, repeats))
    return out


def by_implementation(repeats: int = 5, scale: int = 1, lightning: bool = True) -> dict[str, Any]:
    """The file benchmark (and the 1,000-callback round trip against Lightning's path) for the
    compiled codec and the reference, each in its own process (``CALLSTATE_PURE_PYTHON=1``)."""
    import json
    import subprocess

    import callstate

    impls = ["python"] if callstate.codec_implementation() == "python" else ["c", "python"]
    results: dict[str, Any] = {}
    for impl in impls:
        env = dict(os.environ)
        env.pop("CALLSTATE_PURE_PYTHON", None)
        if impl == "python":
            env["CALLSTATE_PURE_PYTHON"] = "1"
        out = subprocess.run(
            [sys.executable, __file__, "--child", impl, "--repeats", str(repeats), "--scale", str(scale)]
            + ([] if lightning else ["--no-lightning"]),
            check=True, capture_output=True, text=True, env=env,
        ).stdout
        results[impl] = json.loads(out.strip().splitlines()[-1])
    return results


def file_table(results: dict[str, Any]) -> str:
    """The issue's table: save and load against pickle, per state, for each implementation; in
    brackets the codec alone (encode and decode in memory) against pickle.dumps and loads."""
    impls = list(results)
    head = " | ".join(f"{i}: save / load (codec alone: encode / decode), x pickle" for i in impls)
    lines = [f"| state (one callback) | pickle: save / load | {head} |",
             "| --- | --- | " + " | ".join("---" for _ in impls) + " |"]
    first = results[impls[0]]["files"]
    for name in first:
        p = first[name]
        cells = []
        for impl in impls:
            r = results[impl]["files"][name]
            cells.append(f"{r['save_vs_pickle']:.2f}x / {r['load_vs_pickle']:.2f}x "
                         f"(codec {r['encode_vs_pickle']:.2f}x / {r['decode_vs_pickle']:.2f}x)")
        lines.append(f"| {name} | {p['pk_save_s'] * 1e3:.1f} / {p['pk_load_s'] * 1e3:.1f} ms | "
                     + " | ".join(cells) + " |")
    if all("small" in results[i] for i in impls):
        cells = []
        for impl in impls:
            (n, r), = results[impl]["small"].items()
            cells.append(f"{r['callstate_s'] * 1e3:.1f} ms = {r['speedup_vs_lightning']:.1f}x faster "
                         f"than Lightning ({r['lightning_s'] * 1e3:.1f} ms), "
                         f"{r['ratio_vs_pickle']:.2f}x pickle")
        lines.append(f"| round trip, {int(n):,} callbacks | | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__" and "--child" in sys.argv:
    import argparse
    import json

    parser = argparse.ArgumentParser()
    parser.add_argument("--child", choices=("c", "python"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scale", type=int, default=1)
    parser.add_argument("--no-lightning", action="store_true")
    a = parser.parse_args()
    print(json.dumps(_child(a.child, a.repeats, a.scale, not a.no_lightning)))
elif __name__ == "__main__" and "--files" in sys.argv:
    print(file_table(by_implementation(scale=100 if "--quick" in sys.argv else 1)))
elif __name__ == "__main__":
    for state, row in codec(repeats=7).items():
        print(state, {k: round(v, 2) for k, v in row.items()})
    print("save (encode) of the issue's states, ms and ratio to pickle protocol 5:")
    for state, row in save_ratios().items():
        print(state, {k: round(v, 2) for k, v in row.items()})
