"""Atomic saves: real processes killed with SIGKILL, concurrent writers, leftover temp files."""

from __future__ import annotations

import os
import pathlib
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time
import warnings

import pytest

import callstate

WRITER = textwrap.dedent(
    """
    import sys
    import callstate

    path, writer, start = sys.argv[1], sys.argv[2], int(sys.argv[3])
    count = int(sys.argv[4]) if len(sys.argv) > 4 else 10**9
    print("ready", flush=True)
    for n in range(start, start + count):
        # A large, self-checking state: every piece names the same writer and n.
        callstate.save(
            {"meta": {"writer": writer, "n": n}, "blob": bytes([n % 256]) * 400_000,
             "list": [n] * 2_000},
            path,
        )
        print("saved", n, flush=True)
    """
)


def _check(path: pathlib.Path) -> tuple[str, int]:
    """Read ``path`` and return (writer, n), asserting the state is one complete, consistent write."""
    states = callstate.read(path)
    writer, n = states["meta"]["writer"], states["meta"]["n"]
    assert states["blob"] == bytes([n % 256]) * 400_000
    assert states["list"] == [n] * 2_000
    return writer, n


def _temps(directory: pathlib.Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".callstate-tmp")]


@pytest.mark.slow
def test_sigkill_at_random_moments_leaves_old_or_new_state(tmp_path: pathlib.Path) -> None:
    """100 SIGKILLs at random moments of a save loop: the path always loads as one complete state."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    path = tmp_path / "state.callstate"
    callstate.save({"meta": {"writer": "init", "n": 0}, "blob": bytes([0]) * 400_000, "list": [0] * 2_000}, path)
    rng = random.Random(7)
    last = 0
    interrupted = 0  # kills that landed mid-write, leaving a temp file behind
    for round_ in range(100):
        proc = subprocess.Popen(
            [sys.executable, str(script), str(path), "w", str(last + 1)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        if round_ % 4 == 0:
            # However loaded the machine, let some saves complete so the state keeps moving on.
            assert proc.stdout.readline().startswith("saved")
            time.sleep(rng.uniform(0, 0.02))
        else:
            time.sleep(rng.uniform(0, 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        interrupted += bool(_temps(tmp_path))
        _writer, n = _check(path)
        assert n >= last, f"round {round_}: went back from {last} to {n}"
        last = n
    # A save by a new process removes every temp file the killed writers left behind.
    callstate.save({"meta": {"writer": "final", "n": last}, "blob": bytes([last % 256]) * 400_000,
                    "list": [last] * 2_000}, path)
    assert _temps(tmp_path) == []
    assert last > 0, "no save ever completed: the kills came too early to test anything"
    assert interrupted > 0, "no kill landed during a write: the test proved nothing"


@pytest.mark.slow
def test_concurrent_writers_never_fail_and_always_leave_a_complete_file(tmp_path: pathlib.Path) -> None:
    """Two processes saving to one path at once both succeed; every read sees one complete write."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    path = tmp_path / "shared.callstate"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(path), name, "0", "60"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    seen = set()
    while any(p.poll() is None for p in procs):
        if path.exists():
            seen.add(_check(path)[0])
    errors = [p.stderr.read() for p in procs if p.stderr is not None]
    for p in procs:
        assert p.wait() == 0, errors
        assert p.stderr is not None
        p.stderr.close()
    writer, n = _check(path)
    assert writer in {"a", "b"} and n == 59
    assert seen <= {"a", "b"}
    assert _temps(tmp_path) == []


def test_leftover_temp_of_a_dead_writer_is_ignored_then_removed(tmp_path: pathlib.Path) -> None:
    """A temp file left by a dead process is ignored by load and removed by the next save."""
    path = tmp_path / "s.callstate"
    callstate.save({"a": 1}, path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = tmp_path / f".s.callstate.{socket.gethostname()}.{pid}.abcdef012345.callstate-tmp"
    stale.write_bytes(b"half a file")
    assert callstate.read(path) == {"a": 1}
    callstate.save({"a": 2}, path)
    assert not stale.exists()
    assert callstate.read(path) == {"a": 2}


def test_temp_of_a_live_writer_is_not_removed(tmp_path: pathlib.Path) -> None:
    """A temp file whose writer is still alive is left alone (that writer must not fail)."""
    path = tmp_path / "s.callstate"
    live = tmp_path / f".s.callstate.{socket.gethostname()}.{os.getpid()}.abcdef012345.callstate-tmp"
    live.write_bytes(b"in progress")
    callstate.save({"a": 1}, path)
    assert live.exists()


def test_other_files_in_the_directory_are_never_touched(tmp_path: pathlib.Path) -> None:
    """Only temp files of the same target are cleaned up."""
    other = tmp_path / ".other.callstate.host.1.abc.callstate-tmp"
    other.write_bytes(b"x")
    keep = tmp_path / "notes.txt"
    keep.write_text("x")
    callstate.save({"a": 1}, tmp_path / "s.callstate")
    assert other.exists() and keep.exists()


@pytest.mark.parametrize(
    "middle",
    ["99999999999999999999", "\u00b2", "0", "4194305", "12a", "", "\u0661\u0662"],
    ids=["huge-pid", "superscript-two", "zero", "beyond-pid-max", "not-digits", "empty", "arabic-digits"],
)
def test_temp_names_that_are_not_exactly_ours_are_left_alone(tmp_path: pathlib.Path, middle: str) -> None:
    """A file named like our temp files but with a pid that is no pid (huge, non-ASCII) neither fails the save nor is removed."""
    path = tmp_path / "s.callstate"
    odd = tmp_path / f".s.callstate.{socket.gethostname()}.{middle}.abcdef012345.callstate-tmp"
    odd.write_bytes(b"someone else's")
    callstate.save({"a": 1}, path)
    assert callstate.read(path) == {"a": 1}
    assert odd.read_bytes() == b"someone else's"


def test_failed_save_leaves_previous_file_and_no_temp(tmp_path: pathlib.Path) -> None:
    """A save that fails while serialising leaves the previous file intact and no temp file."""
    import threading

    path = tmp_path / "s.callstate"
    callstate.save({"a": 1}, path)
    with pytest.raises(callstate.errors.SerializationError):
        callstate.save({"a": threading.Lock()}, path)
    assert callstate.read(path) == {"a": 1}
    assert _temps(tmp_path) == []


def test_save_overwrites_a_file_being_read(tmp_path: pathlib.Path) -> None:
    """States kept undecoded from a file survive that file being replaced by the next save."""

    class Cb:
        state_key = "cb"

        def state_dict(self) -> int:
            return 1

        def load_state_dict(self, state: int) -> None:
            pass

    path = tmp_path / "s.callstate"
    callstate.save({"cb": 0, "other": {"big": list(range(1000))}}, path)
    reg = callstate.CallbackRegistry([Cb()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", callstate.CallstateWarning)
        callstate.load(reg, path)
    callstate.save(reg, path)
    callstate.save(reg, path)
    assert callstate.read(path) == {"cb": 1, "other": {"big": list(range(1000))}}


HOLDER = textwrap.dedent(
    """
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o666)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("locked", flush=True)
    sys.stdin.read()
    """
)


def _dead_pid() -> int:
    """Return the pid of a process that has exited: no process of this PID namespace has it."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(dead.stdout)


@pytest.mark.skipif(sys.platform == "win32", reason="PID namespaces and flock are POSIX")
def test_temp_of_a_live_writer_in_another_pid_namespace_is_not_removed(tmp_path: pathlib.Path) -> None:
    """A temp file whose pid is dead here but whose lock a live process holds (another container) is kept; an unlocked one goes."""
    path = tmp_path / "s.callstate"
    host = socket.gethostname()
    theirs = tmp_path / f".s.callstate.{host}.{_dead_pid()}.abcdef012345.callstate-tmp"
    left = tmp_path / f".s.callstate.{host}.{_dead_pid()}.0123456789ab.callstate-tmp"
    left.write_bytes(b"half a file")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(theirs)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        callstate.save({"a": 1}, path)
        assert theirs.exists() and not left.exists()
        assert callstate.read(path) == {"a": 1}
    finally:
        holder.communicate("", timeout=60)
    callstate.save({"a": 2}, path)  # its writer gone, its lock with it
    assert not theirs.exists()


@pytest.mark.skipif(sys.platform == "win32", reason="flock is POSIX")
def test_a_writer_holds_the_lock_of_its_temp_file_until_it_is_in_place(tmp_path: pathlib.Path) -> None:
    """While a save writes, its temp file's lock is held: another process cannot take it."""
    from callstate._io._files import atomic_write

    probe = "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY)\ntry:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n    print('held')\nelse:\n    print('free')"
    seen = []

    def write(f: object) -> None:
        [tmp] = tmp_path.glob(".s.callstate.*.callstate-tmp")
        proc = subprocess.run([sys.executable, "-c", probe, str(tmp)], capture_output=True, text=True, timeout=60)
        seen.append(proc.stdout.strip() or proc.stderr)

    atomic_write(tmp_path / "s.callstate", write)
    assert seen == ["held"]
