"""A save that the file system refuses raises CheckpointWriteError and loses nothing.

Real faults: a full disk and a read-only file system are small tmpfs mounts made by the test (tests
run as root; where mounting is not permitted they are skipped, saying so), I/O errors are injected
into the real system calls with strace. Each checks that the previous file is byte for byte as it
was and that no temp file is left.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import callstate


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KB tmpfs mounted for the test, unmounted after it."""
    where = tmp_path / "mnt"
    where.mkdir()
    proc = _mount("-t", "tmpfs", "-o", "size=256k", "tmpfs", str(where))
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}): the full-disk and read-only cases need one")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def assert_unchanged(path: Path, before: bytes) -> None:
    assert path.read_bytes() == before, "the previous file changed"
    assert sorted(os.listdir(path.parent)) == [path.name], "a temp file was left behind"


def save_with(how: str, states: dict[str, Any], path: Path) -> None:
    """Save ``states`` to ``path`` with ``callstate.save``, or ``save_async`` and its future's result."""
    if how == "save":
        callstate.save(states, path)
    else:
        callstate.save_async(states, path).result(timeout=60)


HOW = pytest.mark.parametrize("how", ["save", "save_async"])


@HOW
def test_a_full_disk_raises_and_keeps_the_previous_file(small_tmpfs: Path, how: str) -> None:
    """Saving more than the device holds raises CheckpointWriteError (ENOSPC), from the future of a background save too; the old file stays."""
    path = small_tmpfs / "run.callstate"
    callstate.save({"a": 1}, path)
    before = path.read_bytes()
    with pytest.raises(callstate.errors.CheckpointWriteError, match="free space") as e:
        save_with(how, {"a": b"x" * (1 << 20)}, path)
    assert isinstance(e.value, OSError) and e.value.errno == errno.ENOSPC
    assert e.value.path == str(path) and e.value.filename == str(path)
    assert_unchanged(path, before)


@HOW
def test_a_read_only_file_system_raises_and_keeps_the_previous_file(small_tmpfs: Path, how: str) -> None:
    """Saving onto a read-only mount raises CheckpointWriteError (EROFS), through the future too; the old file stays."""
    path = small_tmpfs / "run.callstate"
    callstate.save({"a": 1}, path)
    before = path.read_bytes()
    proc = _mount("-o", "remount,ro", str(small_tmpfs))
    assert proc.returncode == 0, proc.stderr
    with pytest.raises(callstate.errors.CheckpointWriteError, match="read-only") as e:
        save_with(how, {"a": 2}, path)
    assert e.value.errno == errno.EROFS
    assert_unchanged(path, before)


@HOW
def test_a_directory_in_the_way_raises_and_leaves_no_temp_file(tmp_path: Path, how: str) -> None:
    """Saving to a path that is a directory raises CheckpointWriteError naming it, through the future too; nothing is left."""
    target = tmp_path / "run.callstate"
    target.mkdir()
    with pytest.raises(callstate.errors.CheckpointWriteError, match="is a directory") as e:
        save_with(how, {"a": 1}, target)
    assert e.value.path == str(target)
    assert sorted(os.listdir(tmp_path)) == ["run.callstate"] and os.listdir(target) == []


# The child reports through os.pwrite (the pwrite64 system call), so an error injected into write
# reaches the save and not the report.
CHILD = textwrap.dedent(
    """
    import json, os, sys
    import callstate

    path, how, report = sys.argv[1], sys.argv[2], sys.argv[3]
    try:
        if how == "save":
            callstate.save({"a": 2, "blob": b"x" * 300_000}, path)
        else:
            callstate.save_async({"a": 2, "blob": b"x" * 300_000}, path).result()
        result = {"raised": None}
    except OSError as exc:
        result = {"raised": type(exc).__name__, "errno": exc.errno, "typed": isinstance(exc, callstate.CallstateError)}
    fd = os.open(report, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.pwrite(fd, json.dumps(result).encode(), 0)
    os.close(fd)
    """
)


def under_strace(syscalls: str, inject: str, child: str, path: Path, how: str = "save") -> dict[str, Any]:
    """Run ``child`` on ``path`` with strace injecting ``inject`` into ``syscalls``; return what it reported."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed: I/O errors are injected with it")
    report = path.parent.parent / f"report-{os.getpid()}.json"
    proc = subprocess.run(
        [strace, "-f", "-qq", "-o", os.devnull, "-e", f"trace={syscalls}", "-e", inject,
         sys.executable, "-c", child, str(path), how, str(report)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0 and "ptrace" in proc.stderr:
        pytest.skip(f"strace cannot trace here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    try:
        return json.loads(report.read_text())  # type: ignore[no-any-return]
    finally:
        report.unlink()


@HOW
@pytest.mark.parametrize("syscalls", ["write", "fsync", "rename,renameat,renameat2"])
def test_an_io_error_on_write_fsync_or_rename_raises_and_keeps_the_previous_file(
    tmp_path: Path, syscalls: str, how: str
) -> None:
    """EIO injected into write, fsync or rename (strace) raises CheckpointWriteError, through the future of a background save too; the old file stays."""
    directory = tmp_path / "d"
    directory.mkdir()
    path = directory / "run.callstate"
    callstate.save({"a": 1}, path)
    before = path.read_bytes()
    result = under_strace(syscalls, f"inject={syscalls}:error=EIO", CHILD, path, how)
    assert result == {"raised": "CheckpointWriteError", "errno": errno.EIO, "typed": True}, result
    assert_unchanged(path, before)


WARN_CHILD = textwrap.dedent(
    """
    import json, sys, warnings
    import callstate

    path = sys.argv[1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        callstate.save({"a": 2}, path)
    with open(sys.argv[3], "w") as f:
        f.write(json.dumps({"read": callstate.read(path), "warnings": [str(w.message) for w in caught]}))
    """
)


def test_a_failed_directory_flush_after_the_rename_warns_and_keeps_the_new_file(tmp_path: Path) -> None:
    """EIO on the directory's fsync (the second fsync of a save): the new file is in place, and a CallstateWarning says the flush failed."""
    directory = tmp_path / "d"
    directory.mkdir()
    path = directory / "run.callstate"
    callstate.save({"a": 1}, path)
    result = under_strace("fsync", "inject=fsync:error=EIO:when=2", WARN_CHILD, path)
    assert result["read"] == {"a": 2}
    assert any("flushing the directory failed" in w for w in result["warnings"]), result
    assert sorted(os.listdir(directory)) == ["run.callstate"]


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_a_directory_that_takes_no_files_is_not_called_missing() -> None:
    """Saving into /proc (there, but no file can be made in it) raises CheckpointWriteError saying so, not that the directory does not exist."""
    path = "/proc/callstate-test.callstate"
    with pytest.raises(callstate.errors.CheckpointWriteError, match="the directory /proc exists") as e:
        callstate.save({"a": 1}, path)
    assert "does not exist" not in str(e.value)
    assert e.value.path == path and e.value.errno == errno.ENOENT


@pytest.mark.parametrize("below", ["run.callstate", "sub/dir/run.callstate"])
def test_a_file_where_a_directory_should_be_is_named(tmp_path: Path, below: str) -> None:
    """Saving under a path whose parent (or an ancestor) is a file raises CheckpointWriteError naming that file."""
    blocker = tmp_path / "notes.txt"
    blocker.write_text("not a directory")
    path = blocker / below
    with pytest.raises(callstate.errors.CheckpointWriteError, match="is a file, not a directory") as e:
        callstate.save({"a": 1}, path)
    assert f"{blocker} is a file" in str(e.value) and "does not exist" not in str(e.value)
    assert e.value.path == str(path) and e.value.errno == errno.ENOTDIR
    assert blocker.read_text() == "not a directory"


def test_a_missing_directory_is_named(tmp_path: Path) -> None:
    """Saving into a directory that is not there raises CheckpointWriteError naming the directory to create."""
    path = tmp_path / "missing" / "run.callstate"
    with pytest.raises(callstate.errors.CheckpointWriteError, match="does not exist: create it first") as e:
        callstate.save({"a": 1}, path)
    assert f"the directory {path.parent} does not exist" in str(e.value)
    assert e.value.errno == errno.ENOENT and not (tmp_path / "missing").exists()
