"""Real accelerate runs for the tests: an Accelerator on CPU with a tiny model, alone or one per rank.

``run_ranks(fn, world_size, *args)`` starts ``world_size`` spawned processes that each build an
``Accelerator(cpu=True)`` from the environment a launcher sets (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``...), so accelerate itself joins them in a gloo process group on loopback; each runs
``fn(*args)`` and the results come back in rank order. Functions sent must be importable.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import traceback
from collections.abc import Callable
from typing import Any

from dist_helpers import free_port

import callstate


@callstate.stateful(identity=("what",), state=("count",))
class Counter:
    """A global callback with an identity: two of them are told apart by ``what``."""

    def __init__(self, what: str, count: int = 0) -> None:
        self.what = what
        self.count = count


@callstate.stateful(identity=("name",), state=("position",), per_rank=True)
class Cursor:
    """A per-rank callback: where this rank is in its shard."""

    def __init__(self, name: str, position: int = 0) -> None:
        self.name = name
        self.position = position


def prepared(seed: int = 0) -> tuple[Any, Any, Any]:
    """Return an Accelerator on CPU, and a tiny model and its optimizer prepared by it."""
    import accelerate
    import torch

    torch.manual_seed(seed)
    accelerator = accelerate.Accelerator(cpu=True)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    return accelerator, model, optimizer


def _serve(rank: int, world_size: int, port: int, fn: Callable[..., Any], args: Any, results: Any) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
        GLOO_SOCKET_IFNAME="lo",
        OMP_NUM_THREADS="1",  # accelerate warns when it is unset
    )
    try:
        results.put((rank, True, fn(*args)))
    except BaseException:
        results.put((rank, False, traceback.format_exc()))


def run_ranks(fn: Callable[..., Any], world_size: int, *args: Any, timeout: float = 120.0) -> list[Any]:
    """Run ``fn(*args)`` on ``world_size`` ranks launched as accelerate expects; return the results by rank."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_serve, args=(r, world_size, port, fn, args, results), daemon=True)
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    out: list[Any] = [None] * world_size
    failures = {}
    try:
        for _ in range(world_size):
            try:
                rank, ok, value = results.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"ranks did not answer in {timeout} s: {out!r}") from None
            if ok:
                out[rank] = value
            else:
                failures[rank] = value
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join()
    assert not failures, "\n".join(f"--- rank {r}:\n{tb}" for r, tb in sorted(failures.items()))
    return out
