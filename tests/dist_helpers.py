"""Real torch.distributed process groups for tests: ranks on loopback with gloo, and their callbacks.

``Cluster(world_size)`` starts ``world_size`` spawned processes that join one gloo process group on
loopback (rendezvous through a file) and then run, on every rank at once, the functions the test sends with ``cluster.run(fn,
*args)``; it returns the results in rank order, or fails with every failing rank's traceback. Keeping
the group alive across tests pays the start-up (importing torch) once per world size.
Functions sent must be importable (module level), as must the callbacks below.
"""

from __future__ import annotations

import datetime
import multiprocessing
import os
import queue
import socket
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import callstate

_START_TIMEOUT = 120.0


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(rank: int, world_size: int, init_file: str, tasks: Any, results: Any) -> None:
    import torch.distributed as dist

    # Unexpected callstate warnings fail the task, as pytest's filterwarnings=error does in-process.
    warnings.simplefilter("error", callstate.CallstateWarning)
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=60),
    )
    results.put((rank, True, "ready"))
    try:
        while True:
            task = tasks.get()
            if task is None:
                break
            fn, args = task
            try:
                results.put((rank, True, fn(*args)))
            except BaseException:
                results.put((rank, False, traceback.format_exc()))
    finally:
        dist.destroy_process_group()


class Cluster:
    """``world_size`` processes in one gloo process group, running what ``run`` sends them."""

    def __init__(self, world_size: int, *, timeout: float = 60.0) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.world_size = world_size
        self.timeout = timeout
        # Rendezvous through a file, not a port: two groups starting at once cannot pick the same one.
        self._dir = tempfile.TemporaryDirectory(prefix="callstate-dist-")
        init_file = os.path.join(self._dir.name, "rendezvous")
        self._tasks = [ctx.Queue() for _ in range(world_size)]
        self._results = ctx.Queue()
        self._procs = [
            ctx.Process(
                target=_serve, args=(r, world_size, init_file, self._tasks[r], self._results), daemon=True
            )
            for r in range(world_size)
        ]
        for p in self._procs:
            p.start()

    def wait_ready(self) -> None:
        """Block until every rank has joined the process group."""
        self._collect(_START_TIMEOUT)

    def _collect(self, timeout: float) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        failures: dict[int, str] = {}
        deadline = time.monotonic() + timeout
        for _ in range(self.world_size):
            while True:
                try:
                    rank, ok, value = self._results.get(timeout=1.0)
                    break
                except queue.Empty:
                    dead = {r: p.exitcode for r, p in enumerate(self._procs) if not p.is_alive()}
                    if dead or time.monotonic() > deadline:
                        self.close()
                        raise AssertionError(
                            f"ranks did not answer (exit codes of dead ranks: {dead}, waited up to "
                            f"{timeout} s); results so far: {out!r}"
                        ) from None
            if ok:
                out[rank] = value
            else:
                failures[rank] = value
        if failures:
            raise AssertionError(
                "\n".join(f"--- rank {r} failed:\n{tb}" for r, tb in sorted(failures.items()))
            )
        return out

    def run(self, fn: Callable[..., Any], *args: Any) -> list[Any]:
        """Run ``fn(*args)`` on every rank; return the results by rank."""
        for q in self._tasks:
            q.put((fn, args))
        return self._collect(self.timeout)

    def close(self) -> None:
        """Stop every rank (each destroys its process group) and reap the processes."""
        for q, p in zip(self._tasks, self._procs, strict=True):
            if p.is_alive():
                q.put(None)
        for p in self._procs:
            p.join(timeout=20)
            if p.is_alive():
                p.kill()
                p.join()
        for q in [*self._tasks, self._results]:
            q.close()
            q.join_thread()
        self._dir.cleanup()


def rank() -> int:
    """Return this process's rank in the default group."""
    import torch.distributed as dist

    return int(dist.get_rank())


def error_info(exc: BaseException) -> dict[str, Any]:
    """Return an exception's type name, message and public attributes, to send back to the test."""
    attributes = {k: v for k, v in vars(exc).items() if not k.startswith("_") or k == "__notes__"}
    return {"type": type(exc).__name__, "message": str(exc), **attributes}


# -- callbacks --------------------------------------------------------------------------------------


@callstate.stateful(identity=("what",), state=("count",))
class Counter:
    """A global callback: its state is the same on every rank."""

    def __init__(self, what: str, count: int = 0) -> None:
        self.what = what
        self.count = count


@callstate.stateful(identity=("name",), state=("position", "seen"), per_rank=True)
class ShardCursor:
    """A per-rank callback: where this rank is in its data shard, and which samples it has seen."""

    def __init__(self, name: str, position: int = 0, seen: list[int] | None = None) -> None:
        self.name = name
        self.position = position
        self.seen = list(seen or [])

    def reshard(self, states_by_rank: list[dict[str, Any]], world_size: int) -> list[dict[str, Any]]:
        """Deal every seen sample to the new ranks round-robin; positions follow the counts."""
        seen = sorted(s for state in states_by_rank for s in state["seen"])
        dealt = [seen[r::world_size] for r in range(world_size)]
        return [{"position": len(d), "seen": d} for d in dealt]


class Timer:
    """A per-rank callback by registration (``register(..., per_rank=True)``), with no ``reshard``."""

    def __init__(self) -> None:
        self.elapsed = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"elapsed": self.elapsed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.elapsed = state["elapsed"]


def cursor_for(rank: int) -> ShardCursor:
    """Return a cursor whose state differs on every rank."""
    return ShardCursor("train", position=10 * rank + 3, seen=[100 * rank + i for i in range(rank + 2)])


def trained_registry(rank: int) -> callstate.CallbackRegistry:
    """Return a registry as rank ``rank`` has it after training: per-rank states differ on every rank."""
    registry = callstate.CallbackRegistry([Counter("steps", count=41), cursor_for(rank)])
    timer = Timer()
    timer.elapsed = 1.5 + rank
    registry.register(timer, per_rank=True)
    return registry


def fresh_registry() -> callstate.CallbackRegistry:
    """Return the same callbacks as ``trained_registry``, untrained."""
    registry = callstate.CallbackRegistry([Counter("steps"), ShardCursor("train")])
    registry.register(Timer(), per_rank=True)
    return registry


def observed(registry: callstate.CallbackRegistry) -> dict[str, Any]:
    """Return every callback's current state by key."""
    return {k: obj.state_dict() for k, obj in registry.items()}  # type: ignore[attr-defined]


class Opaque:
    """A class no allowlist admits: a state holding one decodes only from a trusted file."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque) and other.value == self.value

    __hash__ = None  # type: ignore[assignment]


class CountingTimer(Timer):
    """A per-rank Timer counting its state_dict calls."""

    def __init__(self) -> None:
        super().__init__()
        self.dumps = 0

    def state_dict(self) -> dict[str, Any]:
        self.dumps += 1
        return super().state_dict()


class Uncopyable(Timer):
    """A Timer whose current state holds a lock: it cannot be copied for a rollback."""

    def state_dict(self) -> dict[str, Any]:
        import threading

        return {"elapsed": self.elapsed, "lock": threading.Lock()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.elapsed = state["elapsed"]


# -- functions run on every rank, at an fsspec URL ---------------------------------------------------


def save_to_url(url: str, options: dict[str, Any]) -> None:
    """Save this rank's trained registry to ``url`` through ``callstate.distributed.save``."""
    import callstate.distributed as csd

    csd.save(trained_registry(rank()), url, storage_options=options)


def load_from_url(url: str, options: dict[str, Any]) -> dict[str, Any]:
    """Load a fresh registry from ``url``; return its states and what the report restored."""
    import callstate.distributed as csd

    registry = fresh_registry()
    report = csd.load(registry, url, storage_options=options)
    return {"states": observed(registry), "restored": sorted(report.restored)}
