"""Checkpoints on a real S3 API: moto's server on loopback, reached through s3fs, no network."""

from __future__ import annotations

import io
import json
import os
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


@pytest.mark.slow
def test_distributed_save_and_load_on_s3_with_two_gloo_ranks(s3: dict[str, Any]) -> None:
    """callstate.distributed at an s3:// URL: rank 0 uploads every rank's state, each rank gets its own back."""
    from dist_helpers import Cluster, load_from_url, observed, save_to_url, trained_registry

    import callstate.distributed as csd

    url, options = fresh(), s3["options"]
    cluster = Cluster(2)
    try:
        cluster.wait_ready()
        cluster.run(save_to_url, url, options)
        results = cluster.run(load_from_url, url, options)
    finally:
        cluster.close()
    for r, result in enumerate(results):
        assert result["states"] == observed(trained_registry(r)), f"rank {r}"
        assert len(result["restored"]) == 3
    saved = callstate.read(url, storage_options=options)
    assert saved[csd.MANIFEST_KEY]["world_size"] == 2
    assert saved["Timer@rank1"] == {"elapsed": 2.5}
    assert s3["fs"].ls(url.rpartition("/")[0], detail=False) == [url[len("s3://") :]]  # one object


def test_lightning_checkpoint_on_s3_read_restored_and_converted_both_ways(s3: dict[str, Any]) -> None:
    """callstate.lightning's read, restore, to_callstate and from_callstate take s3:// URLs."""
    import callstate.lightning as cl

    options, ckpt = s3["options"], fresh("epoch=3.ckpt")
    buffer = io.BytesIO()
    states = {"Counter[a]": {"n": 4, "payload": b"x"}}
    torch.save({"pytorch-lightning_version": "2.6.0", "epoch": 3, "callbacks": states}, buffer)
    s3["fs"].pipe(ckpt, buffer.getvalue())

    assert cl.read_callback_states(ckpt, storage_options=options) == states
    a = Counter("a")
    cl.restore([a], ckpt, storage_options=options)
    assert (a.n, a.payload) == (4, b"x")

    out = fresh()
    assert cl.to_callstate(ckpt, out, storage_options=options) == ["Counter[a]"]
    assert callstate.read(out, storage_options=options) == states

    a.n = 9
    callstate.save([a], out, storage_options=options)
    updated = fresh("updated.ckpt")
    cl.from_callstate(out, ckpt, out_path=updated, storage_options=options)
    written = torch.load(io.BytesIO(s3["fs"].cat(updated)), weights_only=True)
    assert written["callbacks"]["Counter[a]"]["n"] == 9 and written["epoch"] == 3
    assert torch.load(io.BytesIO(s3["fs"].cat(ckpt)), weights_only=True)["callbacks"]["Counter[a]"]["n"] == 4


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


_FORKSERVER = """
import os, sys
import s3fs
import callstate

url, endpoint, payload, part = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if part:  # s3fs uploads in parts of this size from twice it (its default: 50 MB): a multipart upload
    s3fs.S3FileSystem._pipe_file.__defaults__ = (part, None, "overwrite")
options = {"key": "testing", "secret": "testing", "endpoint_url": endpoint,
           "client_kwargs": {"region_name": "us-east-1"}}
# Imported once here; each writer is a fork of this process (no event loop runs yet), so a kill
# costs no interpreter start.
for line in sys.stdin:
    n = int(line)
    pid = os.fork()
    if pid == 0:
        while True:
            callstate.save({"n": n, "payload": bytes([n % 256]) * payload}, url, storage_options=options)
            print("saved", n, flush=True)
            n += 1
    print("writer", pid, flush=True)
    os.waitpid(pid, 0)
    print("reaped", flush=True)
"""


def _read_settled(url: str, options: dict[str, Any]) -> Any:
    """``callstate.read(url)``, read again (as its message says) while the object is replaced under it.

    A killed writer may have sent its last request (a multipart upload's completion) before the kill:
    the server then replaces the object while this read runs, which the read refuses, typed.
    """
    for attempt in range(10):
        try:
            return callstate.read(url, storage_options=options)
        except callstate.CorruptCheckpointError as e:
            if "since this read opened it" not in str(e) or attempt == 9:
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")


def _kill_writers(s3: dict[str, Any], tmp_path: Any, kills: int, payload: int, part: int) -> str:
    """Kill writers of one URL mid-upload ``kills`` times; after each, check the object is a whole save."""
    url, options = fresh(), s3["options"]
    script = tmp_path / "forkserver.py"
    script.write_text(textwrap.dedent(_FORKSERVER))
    server = subprocess.Popen(
        [sys.executable, str(script), url, s3["endpoint"], str(payload), str(part)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert server.stdin is not None and server.stdout is not None
    n = 1
    try:
        for i in range(kills):
            server.stdin.write(f"{n}\n")
            server.stdin.flush()
            pid = int(server.stdout.readline().split()[1])
            # Two saves done, timed: the kill lands at a point spread over the next save's encoding
            # and upload, a tenth to nine tenths of the way.
            first = server.stdout.readline().split()
            start = time.monotonic()
            second = server.stdout.readline().split()
            assert first[0] == second[0] == "saved"
            time.sleep((time.monotonic() - start) * (0.1 + 0.8 * ((i * 7) % 10) / 9))
            os.kill(pid, signal.SIGKILL)
            saved = [int(first[1]), int(second[1])]
            saved += [int(line.split()[1]) for line in iter(server.stdout.readline, "reaped\n")]
            state = _read_settled(url, options)  # every checksum verified
            assert state["payload"] == bytes([state["n"] % 256]) * payload
            assert state["n"] in (saved[-1], saved[-1] + 1)  # the last save done, or the one killed
            n = state["n"] + 1
    finally:
        server.stdin.close()
        server.wait(timeout=30)
        server.stdout.close()
    return url


@pytest.mark.slow
def test_sigkill_mid_upload_leaves_old_or_new_never_torn(s3: dict[str, Any], tmp_path: Any) -> None:
    """SIGKILL of a writer mid-upload, 20 times: the object is a whole save, and no multipart upload is left."""
    _kill_writers(s3, tmp_path, kills=20, payload=1 << 20, part=0)
    uploads = s3["fs"].call_s3("list_multipart_uploads", Bucket=BUCKET)
    assert uploads.get("Uploads", []) == []


@pytest.mark.slow
def test_sigkill_mid_multipart_upload_leaves_the_old_object_and_parts(s3: dict[str, Any], tmp_path: Any) -> None:
    """SIGKILL mid-multipart: the object is a whole save; parts left behind are the killed uploads' own (a lifecycle rule's to abort)."""
    url = _kill_writers(s3, tmp_path, kills=3, payload=11 << 20, part=5 << 20)
    key = url[len(f"s3://{BUCKET}/") :]
    uploads = s3["fs"].call_s3("list_multipart_uploads", Bucket=BUCKET, Prefix=key).get("Uploads", [])
    # No code of the killed process runs: what it started stays until aborted (docs/guide/remote.md).
    # Whether a kill lands inside an upload (and leaves parts) depends on timing; none lands elsewhere.
    assert {u["Key"] for u in uploads} <= {key}
    for u in uploads:
        s3["fs"].call_s3("abort_multipart_upload", Bucket=BUCKET, Key=key, UploadId=u["UploadId"])


def test_failed_multipart_upload_is_aborted(s3: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """A part that fails mid-multipart is a CheckpointWriteError; the upload is aborted, the old object kept."""
    url, options, fs = fresh(), s3["options"], s3["fs"]
    callstate.save({"n": 1}, url, storage_options=options)
    before = fs.cat_file(url)
    real = s3fs.S3FileSystem._call_s3

    async def failing(self: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        if method == "upload_part" and kwargs.get("PartNumber") == 2:
            raise OSError("injected: the connection dropped")
        return await real(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", failing)
    monkeypatch.setattr(s3fs.S3FileSystem._pipe_file, "__defaults__", (5 << 20, None, "overwrite"))
    with pytest.raises(CheckpointWriteError, match="injected") as e:
        callstate.save({"n": 2, "payload": b"x" * (11 << 20)}, url, storage_options=options)
    assert e.value.path == url
    monkeypatch.undo()
    assert fs.cat_file(url) == before
    key = url[len(f"s3://{BUCKET}/") :]
    assert fs.call_s3("list_multipart_uploads", Bucket=BUCKET, Prefix=key).get("Uploads", []) == []


@pytest.mark.slow
def test_commands_on_s3_urls_in_a_subprocess(s3: dict[str, Any]) -> None:
    """inspect, verify, diff of two URLs and rename in place run on s3:// with the endpoint and keys from the environment."""
    options = s3["options"]
    a_url, b_url = fresh("a.callstate"), fresh("b.callstate")
    a = Counter("a")
    a.n = 3
    callstate.save([a, Counter("b")], a_url, storage_options=options)
    a.n = 4
    callstate.save([a, Counter("b")], b_url, storage_options=options)
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": s3["endpoint"],
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "callstate", *args], env=env, capture_output=True, text=True, timeout=120
        )

    inspected = cli("inspect", a_url, "--json")
    assert inspected.returncode == 0, inspected.stderr
    assert [e["key"] for e in json.loads(inspected.stdout)["entries"]] == ["Counter[a]", "Counter[b]"]
    verified = cli("verify", a_url)
    assert verified.returncode == 0 and "every checksum matches" in verified.stdout
    diffed = cli("diff", a_url, b_url)
    assert diffed.returncode == 1 and "differ: 'Counter[a]': n (3 -> 4)" in diffed.stdout
    renamed = cli("rename", a_url, "Counter[a]", "Counter[z]")
    assert renamed.returncode == 0, renamed.stderr
    assert set(callstate.read(a_url, storage_options=options)) == {"Counter[z]", "Counter[b]"}
    gone = cli("verify", fresh())
    assert gone.returncode == 2 and "no such object" in gone.stderr
