"""Decode hostile callstate files under a memory and time cap, one JSON line per case (for test_security).

Usage: ``python -W error hostile_child.py MANIFEST.json``, run with its working directory set to an
empty canary directory: a payload that ran would create a file there. The manifest gives the imports
to make first, the extra address space allowed, the time cap per decode, the cases (name, file,
key) and whether to decode trusted (only to check that the checks see a payload that runs). For each case the child prints ``{"start": name}`` and then ``{"result": {...}}`` with the
outcome of four decodes (``read``, ``read(lazy=True)`` then ``.decode()``, ``loads`` with a callback
that claims the key, ``loads([])``), their times, any file that appeared and any sign that a module
of the process was altered. Every decode runs under an interval timer whose default action kills the
process, so a hang shows as death by SIGALRM, a crash as death by its signal.
"""

from __future__ import annotations

import collections
import copyreg
import fractions
import importlib
import json
import os
import pathlib
import re
import resource
import signal
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import callstate

# Where a copyreg extension code maps to os.system: a process that registered it (as some library
# might) must still not run it through a callstate file.
EXTENSION_CODE = 0xF1

_FATAL = ("MemoryError", "RecursionError")


class Claimer:
    """A callback that claims one state key, so ``loads`` decodes that entry."""

    def __init__(self, key: str) -> None:
        self.state_key = key
        self.received: Any = None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Any) -> None:
        self.received = state


def _address_space() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        status = f.read()
    found = re.search(r"^VmSize:\s+(\d+) kB", status, re.MULTILINE)
    assert found is not None
    return int(found.group(1)) * 1024


def _chain(exc: BaseException) -> list[str]:
    """Names of ``exc`` and of every exception it was raised from or while handling."""
    names = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        names.append(type(current).__name__)
        current = current.__cause__ or current.__context__
    return names


def _describe(exc: BaseException) -> dict[str, Any]:
    return {
        "type": type(exc).__name__,
        "callstate": isinstance(exc, callstate.CallstateError),
        "chain": _chain(exc),
        "message": str(exc)[:400],
    }


class _Probe:
    """Functional checks and snapshots of classes a hostile pickle would poison process-wide."""

    def __init__(self) -> None:
        classes: list[type] = [
            fractions.Fraction,
            pathlib.PurePath,
            pathlib.PurePosixPath,
            pathlib.Path,
            collections.Counter,
            collections.OrderedDict,
            collections.defaultdict,
        ]
        np = sys.modules.get("numpy")
        if np is not None:
            classes += [np.dtype, np.ndarray]
        self.classes = classes
        self.snapshots = {cls: dict(vars(cls)) for cls in classes}
        self.system = os.system
        self.extensions = dict(copyreg._extension_registry)  # type: ignore[attr-defined]

    def problems(self) -> list[str]:
        found = []
        checks: dict[str, Callable[[], bool]] = {
            "Fraction(1, 3) + 1": lambda: fractions.Fraction(1, 3) + 1 == fractions.Fraction(4, 3),
            "PurePath('a').name": lambda: pathlib.PurePath("a").name == "a",
            "PurePosixPath('a/b').parent": lambda: str(pathlib.PurePosixPath("a/b").parent) == "a",
            "Counter('aab')": lambda: collections.Counter("aab")["a"] == 2 and collections.Counter()["b"] == 0,
            "os.system": lambda: os.system is self.system,
            "copyreg extensions": lambda: dict(copyreg._extension_registry) == self.extensions,  # type: ignore[attr-defined]
        }
        np = sys.modules.get("numpy")
        if np is not None:
            checks["numpy dtype"] = lambda: not np.dtype("f8").hasobject and np.dtype("f8").itemsize == 8
            checks["numpy zeros"] = lambda: np.zeros(3).tolist() == [0.0, 0.0, 0.0]
        torch = sys.modules.get("torch")
        if torch is not None:
            checks["torch zeros"] = lambda: torch.zeros(2).tolist() == [0.0, 0.0]
        for what, check in checks.items():
            try:
                ok = check()
            except Exception as exc:
                found.append(f"{what} raises {exc!r:.200}")
                continue
            if not ok:
                found.append(f"{what} gives a wrong result")
        for cls, before in self.snapshots.items():
            after = vars(cls)
            changed = sorted(k for k in before.keys() | after.keys() if before.get(k) is not after.get(k))
            if changed:
                found.append(f"{cls.__qualname__} attributes changed: {changed}")
        return found


def _timed(cap: float, call: Callable[[], Any]) -> tuple[float, dict[str, Any] | None, Any]:
    """Run ``call`` under the kill timer; return (seconds, error description or None, result)."""
    signal.setitimer(signal.ITIMER_REAL, cap)
    start = time.perf_counter()
    try:
        result = call()
        error = None
    except BaseException as exc:
        result, error = None, _describe(exc)
    elapsed = time.perf_counter() - start
    signal.setitimer(signal.ITIMER_REAL, 0)
    return elapsed, error, result


def _run_case(data: bytes, key: str, cap: float, trusted: bool) -> dict[str, Any]:
    outcomes: dict[str, Any] = {}
    times: dict[str, float] = {}

    def read() -> str:
        return type(callstate.read(data, trusted=trusted)[key]).__name__  # never repr: a decoded DAG is exponential

    def read_lazy() -> str:
        return type(callstate.read(data, trusted=trusted, lazy=True)[key].decode()).__name__

    def loads() -> str:
        claimer = Claimer(key)
        callstate.loads([claimer], data, trusted=trusted)
        return type(claimer.received).__name__

    def loads_unclaimed() -> dict[str, Any]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report = callstate.loads([], data, trusted=trusted)
        return {
            "restored": list(report.restored),
            "unexpected": list(report.unexpected),
            "warnings": [type(w.message).__name__ for w in caught],
        }

    modes: dict[str, Callable[[], Any]] = {
        "read": read, "read_lazy": read_lazy, "loads": loads, "loads_unclaimed": loads_unclaimed
    }
    exhausted = False
    for mode, call in modes.items():
        if exhausted:  # after memory or stack ran out once, the rest would only repeat it, slowly
            times[mode], outcomes[mode] = 0.0, {"type": "not run", "callstate": False, "chain": [], "message": ""}
            continue
        times[mode], error, value = _timed(cap, call)
        if error is None:
            outcomes[mode] = {"type": None, "report" if mode == "loads_unclaimed" else "decoded": value}
        else:
            outcomes[mode] = error
            exhausted = any(name in _FATAL for name in error["chain"])
    return {"outcomes": outcomes, "times": times}


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as f:
        manifest = json.load(f)
    for module in manifest["imports"]:
        importlib.import_module(module)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)  # no thread pool started later, under the address-space cap
    if "jax" in manifest["setup"]:
        sys.modules["jax"].devices()  # the backend's threads and arenas exist before the cap, as numpy's
    if "copyreg" in manifest["setup"]:
        copyreg.add_extension("os", "system", EXTENSION_CODE)
    probe = _Probe()
    canary = pathlib.Path.cwd()
    limit = _address_space() + manifest["headroom"]
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    for case in manifest["cases"]:
        print(json.dumps({"start": case["name"]}), flush=True)
        with open(case["path"], "rb") as f:
            data = f.read()
        result = _run_case(data, case["key"], manifest["time_cap"], manifest["trusted"])
        result["name"] = case["name"]
        result["canary"] = sorted(os.listdir(canary))
        result["poisoned"] = probe.problems()
        del data
        print(json.dumps({"result": result}), flush=True)


if __name__ == "__main__":
    main()
