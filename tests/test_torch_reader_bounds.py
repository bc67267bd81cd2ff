"""The torch pre-scan's bounds on work and memory: hashing through shared tuples, objects built per byte.

Every payload is a hand-made ``data.pkl`` in a torch.save zip, read in a child process under an
address-space cap (tests/torch_hostile.py); the memory tests measure the child's peak RSS growth
during the scan against the documented allowance, ALLOC_FACTOR x N + ALLOC_SLACK for a pickle of N bytes.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch_hostile import callbacks_pickle, checkpoint, integer, run_capped, shared_tuple, text

import callstate
from callstate._encoding._codec import ALLOC_FACTOR, ALLOC_SLACK
from callstate._torch._torch_reader import TorchFile

_HASHING = "whose hashing would take more than"

# Where a 40-level shared tuple gets hashed: opcodes that push a container holding T(40) (or, for
# the key, the key itself), all inside {"callbacks": {...}}.
_SHARING = {
    "dict key": callbacks_pickle(shared_tuple(40), integer(1)),
    "set member": callbacks_pickle(text("k"), b"\x8f(" + shared_tuple(40) + b"\x90"),
    "frozenset member": callbacks_pickle(text("k"), b"(" + shared_tuple(40) + b"\x91"),
    "key of a nested dict": callbacks_pickle(text("k"), b"}" + shared_tuple(40) + integer(1) + b"s"),
}


def _refused(result: dict[str, Any], path: Path, match: str) -> None:
    assert "death" not in result, f"the child died ({result['death']}):\n{result['stderr']}"
    assert result.get("type") == "CorruptCheckpointError" and result["callstate"], result
    assert str(path) in result["message"] and match in result["message"], result
    assert result["seconds"] < 5, result


@pytest.mark.slow
@pytest.mark.parametrize("where", sorted(_SHARING))
def test_a_shared_tuple_dag_that_gets_hashed_is_refused_in_time(tmp_path: Path, where: str) -> None:
    """A 40-level shared tuple (2**40 steps to hash) as a key or set member is refused naming the file, in time."""
    path = checkpoint(tmp_path / "c.ckpt", _SHARING[where])
    assert path.stat().st_size < 1000
    _refused(run_capped("reader", path), path, _HASHING)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["load", "lightning"])
def test_torch_load_and_read_callback_states_refuse_a_shared_tuple_key(tmp_path: Path, mode: str) -> None:
    """torch_load (loop.load_checkpoint's, trusted or not) and read_callback_states refuse it in the pre-scan."""
    path = checkpoint(tmp_path / "c.ckpt", _SHARING["dict key"])
    _refused(run_capped(mode, path), path, _HASHING)


# Calls that torch.load(weights_only=True) makes for real, and that cost more than their arguments:
# a set or a Counter hashes every element of its argument (here T(40)'s two halves, 2**39 steps
# each); a bytearray, a storage or a legacy tensor allocates from an int (a GB from 17 bytes).
_CALLS = {
    "set": b"c__builtin__\nset\n" + shared_tuple(40) + b"\x85R",
    "Counter": b"ccollections\nCounter\n" + shared_tuple(40) + b"\x85R",
    "bytearray": b"c__builtin__\nbytearray\n" + integer(2**30) + b"\x85R",
    "UntypedStorage": b"ctorch.storage\nUntypedStorage\n" + integer(2**30) + b"\x85R",
    "FloatTensor": b"ctorch\nFloatTensor\n" + integer(2**14) + integer(2**14) + b"\x86R",
}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["reader", "load", "lightning"])
@pytest.mark.parametrize("call", sorted(_CALLS))
def test_a_call_that_torch_load_would_make_is_charged_what_it_costs(tmp_path: Path, call: str, mode: str) -> None:
    """A ~1 KB checkpoint whose allowlisted call would hash for hours or allocate a GB is refused before torch.load."""
    path = checkpoint(tmp_path / "c.ckpt", callbacks_pickle(text("k"), _CALLS[call]))
    assert path.stat().st_size < 2000
    result = run_capped(mode, path)
    _refused(result, path, "that torch.load would make")
    assert ("hashing" in result["message"]) == (call in ("set", "Counter")), result


def test_calls_of_real_states_are_read(tmp_path: Path) -> None:
    """A torch.save of sets, Counters, bytearrays and a legacy tensor of plain sizes loads: only their cost is charged."""
    import collections

    path = tmp_path / "c.ckpt"
    state = {"s": {(1, 2), (3, (4, 5))}, "c": collections.Counter("abracadabra"), "b": bytearray(b"xyz" * 100)}
    torch.save({"callbacks": {"k": state}}, path)
    assert callstate.lightning.read_callback_states(str(path))["k"] == state


def test_a_shared_tuple_dag_as_a_value_is_read(tmp_path: Path) -> None:
    """A 40-level shared tuple that nothing hashes (a state's value) is read: only hashing is charged."""
    path = checkpoint(tmp_path / "c.ckpt", callbacks_pickle(text("k"), shared_tuple(40)))
    tf = TorchFile(str(path))
    tf.close()
    assert list(tf.entries) == ["k"]


def test_tuple_keys_of_a_real_state_are_read(tmp_path: Path) -> None:
    """A torch.save of 20,000 tuple keys passes the pre-scan and loads."""
    path = tmp_path / "c.ckpt"
    state = {(i, str(i), (i, 1.5)): i for i in range(20_000)}
    torch.save({"callbacks": {"k": state}}, path)
    assert callstate.lightning.read_callback_states(str(path))["k"] == state


# -- memory -----------------------------------------------------------------------------------------

_CHILD = r"""
import json, re, resource, sys
import callstate
from callstate._torch._torch_reader import scan

def status(field):
    with open("/proc/self/status", encoding="ascii") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024

resource.setrlimit(resource.RLIMIT_AS, (status("VmSize") + int(sys.argv[2]), resource.RLIM_INFINITY))
with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
    f.write("5")  # the peak RSS (VmHWM) starts again from here
before = status("VmRSS")
try:
    with open(sys.argv[1], "rb") as f:
        scan(f, sys.argv[1])
    result = {"ok": True}
except BaseException as exc:
    result = {"type": type(exc).__name__, "callstate": isinstance(exc, callstate.CallstateError), "message": str(exc)[:300]}
result["growth"] = status("VmHWM") - before
print(json.dumps(result))
"""


def _flood(opcodes: bytes) -> Callable[[int], bytes]:
    """A pickle of a list of ``k`` objects, each pushed by ``opcodes``."""
    return lambda k: b"\x80\x02(" + opcodes * k + b"l."


_KINDS: dict[str, tuple[Callable[[int], bytes], int, int | None]] = {
    # kind: (pickle of k items, a k that is read, a k that is refused (None: never beyond the allowance))
    "EMPTY_SET": (_flood(b"\x8f"), 120_000, 2_500_000),
    "EMPTY_DICT": (_flood(b"}"), 150_000, 2_500_000),
    "EMPTY_LIST": (_flood(b"]"), 150_000, 2_500_000),
    "one-item tuples": (_flood(b"N\x85"), 150_000, 2_000_000),
    "distinct GLOBALs": (lambda k: b"\x80\x02(" + b"".join(b"cm\nG%d\n" % i for i in range(k)) + b"l.", 10_000, 200_000),
    "stand-in objects (REDUCE)": (lambda k: b"\x80\x02cm\nC\nq\x00(" + b"h\x00)R" * k + b"l.", 40_000, 1_000_000),
    "MEMOIZE": (_flood(b"]\x94"), 150_000, 2_000_000),
    "BINGET fan-out": (lambda k: b"\x80\x02(]q\x00" + b"h\x00" * k + b"l.", 1_000_000, 5_000_000),
    "short strings": (_flood(b"\x8c\x02ab"), 500_000, 2_500_000),
    "dict items": (lambda k: b"\x80\x02}(" + b"".join(b"J" + struct.pack("<i", i) + b"N" for i in range(k)) + b"u.", 200_000, 1_500_000),
    "set items": (lambda k: b"\x80\x02\x8f(" + b"".join(b"J" + struct.pack("<i", i) for i in range(k)) + b"\x90.", 200_000, 1_500_000),
    "a long string": (lambda k: b"\x80\x02X" + struct.pack("<I", k) + b"a" * k + b".", 20_000_000, None),
}


def _scan_measured(path: Path, size: int) -> dict[str, Any]:
    """Scan ``path`` in a child capped at the allowance plus a margin; its outcome and peak RSS growth."""
    cap = ALLOC_FACTOR * size + ALLOC_SLACK + (512 << 20)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", _CHILD, str(path), str(cap)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr[-2000:]
    result: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return result


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(_KINDS))
def test_peak_memory_of_the_pre_scan_stays_within_the_allowance(tmp_path: Path, kind: str) -> None:
    """For each payload kind, the scan's peak RSS growth is at most 16 x N + 64 MiB, read or refused past it."""
    build, read, refused = _KINDS[kind]
    for k, expect_read in ((read, True), (refused, False)):
        if k is None:
            continue
        pkl = build(k)
        path = checkpoint(tmp_path / f"{k}.ckpt", pkl)
        result = _scan_measured(path, len(pkl))
        if expect_read:
            assert result.get("ok"), result
        else:
            assert result.get("type") == "CorruptCheckpointError", result
            assert f"more than {ALLOC_FACTOR} times its size" in result["message"], result
        bound = ALLOC_FACTOR * len(pkl) + ALLOC_SLACK
        assert result["growth"] <= bound, (kind, k, result["growth"] / len(pkl), result)


def test_a_pickle_of_real_states_is_far_within_the_allowance(tmp_path: Path) -> None:
    """A torch.save of typical states (tensors, lists of floats, nested dicts) passes the pre-scan."""
    path = tmp_path / "c.ckpt"
    states = {f"cb{i}": {"loss": [float(j) for j in range(500)], "t": torch.zeros(3), "d": {"a": [1, 2]}} for i in range(200)}
    torch.save({"callbacks": states, "pickled": pickle.dumps(states)}, path)
    assert len(callstate.lightning.read_callback_states(str(path))) == 200
