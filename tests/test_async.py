"""Background saves: states captured at the call, one write per path at a time, faults through the future."""

from __future__ import annotations

import pathlib
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import Future
from typing import Any

import numpy as np
import pytest
import torch

import callstate
import callstate._io._async as background
from callstate import loop
from callstate._io._files import read_meta


class EMA:
    """A callback holding a large array and a counter, changed in place as training goes on."""

    def __init__(self, size: int = 1 << 20) -> None:
        self.shadow = np.zeros(size, dtype=np.float32)
        self.weights = torch.zeros(size // 4)
        self.history: list[int] = []

    @property
    def state_key(self) -> str:
        return "EMA"

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": self.shadow, "weights": self.weights, "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.shadow, self.weights, self.history = state["shadow"], state["weights"], state["history"]

    def step(self, value: float) -> None:
        self.shadow += value
        self.weights.add_(value)
        self.history.append(int(value))


def test_save_async_returns_a_future_and_writes_the_states(tmp_path: pathlib.Path) -> None:
    """save_async returns a concurrent.futures.Future; once it is done the file holds the states."""
    ema = EMA()
    ema.step(1)
    future = callstate.save_async([ema], tmp_path / "a.callstate", meta={"step": 1})
    assert isinstance(future, Future)
    assert future.result(timeout=60) is None
    restored = EMA()
    callstate.load([restored], tmp_path / "a.callstate")
    assert (restored.shadow == 1).all() and (restored.weights == 1).all() and restored.history == [1]
    assert read_meta(tmp_path / "a.callstate") == {"step": 1}


def test_mutation_right_after_the_call_is_not_written(tmp_path: pathlib.Path) -> None:
    """Arrays, tensors and lists changed in place right after save_async returns are written as they were at the call."""
    ema = EMA(1 << 22)  # 16 MB: the write is still running when the state changes
    ema.step(1)
    future = callstate.save_async([ema], tmp_path / "a.callstate")
    for _ in range(3):
        ema.step(5)
    future.result(timeout=60)
    states = callstate.read(tmp_path / "a.callstate")["EMA"]
    assert (states["shadow"] == 1).all() and (states["weights"] == 1).all() and states["history"] == [1]


def test_a_mapping_with_bytearrays_and_non_contiguous_arrays_is_captured(tmp_path: pathlib.Path) -> None:
    """A bytearray, a strided array and a Fortran array changed after the call are written as they were."""
    blob = bytearray(b"a" * 200_000)
    strided = np.arange(400_000, dtype=np.int64)[::2]
    fortran = np.asfortranarray(np.ones((300, 300)))
    future = callstate.save_async({"s": {"blob": blob, "strided": strided, "fortran": fortran}}, tmp_path / "m.callstate")
    blob[:] = b"b" * 200_000
    strided[:] = -1
    fortran[:] = 0
    future.result(timeout=60)
    state = callstate.read(tmp_path / "m.callstate")["s"]
    assert state["blob"] == bytearray(b"a" * 200_000)
    assert (state["strided"] == np.arange(400_000)[::2]).all()
    assert (state["fortran"] == 1).all() and state["fortran"].flags.f_contiguous


def test_two_saves_to_one_path_in_quick_succession_leave_the_second(tmp_path: pathlib.Path) -> None:
    """Two background saves to one path, the second started while the first writes: the file holds the second's states."""
    path = tmp_path / "a.callstate"
    ema = EMA(1 << 22)
    ema.step(1)
    first = callstate.save_async([ema], path)
    ema.step(1)
    second = callstate.save_async([ema], path)
    second.result(timeout=60)
    assert first.done()
    states = callstate.read(path)["EMA"]
    assert (states["shadow"] == 2).all() and states["history"] == [1, 1]


def test_writes_to_one_path_run_one_at_a_time_and_in_order(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Of ten saves to one path (and one to another), at most one write per path runs at once, in call order."""
    running: dict[str, int] = {}
    most: dict[str, int] = {}
    order: list[int] = []
    lock = threading.Lock()
    real = background.atomic_write

    def slow_write(path: Any, write: Any, storage_options: Any = None) -> None:
        name = str(path)
        with lock:
            running[name] = running.get(name, 0) + 1
            most[name] = max(most.get(name, 0), running[name])
        time.sleep(0.01)
        real(path, write, storage_options)
        with lock:
            running[name] -= 1
            if name.endswith("a.callstate"):
                order.append(callstate.read(path)["n"])

    monkeypatch.setattr(background, "atomic_write", slow_write)
    futures = [callstate.save_async({"n": n}, tmp_path / "a.callstate") for n in range(10)]
    other = callstate.save_async({"n": -1}, tmp_path / "b.callstate")
    for f in [*futures, other]:
        f.result(timeout=60)
    assert most[str(tmp_path / "a.callstate")] == 1
    assert order == list(range(10))
    assert callstate.read(tmp_path / "a.callstate") == {"n": 9}


def test_a_failed_write_does_not_stop_the_next_one_to_the_path(tmp_path: pathlib.Path) -> None:
    """The first save's error is its own future's; a later save to the path still runs once the obstacle is gone."""
    target = tmp_path / "a.callstate"
    target.mkdir()
    first = callstate.save_async({"n": 1}, target)
    with pytest.raises(callstate.errors.CheckpointWriteError, match="is a directory") as e:
        first.result(timeout=60)
    assert isinstance(e.value, OSError) and e.value.path == str(target)
    target.rmdir()
    callstate.save_async({"n": 2}, target).result(timeout=60)
    assert callstate.read(target) == {"n": 2}


def test_errors_in_the_states_raise_at_the_call_and_write_nothing(tmp_path: pathlib.Path) -> None:
    """A state that cannot be serialised, or two callbacks with one key, raise at the call: no thread, no file."""

    class Same:
        state_key = "k"

        def state_dict(self) -> dict[str, int]:
            return {}

        def load_state_dict(self, state: dict[str, int]) -> None:
            pass

    with pytest.raises(callstate.DuplicateKeyError):
        callstate.save_async([Same(), Same()], tmp_path / "a.callstate")
    with pytest.raises(callstate.errors.SerializationError):
        callstate.save_async({1: "int key"}, tmp_path / "a.callstate")  # type: ignore[dict-item]
    assert list(tmp_path.iterdir()) == []


EXIT_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    import callstate

    state = {"blob": np.full(1 << 25, 7, dtype=np.uint8), "n": 3}  # 32 MB: written after the script ends
    callstate.save_async(state, sys.argv[1])
    print("returned", flush=True)
    """
)


def test_interpreter_exit_waits_for_pending_writes(tmp_path: pathlib.Path) -> None:
    """A script that ends right after save_async exits only once the file is complete and in place."""
    path = tmp_path / "a.callstate"
    proc = subprocess.run(
        [sys.executable, "-c", EXIT_CHILD, str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "returned"
    state = callstate.read(path)
    assert state["n"] == 3 and (state["blob"] == 7).all() and state["blob"].nbytes == 1 << 25


WRITER = textwrap.dedent(
    """
    import sys
    import callstate

    path, start = sys.argv[1], int(sys.argv[2])
    print("ready", flush=True)
    future = None
    for n in range(start, 10**9):
        # A large, self-checking state: every piece names the same n.
        future = callstate.save_async({"meta": {"n": n}, "blob": bytes([n % 256]) * 2_000_000,
                                       "list": [n] * 2_000}, path)
        future.result()
        print("saved", n, flush=True)
    """
)


def _check(path: pathlib.Path) -> int:
    """Read ``path`` and return n, asserting the state is one complete, consistent write."""
    states = callstate.read(path)
    n = states["meta"]["n"]
    assert states["blob"] == bytes([n % 256]) * 2_000_000
    assert states["list"] == [n] * 2_000
    return int(n)


@pytest.mark.slow
def test_sigkill_during_a_background_write_leaves_the_old_or_the_new_file(tmp_path: pathlib.Path) -> None:
    """40 SIGKILLs at random moments of a loop of background saves: the path always loads as one complete state."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    directory = tmp_path / "d"
    directory.mkdir()
    path = directory / "state.callstate"
    callstate.save({"meta": {"n": 0}, "blob": bytes([0]) * 2_000_000, "list": [0] * 2_000}, path)
    rng = random.Random(11)
    last = 0
    interrupted = 0  # kills that landed mid-write, leaving a temp file behind
    for round_ in range(40):
        proc = subprocess.Popen([sys.executable, str(script), str(path), str(last + 1)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        if round_ % 4 == 0:
            assert proc.stdout.readline().startswith("saved")
        time.sleep(rng.uniform(0, 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        interrupted += any(p.name.endswith(".callstate-tmp") for p in directory.iterdir())
        n = _check(path)
        assert n >= last, f"round {round_}: went back from {last} to {n}"
        last = n
    assert last > 0, "no save ever completed: the kills came too early to test anything"
    assert interrupted > 0, "no kill landed during a write: the test proved nothing"


def test_save_checkpoint_async_callstate_file_captures_at_the_call(tmp_path: pathlib.Path) -> None:
    """loop.save_checkpoint_async to a .callstate file: callbacks and a model as they were at the call."""
    model = torch.nn.Linear(64, 64)
    ema = EMA()
    ema.step(1)
    weight = model.weight.detach().clone()
    future = loop.save_checkpoint_async(tmp_path / "c.callstate", [ema], model=model, step=7)
    with torch.no_grad():
        model.weight.add_(1)
    ema.step(3)
    future.result(timeout=60)
    model2, ema2 = torch.nn.Linear(64, 64), EMA()
    loaded = loop.load_checkpoint(tmp_path / "c.callstate", [ema2], model=model2)
    assert torch.equal(model2.weight, weight) and (ema2.shadow == 1).all() and loaded.extra["step"] == 7


def test_save_checkpoint_async_torch_file_captures_at_the_call(tmp_path: pathlib.Path) -> None:
    """loop.save_checkpoint_async to a torch file: written in the background with the states of the call."""
    model = torch.nn.Linear(64, 64)
    ema = EMA()
    weight = model.weight.detach().clone()
    future = loop.save_checkpoint_async(tmp_path / "c.pt", [ema], model=model)
    with torch.no_grad():
        model.weight.add_(1)
    ema.step(3)
    future.result(timeout=60)
    model2, ema2 = torch.nn.Linear(64, 64), EMA()
    loop.load_checkpoint(tmp_path / "c.pt", [ema2], model=model2, trusted=True)  # numpy arrays in a torch file
    assert torch.equal(model2.weight, weight) and (ema2.shadow == 0).all() and ema2.history == []


def test_save_checkpoint_async_errors(tmp_path: pathlib.Path) -> None:
    """A name clash raises at the call; a directory in the way raises CheckpointWriteError from the future."""
    with pytest.raises(TypeError, match="save_checkpoint_async"):
        loop.save_checkpoint_async(tmp_path / "c.pt", [EMA()], callbacks=1)
    (tmp_path / "c.pt").mkdir()
    future = loop.save_checkpoint_async(tmp_path / "c.pt", [EMA()], step=1)
    with pytest.raises(callstate.errors.CheckpointWriteError, match="is a directory"):
        future.result(timeout=60)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available here: the CUDA capture runs on a machine with a GPU")


@CUDA
def test_cuda_tensors_are_captured_in_pinned_host_memory(tmp_path: pathlib.Path) -> None:
    """A CUDA tensor is copied to pinned host memory at the call; changed after it, the file has its value at the call."""
    from callstate._encoding import _arrays

    tensor = torch.ones(1 << 20, device="cuda")
    _arrays.CAPTURE.private = []
    try:
        assert _arrays._to_host(torch, tensor).is_pinned()
    finally:
        del _arrays.CAPTURE.private
    future = callstate.save_async({"t": {"w": tensor}}, tmp_path / "g.callstate")
    tensor.fill_(3)
    future.result(timeout=60)
    assert (callstate.read(tmp_path / "g.callstate")["t"]["w"] == 1).all()


def test_versions_are_written_as_save_writes_them(tmp_path: pathlib.Path) -> None:
    """A state at version 2 is saved with its version in the entry's info, with no entry of the versions."""

    @callstate.stateful(identity=("what",), state=("n",), version=2)
    class Versioned:
        def __init__(self, what: str) -> None:
            self.what, self.n = what, 5

    callbacks = [Versioned("a")]
    background_path, plain_path = tmp_path / "bg.callstate", tmp_path / "plain.callstate"
    callstate.save_async(callbacks, background_path).result(timeout=60)
    callstate.save(callbacks, plain_path)
    assert background_path.read_bytes() == plain_path.read_bytes()
    key = callstate.state_key(callbacks[0])
    assert [(i.key, i.version) for i in callstate.inspect(background_path)] == [(key, 2)]
    for path in (background_path, tmp_path / "loop.callstate"):
        if path.name == "loop.callstate":
            loop.save_checkpoint_async(path, callbacks, step=3).result(timeout=60)
        infos = {i.key: i.version for i in callstate.inspect(path)}
        assert infos[key] == 2 and "callstate:versions" not in infos


def test_a_malformed_versions_entry_is_refused_at_the_call(tmp_path: pathlib.Path) -> None:
    """save_async checks the mapping's versions entry as save does: SerializationError, nothing written."""
    with pytest.raises(callstate.errors.SerializationError, match="states to save"):
        callstate.save_async({"k": {"n": 1}, "callstate:versions": {"k": True}}, tmp_path / "x.callstate")
    assert list(tmp_path.iterdir()) == []


ATEXIT_CHILD = textwrap.dedent(
    """
    import atexit
    import sys
    import callstate

    def last_save():
        callstate.save_async({"n": 3, "blob": bytes(1 << 22)}, sys.argv[1])
        print("returned", flush=True)

    atexit.register(last_save)
    """
)


def test_save_async_from_an_atexit_handler_writes_the_file_before_the_process_ends(tmp_path: pathlib.Path) -> None:
    """save_async called while the interpreter exits writes its file before it returns; none is dropped."""
    path = tmp_path / "a.callstate"
    proc = subprocess.run(
        [sys.executable, "-c", ATEXIT_CHILD, str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "returned" and proc.stderr == ""
    assert callstate.read(path) == {"n": 3, "blob": bytes(1 << 22)}


ATEXIT_FAILING_CHILD = textwrap.dedent(
    """
    import atexit
    import sys
    import callstate

    def last_save():
        try:
            callstate.save_async({"n": 3}, sys.argv[1])
        except callstate.CheckpointWriteError as exc:
            print("raised", exc.errno, flush=True)

    atexit.register(last_save)
    """
)


def test_save_async_at_exit_raises_a_failed_write_at_the_call(tmp_path: pathlib.Path) -> None:
    """At interpreter exit, a write that fails raises CheckpointWriteError from save_async itself."""
    import errno

    path = tmp_path / "missing-directory" / "a.callstate"
    proc = subprocess.run(
        [sys.executable, "-c", ATEXIT_FAILING_CHILD, str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.stdout.strip() == f"raised {errno.ENOENT}", proc.stderr
