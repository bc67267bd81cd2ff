"""Hostile torch checkpoints, built by hand, and a runner that reads one in a capped subprocess.

The builders write torch.save's layout (a stored zip under one folder, ``data.pkl``, ``version``,
``byteorder``, ``data/<key>`` records) around pickle bytes written opcode by opcode, so each file is
exactly as hostile as its test says. :func:`run_capped` reads a file in a child process with an
address-space limit and an alarm: a crash shows as a signal, a hang as SIGALRM, an allocation as a
MemoryError, instead of taking the test process down.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any

# What the child may allocate beyond what it holds once its mode's modules are imported.
HEADROOM = 1 << 30
# Seconds a read may take in the child before the alarm kills it.
TIME_CAP = 10

_CHILD = r"""
import json, re, resource, signal, sys, time
import callstate
from callstate._torch._torch_reader import TorchFile

mode, path, headroom, cap = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
# Each mode imports what it calls only: lightning's import alone takes 5 s of the child's 10.
if mode in ("load", "lightning"):
    import torch

    torch.set_num_threads(1)
if mode == "load":
    from callstate._torch._torch_io import torch_load
if mode == "lightning":
    import callstate.lightning
size = int(re.search(r"^VmSize:\s+(\d+) kB", open("/proc/self/status").read(), re.M).group(1)) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + headroom, resource.getrlimit(resource.RLIMIT_AS)[1]))


def reader():
    tf = TorchFile(path)
    try:
        tf.bad_records()
        return sorted(map(str, tf.entries))
    finally:
        tf.close()


calls = {
    "reader": reader,
    "load": lambda: sorted(map(str, torch_load(path, trusted=False).get("callbacks", {}))),
    "lightning": lambda: sorted(map(str, callstate.lightning.read_callback_states(path))),
}
signal.alarm(cap)
start = time.perf_counter()
try:
    result = {"ok": calls[mode]()}
except BaseException as exc:
    result = {"type": type(exc).__name__, "callstate": isinstance(exc, callstate.CallstateError), "message": str(exc)[:300]}
result["seconds"] = time.perf_counter() - start
print(json.dumps(result))
"""


def run_capped(mode: str, path: Path) -> dict[str, Any]:
    """Read ``path`` in a capped child (``mode``: reader, load or lightning); return what it reported.

    The result has ``ok`` (the sorted callback keys) or the error's ``type``, ``callstate`` and
    ``message``, and ``seconds``; a child that died has ``death`` (its return code) and ``stderr``.
    """
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", _CHILD, mode, str(path), str(HEADROOM), str(TIME_CAP)],
        capture_output=True,
        text=True,
        timeout=TIME_CAP + 60,
        env=env,
        check=False,
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        return {"death": proc.returncode, "stderr": proc.stderr[-2000:]}
    result: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return result


# -- pickles, opcode by opcode --------------------------------------------------------------------


def text(s: str) -> bytes:
    """BINUNICODE of ``s``."""
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def callbacks_pickle(key: bytes, value: bytes) -> bytes:
    """A pickle of ``{"callbacks": {key: value}}``, key and value given as opcodes that push one object."""
    return b"\x80\x02}" + text("callbacks") + b"}" + key + value + b"ss."


def deep_tuple(depth: int) -> bytes:
    """Opcodes that push a tuple nested ``depth`` levels: ((((),),),)."""
    return b")" + b"\x85" * depth


def shared_tuple(levels: int) -> bytes:
    """Opcodes that push T(levels), where T(0) = () and T(k) = (T(k-1), T(k-1)), sharing through the memo.

    About 5 bytes a level, and 2**levels leaves to hash. Written with only the opcodes torch.load's
    weights-only unpickler knows (BINPUT, BINGET, TUPLE2), so the same bytes reach it too.
    """
    return b")q\x00" + b"".join(b"h" + bytes([i]) + b"\x86q" + bytes([i + 1]) for i in range(levels))


def integer(n: int) -> bytes:
    """Opcodes that push the int ``n``."""
    return pickle.dumps(n, protocol=2)[2:-1]


def storage(key: str, numel: int, cls: str = "ByteStorage") -> bytes:
    """Opcodes that push a tensor of storage ``key`` (``numel`` elements) as torch.save writes it."""
    pid = (
        b"(" + text("storage") + f"ctorch\n{cls}\n".encode() + text(key) + text("cpu") + integer(numel) + b"t"
    )
    size, stride = integer(numel) + b"\x85", integer(1) + b"\x85"
    return (
        b"ctorch._utils\n_rebuild_tensor_v2\n("
        + pid
        + b"Q"
        + integer(0)
        + size
        + stride
        + b"\x89ccollections\nOrderedDict\n)RtR"
    )


# -- zips in torch.save's layout ------------------------------------------------------------------


def checkpoint(
    path: Path,
    pkl: bytes,
    records: dict[str, bytes] | None = None,
    *,
    extra: tuple[tuple[str, bytes], ...] = (),
) -> Path:
    """Write a stored zip as torch.save lays it out around ``pkl``, its ``records`` and ``extra`` members."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of duplicate names, which some tests want
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", pkl)
            for name, data in extra:
                zf.writestr(name, data)
            zf.writestr("archive/byteorder", "little")
            for key, data in (records or {}).items():
                zf.writestr(f"archive/data/{key}", data)
            zf.writestr("archive/version", "3\n")
    return path


def declare_size(path: Path, member: str, size: int) -> None:
    """Rewrite the central directory so that ``member`` declares ``size`` bytes (its data unchanged)."""
    data = bytearray(path.read_bytes())
    name = member.encode()
    at = 0
    while True:
        at = data.find(b"PK\x01\x02", at)
        if at < 0:
            raise ValueError(f"no central directory entry for {member}")
        name_len = struct.unpack_from("<H", data, at + 28)[0]
        if bytes(data[at + 46 : at + 46 + name_len]) == name:
            struct.pack_into("<II", data, at + 20, size, size)
            path.write_bytes(bytes(data))
            return
        at += 4
