"""callstate benchmarks: speed as ratios against baselines measured in the same run.

Run ``make bench`` (or ``.venv/bin/python benchmarks/run.py``). It prints a table of medians and
ratios, writes ``benchmarks/results/results.json`` and draws ``benchmarks/results/scaling.png``.
``--quick`` runs every workload at toy sizes, to check that the suite still works.

Workloads (issue 7):
1. many small callbacks: a full round trip (gather, to bytes, from bytes, restore) through
   ``callstate.dumps``/``loads`` against Lightning's own path (A) and a bare pickle (B);
2. keys: ``callstate.state_key`` against Lightning's ``state_key`` built by ``_generate_state_key``;
3. large state: an EMA-like callback of 64 MB and 512 MB (numpy, torch), each case in a fresh process;
4. lazy restore: one callback restored from a file of 1,000 entries of ~20 KB, against decoding all;
5. import: ``import callstate`` against ``import lightning.pytorch``, in fresh processes;
6. codec: one state encoded and decoded by callstate's data codec, pickle and msgpack
   (``benchmarks/codec.py``);
7. remote: a 1 GB callback saved and loaded to S3 on loopback (moto's server) against s3fs's own
   ``pipe_file``/``cat_file`` of the same bytes (``benchmarks/remote.py``; issue 24).
8. codec files (issue 25): ``callstate.save``/``load`` of one callback holding each of the issue's
   five states (and an int-keyed dict), against pickle protocol 5 of the same state to a file, and
   the 1,000-callback round trip against Lightning's path, for the compiled codec and the
   reference, each in its own process (``benchmarks/codec.py --files`` runs it alone).
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import pickle
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import callstate  # noqa: E402
from benchmarks.codec import ISSUE_STATES, by_implementation, codec, file_table  # noqa: E402
from benchmarks.remote import remote  # noqa: E402

# Goals from issue 7: (label, ratio field, bound, "min" if the ratio must be at least the bound).
GOALS = [
    ("small callbacks: 20x faster than Lightning at 1,000", "small.1000.speedup_vs_lightning", 20.0, "min"),
    ("small callbacks: within 1.5x of bare pickle at 1,000", "small.1000.ratio_vs_pickle", 1.5, "max"),
    ("keys: not slower than Lightning", "keys.ratio_vs_lightning", 1.0, "max"),
    *[
        goal
        for kind in ("numpy", "torch")
        for goal in (
            (f"large state: save+load within 1.3x of torch ({kind}, 512 MB)",
             f"large.{kind}.512.ratio_vs_torch", 1.3, "max"),
            (f"large state: load peak extra RSS <= 1.2x state ({kind}, 512 MB)",
             f"large.{kind}.512.load_peak_x_state", 1.2, "max"),
        )
    ],
    ("lazy restore: 20x faster than decoding all", "lazy.speedup", 20.0, "min"),
    # Issue 25, with the compiled codec (no goal is checked where it is not built).
    ("small callbacks: 5x faster than Lightning at 1,000 (issue 25)",
     "codec_files.c.small.1000.speedup_vs_lightning", 5.0, "min"),
    *[
        (f"codec files: {state} {op} within 1.5x of pickle (issue 25)",
         f"codec_files.c.files.{state}.{op}_vs_pickle", 1.5, "max")
        for state in ISSUE_STATES
        for op in ("save", "load")
    ],
    ("import callstate under 50 ms", "import.callstate_ms", 50.0, "max"),
    ("remote: save+load to S3 within 1.2x of s3fs's own (1 GB)", "remote.ratio_vs_s3fs", 1.2, "max"),
]


def compare(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median wall time of each function over ``repeats`` rounds, after one untimed warm-up each.

    The functions take turns within each round, so a change in the machine's load (it is shared)
    affects them alike and their ratios stay meaningful.
    """
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            gc.collect()
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


# -- 1. many small callbacks ----------------------------------------------------------------------


def small_callbacks(sizes: list[int], repeats: int) -> dict[str, Any]:
    import torch
    from lightning.pytorch import Callback
    from lightning.pytorch.trainer.call import _call_callbacks_load_state_dict, _call_callbacks_state_dict

    class Counter(Callback):
        """The size of an EarlyStopping's state: a few ints and floats and a short list."""

        def __init__(self, index: int) -> None:
            self.index = index
            self.wait_count = index % 5
            self.stopped_epoch = 0
            self.best_score = 0.25 + index
            self.patience = 3
            self.history = [0.5, 0.25, 0.125]

        @property
        def state_key(self) -> str:
            return self._generate_state_key(index=self.index)

        def state_dict(self) -> dict[str, Any]:
            return {
                "wait_count": self.wait_count,
                "stopped_epoch": self.stopped_epoch,
                "best_score": self.best_score,
                "patience": self.patience,
                "history": list(self.history),
            }

        def load_state_dict(self, state: dict[str, Any]) -> None:
            self.wait_count = state["wait_count"]
            self.stopped_epoch = state["stopped_epoch"]
            self.best_score = state["best_score"]
            self.patience = state["patience"]
            self.history = state["history"]

    class TrainerStub:
        """What Lightning's two functions use of a Trainer."""

        def __init__(self, callbacks: list[Counter]) -> None:
            self.callbacks = callbacks
            self.lightning_module = None

    results: dict[str, Any] = {}
    for n in sizes:
        callbacks = [Counter(i) for i in range(n)]
        trainer = TrainerStub(callbacks)
        registry = callstate.CallbackRegistry(callbacks)

        def lightning(trainer: TrainerStub = trainer) -> None:
            checkpoint = {"callbacks": _call_callbacks_state_dict(trainer)}  # type: ignore[arg-type]
            buffer = io.BytesIO()
            torch.save(checkpoint, buffer)
            loaded = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
            _call_callbacks_load_state_dict(trainer, loaded)  # type: ignore[arg-type]

        def bare_pickle(callbacks: list[Counter] = callbacks) -> None:
            data = pickle.dumps({cb.state_key: cb.state_dict() for cb in callbacks}, protocol=5)
            states = pickle.loads(data)
            for cb in callbacks:
                cb.load_state_dict(states[cb.state_key])

        def with_callstate(registry: callstate.CallbackRegistry = registry) -> None:
            callstate.loads(registry, callstate.dumps(registry))

        r = max(3, repeats if n <= 1000 else repeats // 2)
        t = compare({"a": lightning, "b": bare_pickle, "c": with_callstate}, r)
        a, b, c = t["a"], t["b"], t["c"]
        results[str(n)] = {
            "callstate_s": c,
            "lightning_s": a,
            "pickle_s": b,
            "speedup_vs_lightning": a / c,
            "ratio_vs_pickle": c / b,
        }
        del callbacks, trainer, registry
        gc.collect()
    return results


# -- 2. keys --------------------------------------------------------------------------------------


def keys(count: int, repeats: int) -> dict[str, Any]:
    from lightning.pytorch import Callback

    class LightningStopper(Callback):
        def __init__(self, monitor: str, mode: str) -> None:
            self.monitor, self.mode = monitor, mode

        @property
        def state_key(self) -> str:
            return self._generate_state_key(monitor=self.monitor, mode=self.mode)

    @callstate.stateful(identity=("monitor", "mode"))
    class CallstateStopper(Callback):
        def __init__(self, monitor: str, mode: str) -> None:
            self.monitor, self.mode = monitor, mode

    # Same class name on both sides, so the keys are equal strings.
    LightningStopper.__qualname__ = CallstateStopper.__qualname__ = "EarlyStopping"
    lt = [LightningStopper(f"val_loss_{i}", "min") for i in range(count)]
    cs = [CallstateStopper(f"val_loss_{i}", "min") for i in range(count)]
    assert [o.state_key for o in lt] == [callstate.state_key(o) for o in cs], "keys differ"
    state_key = callstate.state_key

    def lightning() -> None:
        for o in lt:
            o.state_key  # noqa: B018

    def with_callstate() -> None:
        for o in cs:
            state_key(o)

    t = compare({"a": lightning, "c": with_callstate}, repeats * 2)
    a, c = t["a"], t["c"]
    return {
        "count": count,
        "callstate_us": c / count * 1e6,
        "lightning_us": a / count * 1e6,
        "ratio_vs_lightning": c / a,
    }


# -- 3. large state -------------------------------------------------------------------------------


def large_state(sizes_mb: list[int], repeats_by_mb: dict[int, int]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="callstate-bench-", dir=os.environ.get("BENCH_DIR")) as tmp:
        for kind in ("numpy", "torch"):
            results[kind] = {}
            for mb in sizes_mb:
                row: dict[str, Any] = {}
                for method in ("callstate", "torch", "copy"):
                    repeats = repeats_by_mb.get(mb, 1)
                    if kind == "numpy" and method == "torch":
                        repeats = min(repeats, 2)  # torch.save pickles arrays inline: 10x slower
                    out = subprocess.run(
                        [sys.executable, str(HERE / "large_state.py"), kind, str(mb), method,
                         str(repeats), tmp],
                        check=True, capture_output=True, text=True,
                    ).stdout
                    row[method] = json.loads(out.strip().splitlines()[-1])
                cs, th, cp = row["callstate"], row["torch"], row["copy"]
                state = cs["state_bytes"]
                cs_total = cs["save_s"] + cs["load_s"]
                row.update(
                    state_bytes=state,
                    ratio_vs_torch=cs_total / (th["save_s"] + th["load_s"]),
                    ratio_vs_copy=cs_total / (cp["save_s"] + cp["load_s"]),
                    load_peak_x_state=cs["load_peak_bytes"] / state,
                    save_peak_x_state=cs["save_peak_bytes"] / state,
                    torch_load_peak_x_state=th["load_peak_bytes"] / state,
                )
                results[kind][str(mb)] = row
    return results


# -- 4. lazy restore ------------------------------------------------------------------------------


class Series:
    """A callback holding a list of floats (~20 KB pickled at 2,000 floats)."""

    def __init__(self, index: int, length: int = 0) -> None:
        self.state_key = f"Series{{'index': {index}}}"
        self.values = [float(i) / 7 for i in range(length)]

    def state_dict(self) -> dict[str, Any]:
        return {"values": self.values}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.values = state["values"]


def lazy(entries: int, floats: int, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="callstate-bench-") as tmp:
        path = os.path.join(tmp, "many.callstate")
        callstate.save([Series(i, floats) for i in range(entries)], path)
        one = Series(entries // 2)

        def restore_one() -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", callstate.CallstateWarning)
                callstate.load([one], path)
            assert len(one.values) == floats

        def decode_all() -> None:
            assert len(callstate.read(path)) == entries

        t = compare({"one": restore_one, "all": decode_all}, repeats)
        one_s, all_s = t["one"], t["all"]
        size = os.path.getsize(path)
    return {
        "entries": entries,
        "file_bytes": size,
        "restore_one_s": one_s,
        "decode_all_s": all_s,
        "speedup": all_s / one_s,
    }


# -- 5. import ------------------------------------------------------------------------------------


def import_time(module: str, repeats: int) -> float:
    """Median time of ``import module`` in a fresh interpreter, in milliseconds."""
    code = (
        "import time; t = time.perf_counter(); import " + module + "; "
        "print(time.perf_counter() - t)"
    )
    times = []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT
        ).stdout
        times.append(float(out.strip().splitlines()[-1]) * 1000)
    return statistics.median(times)


def imports(repeats: int) -> dict[str, Any]:
    cs = import_time("callstate", repeats)
    lt = import_time("lightning.pytorch", max(1, repeats // 2))
    return {"callstate_ms": cs, "lightning_ms": lt, "speedup": lt / cs}


# -- report ---------------------------------------------------------------------------------------


def lookup(results: dict[str, Any], dotted: str) -> Any:
    value: Any = results
    for part in dotted.split("."):
        value = value[part]
    return value


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions: dict[str, str] = {}
    for name in ("torch", "lightning", "numpy"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = "not installed"
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "callstate": callstate.__version__,
        **versions,
    }


def table(results: dict[str, Any]) -> str:
    lines = ["| workload | callstate | baseline | ratio |", "| --- | --- | --- | --- |"]
    for n, row in results["small"].items():
        lines.append(
            f"| round trip, {int(n):,} callbacks | {row['callstate_s'] * 1e3:.2f} ms | Lightning "
            f"{row['lightning_s'] * 1e3:.2f} ms, pickle {row['pickle_s'] * 1e3:.2f} ms | "
            f"{row['speedup_vs_lightning']:.1f}x faster than Lightning, "
            f"{row['ratio_vs_pickle']:.2f}x pickle |"
        )
    k = results["keys"]
    lines.append(
        f"| state key | {k['callstate_us']:.2f} us | Lightning {k['lightning_us']:.2f} us | "
        f"{k['ratio_vs_lightning']:.2f}x Lightning's time |"
    )
    for kind, by_mb in results["large"].items():
        for mb, row in by_mb.items():
            cs, th, cp = row["callstate"], row["torch"], row["copy"]
            lines.append(
                f"| {mb} MB {kind}: save + load | {cs['save_s']:.2f} + {cs['load_s']:.2f} s | torch "
                f"{th['save_s']:.2f} + {th['load_s']:.2f} s, "
                f"copy {cp['save_s']:.2f} + {cp['load_s']:.2f} s | "
                f"{row['ratio_vs_torch']:.2f}x torch, {row['ratio_vs_copy']:.1f}x copy |"
            )
            lines.append(
                f"| {mb} MB {kind}: peak extra RSS, load | {row['load_peak_x_state']:.2f}x state | torch "
                f"{row['torch_load_peak_x_state']:.2f}x state | save {row['save_peak_x_state']:.2f}x state |"
            )
    z = results["lazy"]
    lines.append(
        f"| restore 1 of {z['entries']:,} entries | {z['restore_one_s'] * 1e3:.2f} ms | decode all "
        f"{z['decode_all_s'] * 1e3:.2f} ms | {z['speedup']:.0f}x faster |"
    )
    i = results["import"]
    lines.append(
        f"| import | {i['callstate_ms']:.1f} ms | lightning.pytorch {i['lightning_ms']:.0f} ms | "
        f"{i['speedup']:.0f}x faster |"
    )
    for state, row in results.get("codec", {}).items():
        msgpack = f", msgpack {row['msgpack_us']:.1f} us" if "msgpack_us" in row else ""
        lines.append(
            f"| codec, {state.replace('_', ' ')} state | {row['callstate_us']:.1f} us | pickle "
            f"{row['pickle_us']:.1f} us{msgpack} | {row['ratio_vs_pickle']:.1f}x pickle |"
        )
    return "\n".join(lines)


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for label, field, bound, sense in GOALS:
        try:
            value = float(lookup(results, field))
        except KeyError:
            continue
        met = value >= bound if sense == "min" else value <= bound
        out.append({"goal": label, "value": value, "bound": bound, "met": met})
    return out


def plot(results: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (install the 'bench' extra)", file=sys.stderr)
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    small = results["small"]
    ns = [int(n) for n in small]
    for field, label, style in (
        ("lightning_s", "Lightning (torch.save/load)", "s-"),
        ("pickle_s", "bare pickle", "^-"),
        ("callstate_s", "callstate dumps/loads", "o-"),
    ):
        left.plot(ns, [small[str(n)][field] * 1e3 for n in ns], style, label=label)
    left.set(xscale="log", yscale="log", xlabel="callbacks", ylabel="round trip (ms)",
             title="Many small callbacks")
    left.legend()
    left.grid(True, which="both", alpha=0.3)
    for kind, style in (("numpy", "-"), ("torch", "--")):
        by_mb = results["large"][kind]
        mbs = [int(m) for m in by_mb]
        for method, marker in (("callstate", "o"), ("torch", "s"), ("copy", "^")):
            right.plot(
                mbs,
                [by_mb[str(m)][method]["save_s"] + by_mb[str(m)][method]["load_s"] for m in mbs],
                marker + style,
                label=f"{method} ({kind})",
            )
    right.set(xscale="log", yscale="log", xlabel="state (MB)", ylabel="save + load (s)",
              title="Large state")
    right.legend(fontsize=8)
    right.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="toy sizes: check that the suite runs")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="directory for JSON and PNG")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.quick:
        sizes, repeats, key_count, mbs, rep_mb, lazy_n, imp = [10, 100], 3, 1000, [1], {}, 50, 1
    else:
        sizes, repeats, key_count, mbs, rep_mb, lazy_n, imp = (
            [10, 100, 1000, 10000], 9, 10000, [64, 512], {64: 7, 512: 5}, 1000, 5
        )
    results: dict[str, Any] = {"quick": args.quick}
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("small", lambda: small_callbacks(sizes, repeats)),
        ("keys", lambda: keys(key_count, repeats)),
        ("lazy", lambda: lazy(lazy_n, 2000, repeats)),
        ("import", lambda: imports(imp)),
        ("large", lambda: large_state(mbs, rep_mb)),
        ("codec", lambda: codec(repeats, rounds=20 if args.quick else 200)),
        ("remote", lambda: remote(4 if args.quick else 1024, 1 if args.quick else 3)),
        ("codec_files", lambda: by_implementation(3 if args.quick else 5, scale=100 if args.quick else 1)),
    ]
    for name, step in steps:
        t = time.perf_counter()
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results[name] = step()
        print(f"  {name} took {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
    results["machine"] = machine()
    results["goals"] = goals(results)
    results["seconds"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    drawn = plot(results, args.out / "scaling.png")
    print(table(results))
    print()
    print("Issue 25: one callback saved and loaded through files, against pickle protocol 5:")
    print(file_table(results["codec_files"]))
    print()
    for g in results["goals"]:
        print(f"{'met ' if g['met'] else 'MISS'}  {g['goal']}: {g['value']:.2f} (bound {g['bound']})")
    m = results["machine"]
    print(
        f"\n{m['nproc']} cores, {m['cpu']}, Python {m['python']}, torch {m['torch']}, "
        f"lightning {m['lightning']}; {results['seconds']:.0f} s; results in {args.out}"
        + ("" if drawn else " (no plot)")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
