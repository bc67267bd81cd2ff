"""The data codec against pickle and msgpack: one state encoded and decoded, per kind of state.

Run alone (``.venv/bin/python benchmarks/codec.py``) or as the ``codec`` workload of ``run.py``.
msgpack is the C-backed candidate the format's docstring compares with; it is measured only where
it is installed (the ``bench`` extra installs it), with ``strict_types`` and an ext type for tuples,
the least it needs to round-trip these states at all.
"""

from __future__ import annotations

import pickle
import sys
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


if __name__ == "__main__":
    for state, row in codec(repeats=7).items():
        print(state, {k: round(v, 2) for k, v in row.items()})
    print("save (encode) of the issue's states, ms and ratio to pickle protocol 5:")
    for state, row in save_ratios().items():
        print(state, {k: round(v, 2) for k, v in row.items()})
