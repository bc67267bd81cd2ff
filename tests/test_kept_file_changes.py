"""States kept undecoded from a file survive the file being rewritten, truncated or replaced.

They are read back with positioned reads, never through a memory map, so a file changed by another
process gives a typed error (or, replaced atomically, the states as they were read), never SIGBUS.
Each case runs in a child process, so that a crash fails the test instead of killing the run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

CHILD = textwrap.dedent(
    """
    import json, os, resource, sys, warnings
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
    warnings.simplefilter("ignore")
    import callstate

    how, path = sys.argv[1], sys.argv[2]
    callstate.save({"big": b"x" * (2 << 20), "small": [1, 2, 3]}, path)
    registry = callstate.CallbackRegistry()
    callstate.load(registry, path)  # both kept, undecoded
    lazy = callstate.read(path, lazy=True)
    if how == "truncate":
        with open(path, "r+b") as f:
            f.truncate(100)
    elif how == "rewrite":  # same size, other bytes (cp over it, rsync --inplace)
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            f.write(b"\\0" * size)
    elif how == "replace":  # atomically, as callstate.save does
        callstate.save({"other": 1}, path)
    out = {}
    try:
        data = callstate.dumps(registry)
        out["save"] = sorted(callstate.read(data))
        out["big_intact"] = callstate.read(data)["big"] == b"x" * (2 << 20)
    except callstate.CallstateError as exc:
        out["save"] = [type(exc).__name__, getattr(exc, "key", None), str(exc)]
    try:
        out["decode"] = lazy["small"].decode()
    except callstate.CallstateError as exc:
        out["decode"] = type(exc).__name__
    print(json.dumps(out))
    """
)


def run(how: str, tmp_path: Path) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, how, str(tmp_path / "run.callstate")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"child died ({proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_a_truncated_file_gives_a_typed_error_naming_the_state(tmp_path: Path) -> None:
    """Truncated in place after the load: saving the registry raises CorruptCheckpointError naming the kept state."""
    out = run("truncate", tmp_path)
    kind, key, message = out["save"]  # type: ignore[misc]
    assert kind == "CorruptCheckpointError" and key in ("big", "small")
    assert "discard_unclaimed" in message and "changed since" in message
    assert out["decode"] == "CorruptCheckpointError"


def test_a_file_rewritten_in_place_is_caught_by_the_checksum(tmp_path: Path) -> None:
    """Rewritten in place with other bytes: the kept states no longer match their checksums; nothing is written."""
    out = run("rewrite", tmp_path)
    assert out["save"][0] == "CorruptCheckpointError"  # type: ignore[index]
    assert out["decode"] == "CorruptCheckpointError"


def test_a_file_replaced_atomically_leaves_the_kept_states_as_they_were_read(tmp_path: Path) -> None:
    """Replaced by a new file (write, then rename): the kept states are still the ones read, byte for byte."""
    out = run("replace", tmp_path)
    assert out["save"] == ["big", "small"] and out["big_intact"] is True
    assert out["decode"] == [1, 2, 3]


def test_nothing_changed_saves_the_kept_states_back(tmp_path: Path) -> None:
    """With the file untouched, kept states are written back byte for byte."""
    out = run("nothing", tmp_path)
    assert out["save"] == ["big", "small"] and out["big_intact"] is True


def test_a_large_kept_part_is_checked_chunk_by_chunk(tmp_path: Path) -> None:
    """A kept part larger than one read chunk checks intact, and a byte changed past the first chunk is caught."""
    import callstate

    path = tmp_path / "big.callstate"
    callstate.save({"big": bytes(20 << 20)}, path)
    kept = callstate.read(path, lazy=True)["big"]
    assert kept.is_intact()
    data = path.read_bytes()
    where = data.index(bytes(1 << 20)) + (12 << 20)  # inside the payload, past the first 8 MB chunk
    with open(path, "r+b") as f:
        f.seek(where)
        f.write(b"\x01")
    assert not kept.is_intact()
