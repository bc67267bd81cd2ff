"""Checkpoints on a real S3 API: moto's server on loopback, reached through s3fs, no network."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import s3fs
import torch
from moto.server import ThreadedMotoServer

import callstate
from callstate import loop
from callstate.errors import (
    CallstateWarning,
    CheckpointNotFoundError,
    CheckpointWriteError,
    CorruptCheckpointError,
)

BUCKET = "callstate-tests"


@pytest.fixture(scope="session")
def s3() -> Iterator[dict[str, Any]]:
    """A moto S3 server on 127.0.0.1 (a free port), a bucket, and the storage_options that reach it."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    options = {
        "key": "testing",
        "secret": "testing",
        "endpoint_url": endpoint,
        "client_kwargs": {"region_name": "us-east-1"},
    }
    fs = s3fs.S3FileSystem(**options)
    fs.call_s3("create_bucket", Bucket=BUCKET)
    try:
        yield {"options": options, "endpoint": endpoint, "fs": fs}
    finally:
        server.stop()


def fresh(name: str = "run.callstate") -> str:
    return f"s3://{BUCKET}/{uuid.uuid4().hex}/{name}"


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


def test_save_load_read_inspect_and_save_async_on_s3(s3: dict[str, Any]) -> None:
    """save, load, read, inspect and save_async work on an s3:// URL with storage_options."""
    url, options = fresh(), s3["options"]
    a = Counter("a")
    a.n = 5
    callstate.save([a], url, storage_options=options)
    b = Counter("a")
    callstate.load([b], url, storage_options=options)
    assert b.n == 5
    assert callstate.read(url, storage_options=options)["Counter[a]"]["n"] == 5
    assert [e.key for e in callstate.inspect(url, storage_options=options)] == ["Counter[a]"]
    futures = []
    for n in range(3):
        a.n = n
        futures.append(callstate.save_async([a], url, storage_options=options))
    for f in futures:
        f.result(timeout=60)
    assert callstate.read(url, storage_options=options)["Counter[a]"]["n"] == 2
    assert s3["fs"].ls(url.rpartition("/")[0], detail=False) == [url[len("s3://") :]]


@pytest.mark.parametrize("name", ["ckpt.callstate", "ckpt.pt"])
def test_loop_checkpoint_with_model_and_optimizer_on_s3(s3: dict[str, Any], name: str) -> None:
    """loop.save_checkpoint and load_checkpoint round-trip a model, an optimizer and callbacks on S3."""
    url, options = fresh(name), s3["options"]
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(3, 4)).sum().backward()
    opt.step()
    a = Counter("a")
    a.n = 9
    loop.save_checkpoint(url, [a], storage_options=options, model=model, optimizer=opt, step=3)
    model2 = torch.nn.Linear(4, 2)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    b = Counter("a")
    loaded = loop.load_checkpoint(url, [b], storage_options=options, model=model2, optimizer=opt2)
    assert b.n == 9 and loaded.extra["step"] == 3
    assert torch.equal(model.weight, model2.weight)
    assert opt2.state_dict()["state"][0]["momentum_buffer"].equal(opt.state_dict()["state"][0]["momentum_buffer"])


def test_missing_bucket_and_missing_object(s3: dict[str, Any]) -> None:
    """A save to a missing bucket is a CheckpointWriteError; a load of a missing object a CheckpointNotFoundError."""
    options = s3["options"]
    missing_bucket = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/run.callstate"
    with pytest.raises(CheckpointWriteError, match="bucket") as e:
        callstate.save([Counter("a")], missing_bucket, storage_options=options)
    assert e.value.path == missing_bucket
    url = fresh()
    with pytest.raises(CheckpointNotFoundError) as n:
        callstate.load([Counter("a")], url, storage_options=options)
    assert n.value.path == url and url in str(n.value)


def test_bit_flip_in_the_object_is_a_typed_error(s3: dict[str, Any]) -> None:
    """A flipped bit in an S3 object's entry is caught by its checksum: CorruptCheckpointError, no restore."""
    url, options, fs = fresh(), s3["options"], s3["fs"]
    a = Counter("a", size=1000)
    a.n = 4
    callstate.save([a], url, storage_options=options)
    data = bytearray(fs.cat_file(url))
    data[200] ^= 0x10
    fs.pipe_file(url, bytes(data))
    b = Counter("a", size=1000)
    with pytest.raises(CorruptCheckpointError, match="checksum"):
        callstate.load([b], url, storage_options=options)
    assert b.n == 0


def test_object_replaced_between_ranged_reads_is_corrupt(s3: dict[str, Any]) -> None:
    """A kept entry read after the object was replaced (its ETag changed) is a CorruptCheckpointError."""
    url, options = fresh(), s3["options"]
    callstate.save([Counter("a"), Counter("big", size=1 << 20)], url, storage_options=options)
    registry = callstate.CallbackRegistry([Counter("a")])
    with pytest.warns(CallstateWarning, match="no callback to claim them"):
        callstate.load(registry, url, storage_options=options)
    other = Counter("big", size=1 << 20)
    other.n = 1
    callstate.save([Counter("a"), other], url, storage_options=options)  # replaced meanwhile
    with pytest.raises(CorruptCheckpointError, match="replaced"):
        callstate.save(registry, fresh(), storage_options=options)


def test_lazy_load_skips_a_large_entry(s3: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """A load that claims only a small entry fetches none of a 32 MB one: counted in bytes s3fs received."""
    url, options = fresh(), s3["options"]
    big = 32 << 20
    callstate.save([Counter("a"), Counter("big", size=big)], url, storage_options=options)
    received: list[int] = []
    real = s3fs.core.S3File._fetch_range

    def counting(self: Any, start: int, end: int) -> bytes:
        data: bytes = real(self, start, end)
        received.append(len(data))
        return data

    monkeypatch.setattr(s3fs.core.S3File, "_fetch_range", counting)
    a = Counter("a")
    with pytest.warns(CallstateWarning, match="no callback to claim them"):
        callstate.load([a], url, storage_options=options)
    assert s3["fs"].size(url) > big and sum(received) <= 16 + (256 << 10) + 4096
    assert len(received) == 3  # the header, the tail (index and footer), the claimed entry


_WRITER = """
import sys, callstate
url, endpoint = sys.argv[1], sys.argv[2]
options = {"key": "testing", "secret": "testing", "endpoint_url": endpoint,
           "client_kwargs": {"region_name": "us-east-1"}}
n = 0
while True:
    n += 1
    callstate.save({"n": n, "payload": bytes([n % 256]) * (12 << 20)}, url, storage_options=options)
    print(n, flush=True)
"""


@pytest.mark.slow
def test_sigkill_mid_upload_leaves_old_or_new_never_torn(s3: dict[str, Any], tmp_path: Any) -> None:
    """SIGKILL of a writer mid-upload, 6 times: the object is a whole save, and no multipart upload is left."""
    url, options, fs = fresh(), s3["options"], s3["fs"]
    script = tmp_path / "writer.py"
    script.write_text(textwrap.dedent(_WRITER))
    last = 0
    for i in range(6):
        child = subprocess.Popen(
            [sys.executable, str(script), url, s3["endpoint"]], stdout=subprocess.PIPE, text=True
        )
        assert child.stdout is not None
        child.stdout.readline()  # one save is complete: the next is under way
        time.sleep(0.05 * (i % 4))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()
        state = callstate.read(url, storage_options=options)  # every checksum verified
        assert state["payload"] == bytes([state["n"] % 256]) * (12 << 20)
        assert state["n"] >= 1
        last = state["n"]
    uploads = fs.call_s3("list_multipart_uploads", Bucket=BUCKET)
    assert uploads.get("Uploads", []) == []
    assert last >= 1
