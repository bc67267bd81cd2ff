"""Checkpoints at fsspec URLs, on fsspec's memory file system: the same API, one upload, ranged reads."""

from __future__ import annotations

import io
import subprocess
import sys
import uuid
from typing import Any

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

import callstate
from callstate._io import _storage
from callstate._io._files import read_meta
from callstate.errors import (
    CallstateWarning,
    CheckpointNotFoundError,
    CheckpointWriteError,
    CorruptCheckpointError,
    MissingDependencyError,
)


class Counter:
    """A callback with a counter and a payload of a given size."""

    def __init__(self, what: str, size: int = 16) -> None:
        self.what, self.n, self.payload = what, 0, b"\0" * size

    @property
    def state_key(self) -> str:
        return f"Counter[{self.what}]"

    def state_dict(self) -> dict[str, Any]:
        return {"n": self.n, "payload": self.payload}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.n, self.payload = state["n"], state["payload"]


@pytest.fixture
def url() -> str:
    """A fresh memory:// URL (the memory file system is shared by the process)."""
    return f"memory://callstate-tests/{uuid.uuid4().hex}/run.callstate"


def test_round_trip_on_a_memory_url(url: str) -> None:
    """save, load, read, read_meta and inspect take a memory:// URL as they take a path."""
    a = Counter("a")
    a.n = 7
    callstate.save([a], url, meta={"step": 3})
    b = Counter("a")
    report = callstate.load([b], url)
    assert b.n == 7 and report.restored == ("Counter[a]",)
    assert callstate.read(url)["Counter[a]"]["n"] == 7
    assert read_meta(url) == {"step": 3}
    (entry,) = callstate.inspect(url)
    assert entry.key == "Counter[a]" and entry.ok


def test_save_async_to_a_url_writes_in_call_order(url: str) -> None:
    """save_async to a URL captures the states at the call and leaves the last call's states."""
    a = Counter("a")
    futures = []
    for n in range(5):
        a.n = n
        futures.append(callstate.save_async([a], url))
    a.n = 99  # after the calls: not in any file
    for f in futures:
        f.result(timeout=30)
    assert callstate.read(url)["Counter[a]"]["n"] == 4


def test_file_url_stays_on_the_local_path(tmp_path: Any) -> None:
    """A file:// URL is written as the local file it names (temp file and rename), no fsspec involved."""
    a = Counter("a")
    a.n = 3
    path = tmp_path / "run.callstate"
    callstate.save([a], f"file://{path}")
    assert callstate.read(str(path))["Counter[a]"]["n"] == 3
    assert callstate.read(f"file://{path}")["Counter[a]"]["n"] == 3
    assert not _storage.is_url(f"file://{path}") and _storage.is_url("memory://x/y")


def test_missing_object_is_a_typed_error_naming_the_url(url: str) -> None:
    """Loading a URL that names no object raises CheckpointNotFoundError (a FileNotFoundError) with the URL."""
    with pytest.raises(CheckpointNotFoundError, match="no such object") as e:
        callstate.load([Counter("a")], url)
    assert e.value.path == url and isinstance(e.value, FileNotFoundError)
    assert url in str(e.value)


def test_missing_backend_names_the_package_to_install() -> None:
    """A URL whose fsspec backend is not installed raises MissingDependencyError with the pip command."""
    fsspec.register_implementation(
        "cstestmissing", "callstate_no_such_backend.FS", errtxt="no backend", clobber=True
    )
    with pytest.raises(MissingDependencyError, match="pip install callstate_no_such_backend") as e:
        callstate.save([Counter("a")], "cstestmissing://b/run.callstate")
    assert e.value.name == "callstate_no_such_backend"


def test_missing_fsspec_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without fsspec, a URL raises MissingDependencyError saying pip install 'callstate[remote]'."""
    monkeypatch.setitem(sys.modules, "fsspec", None)
    with pytest.raises(MissingDependencyError, match=r"callstate\[remote\]") as e:
        callstate.load([Counter("a")], "memory://b/run.callstate")
    assert e.value.name == "fsspec"


class FailingFS(MemoryFileSystem):
    """A memory file system whose uploads fail, as a full or refusing store does."""

    protocol = "cstestfailing"

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return str(MemoryFileSystem._strip_protocol("memory://" + path.split("://")[-1]))

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        raise OSError(5, "the store refused the upload")


def test_failed_upload_is_a_write_error_and_keeps_the_object(url: str) -> None:
    """An upload the backend fails raises CheckpointWriteError naming the URL and its error; the object stays."""
    fsspec.register_implementation("cstestfailing", FailingFS, clobber=True)
    target = url.replace("memory://", "cstestfailing://")
    a = Counter("a")
    a.n = 1
    callstate.save([a], url)  # the same store: FailingFS shares the memory file system's objects
    before = fsspec.filesystem("memory").cat_file(url)
    a.n = 2
    with pytest.raises(CheckpointWriteError, match="the store refused the upload") as e:
        callstate.save([a], target)
    assert e.value.path == target and target in str(e.value) and isinstance(e.value, OSError)
    assert fsspec.filesystem("memory").cat_file(url) == before
    folder = url.rpartition("/")[0]
    assert fsspec.filesystem("memory").ls(folder, detail=False) == [url[len("memory://") - 1 :]]


def test_lazy_load_fetches_only_claimed_entries(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A load fetches the head, the index and the claimed entries; an unclaimed large entry only on save."""
    big = Counter("big", size=8 << 20)
    callstate.save([Counter("a"), big], url)
    size = fsspec.filesystem("memory").size(url)
    fetched: list[int] = []
    real_fetch = _storage.RemoteFile.fetch

    def counting(self: _storage.RemoteFile, start: int, stop: int) -> bytes:
        fetched.append(stop - start)
        return real_fetch(self, start, stop)

    monkeypatch.setattr(_storage.RemoteFile, "fetch", counting)
    registry = callstate.CallbackRegistry([Counter("a")])
    with pytest.warns(CallstateWarning, match="no callback to claim them"):
        callstate.load(registry, url)
    assert size > 8 << 20 and sum(fetched) < (8 << 20) // 16  # the large entry was not fetched
    assert sum(fetched) <= 16 + _storage._TAIL + 4096  # the header, the tail, one small entry
    fetched.clear()
    out = url.replace("run.callstate", "again.callstate")
    callstate.save(registry, out)  # the kept entry is fetched now, in a few large reads
    assert 8 << 20 <= sum(fetched) <= (8 << 20) + 4096
    assert len(fetched) <= 2
    assert callstate.read(out)["Counter[big]"]["payload"] == big.payload


class LyingFile(io.BytesIO):
    """A remote file whose reads return one byte more than asked, as a broken server might."""

    size: int

    def read(self, n: int | None = -1) -> bytes:
        return super().read(n) + b"!"


class LyingFS(MemoryFileSystem):
    """A memory file system whose files send more bytes than asked."""

    protocol = "cstestlying"

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return str(MemoryFileSystem._strip_protocol("memory://" + path.split("://")[-1]))

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        data = MemoryFileSystem.store[self._strip_protocol(path)].getvalue()
        f = LyingFile(data)
        f.size = len(data)
        return f


def test_server_sending_more_bytes_than_asked_is_a_typed_error(url: str) -> None:
    """A read that returns more bytes than it asked for raises CorruptCheckpointError naming the URL."""
    fsspec.register_implementation("cstestlying", LyingFS, clobber=True)
    callstate.save([Counter("a")], url)
    lying = url.replace("memory://", "cstestlying://")
    with pytest.raises(CorruptCheckpointError, match="sent") as e:
        callstate.load([Counter("a")], lying)
    assert e.value.path == lying


def test_bit_flip_in_the_object_is_a_typed_error(url: str) -> None:
    """A flipped bit in a remote object's entry is caught by its checksum, as in a local file."""
    a = Counter("a", size=1000)
    callstate.save([a], url)
    fs = fsspec.filesystem("memory")
    data = bytearray(fs.cat_file(url))
    data[100] ^= 1
    fs.pipe_file(url, bytes(data))
    with pytest.raises(CorruptCheckpointError, match="checksum"):
        callstate.load([Counter("a", size=1000)], url)


class RefusingFS(MemoryFileSystem):
    """A file system whose construction fails, as a backend given a wrong option or credential does."""

    protocol = "cstestrefusing"

    def __init__(self, **kwargs: Any) -> None:
        raise RuntimeError(f"no such option: {sorted(kwargs)}")


@pytest.mark.parametrize("options", [{"colour": "red"}, "endpoint=x", [1]])
def test_backend_that_cannot_be_built_is_a_typed_error(options: Any) -> None:
    """A backend refusing its storage_options (or options that are no mapping) gives typed read and write errors."""
    fsspec.register_implementation("cstestrefusing", RefusingFS, clobber=True)
    target = "cstestrefusing://b/run.callstate"
    with pytest.raises(CorruptCheckpointError, match="storage_options") as e:
        callstate.load([Counter("a")], target, storage_options=options)
    assert e.value.path == target
    with pytest.raises(CheckpointWriteError, match="Nothing was written") as w:
        callstate.save([Counter("a")], target, storage_options=options)
    assert w.value.path == target


_HUGE_CHILD = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
import fsspec
from fsspec.spec import AbstractBufferedFile, AbstractFileSystem
import callstate
from callstate.errors import CallstateError

SIZE = 1 << 50  # what the server claims: a PiB


class HugeFile(AbstractBufferedFile):
    def _fetch_range(self, start, end):
        return bytes(end - start)  # a server that streams whatever length was asked


class HugeFS(AbstractFileSystem):
    protocol = "cstesthuge"

    def info(self, path, **kwargs):
        return {"name": path, "size": SIZE, "type": "file"}

    def _open(self, path, mode="rb", **kwargs):
        return HugeFile(self, path, mode, size=SIZE, cache_type="none")


fsspec.register_implementation("cstesthuge", HugeFS, clobber=True)
for name, call in (("read", callstate.read), ("inspect", callstate.inspect), ("load", lambda u: callstate.load([], u))):
    try:
        call("cstesthuge://bucket/run.callstate")
    except CallstateError as exc:
        print(name, type(exc).__name__, str(exc)[:200].replace("\\n", " "), flush=True)
"""


def test_object_claiming_a_huge_size_is_a_typed_error_in_bounded_memory(tmp_path: Any) -> None:
    """An object whose server claims a PiB is refused, whole reads and lazy loads, under a 3 GB address space."""
    script = tmp_path / "huge.py"
    script.write_text(_HUGE_CHILD)
    done = subprocess.run(
        [sys.executable, "-W", "error", str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert set(lines) == {"read", "inspect", "load"}
    assert lines["read"].startswith("CorruptCheckpointError") and "memory" in lines["read"]
    assert lines["inspect"].startswith("CorruptCheckpointError") and "memory" in lines["inspect"]
    assert lines["load"].startswith("CorruptCheckpointError")  # its header, 16 bytes, is no callstate header


def test_commands_take_urls_and_storage_options(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """inspect, verify, rename, convert and diff run on memory:// URLs; --storage-option values reach the backend."""
    from callstate._cli import main

    seen: list[dict[str, Any]] = []

    class OptionsFS(MemoryFileSystem):
        protocol = "cstestoptions"
        cachable = False

        @classmethod
        def _strip_protocol(cls, path: str) -> str:
            return str(MemoryFileSystem._strip_protocol("memory://" + path.split("://")[-1]))

        def __init__(self, **options: Any) -> None:
            seen.append(options)
            super().__init__()

    fsspec.register_implementation("cstestoptions", OptionsFS, clobber=True)
    a = Counter("a")
    a.n = 7
    callstate.save([a, Counter("b")], url)
    assert main(["inspect", url]) == 0 and "Counter[a]" in capsys.readouterr().out
    opts = ["--storage-option", "port=9000", "--storage-option", 'client_kwargs={"region_name": "eu"}']
    there = url.replace("memory://", "cstestoptions://")
    assert main(["--storage-option", "anon=true", "verify", there, *opts]) == 0
    assert seen[-1] == {"anon": True, "port": 9000, "client_kwargs": {"region_name": "eu"}}
    assert main(["verify", there, "--storage-option", "endpoint_url=http://h:1"]) == 0
    assert seen[-1] == {"endpoint_url": "http://h:1"}
    assert main(["rename", url, "Counter[a]", "Counter[z]"]) == 0
    assert callstate.read(url)["Counter[z]"]["n"] == 7
    pt = url.replace(".callstate", ".pt")
    assert main(["convert", url, pt]) == 0
    assert main(["convert", url, pt]) == 2  # exists already: --force
    back = url.replace(".callstate", ".2.callstate")
    assert main(["convert", pt, back]) == 0
    capsys.readouterr()
    assert main(["diff", url, back]) == 0 and "same: 2 entries" in capsys.readouterr().out
    assert main(["verify", url, "--storage-option", "no-equals-sign"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    missing = url.replace("run.callstate", "gone.callstate")
    assert main(["inspect", missing]) == 2
    assert "no such object" in capsys.readouterr().err
