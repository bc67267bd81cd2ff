"""Background saves: every state is captured at the call; the file is written and flushed in a thread."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from typing import IO, TYPE_CHECKING, Any

from .._core import stamp
from .._encoding import CAPTURE, Entry, encode_entries, new_buffer, write_container
from ._files import Target, atomic_write, versioned_states, where_to
from ._storage import StorageOptions

if TYPE_CHECKING:  # concurrent.futures is imported on the first background save: import stays fast
    from concurrent.futures import Future

# The last background write started for each path (its real path), so the next one waits for it.
_lock = threading.Lock()
_last: dict[str, Future[None]] = {}


def captured_entries(states: Mapping[Any, Any], dest: str | None = None) -> list[Entry]:
    """Return the encoded entries of ``states`` holding only private copies: nothing a caller can change.

    The encoder gives large arrays and tensors as views of their own memory; each is copied here,
    once, unless it is already a copy (a device tensor brought to the host, in pinned memory, or a
    non-contiguous array made contiguous). Checksums are left for the writer. ``dest`` is the real
    path to be written (see ``_format.encode_entries``).
    """
    private: list[memoryview] = []
    CAPTURE.private = private
    try:
        entries = encode_entries(states, checksums=False, dest=dest)
    finally:
        del CAPTURE.private
    owned = {id(raw) for raw in private}
    return [
        (key, codec, tuple(_own(p, owned) for p in parts), crc, info)
        for key, codec, parts, crc, info in entries
    ]


def _own(part: Any, owned: set[int]) -> Any:
    if type(part) is bytes or id(part) in owned:
        return part
    if isinstance(part, memoryview) and type(part.obj) is bytes:
        return part  # a view of bytes, which cannot change
    view = memoryview(part)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    # One copy into memory mapped for it (huge pages, no zero-fill pass): bytes(part) would fault
    # in every 4 KB page (65,537 faults against 128 for 256 MB here, 7x the time).
    out = new_buffer(view.nbytes)
    memoryview(out)[:] = view
    return out


def _shutting_down() -> bool:
    """Return whether the interpreter has begun to exit (its atexit handlers are running)."""
    # Python joins non-daemon threads before it runs the atexit handlers, never after: a thread
    # started by a handler is killed at exit with its write unfinished (3.11 starts it; 3.12 refuses
    # to). threading sets this flag as it begins that join.
    return bool(getattr(threading, "_SHUTTING_DOWN", False))


def write_in_background(
    path: str | os.PathLike[str],
    write: Callable[[IO[bytes]], object],
    storage_options: StorageOptions = None,
) -> Future[None]:
    """Start ``atomic_write(path, write)`` in a thread, after the previous one to ``path``; return its future.

    ``path`` may be an fsspec URL (uploaded with ``storage_options``), ordered with the other writes to it.

    The thread is not a daemon: the interpreter waits for it before exiting. Once the interpreter is
    exiting (called from an ``atexit`` handler), no thread would be waited for: the write is done
    here, before this returns, and its failure is raised here (the future is done either way).
    """
    from concurrent.futures import Future

    name = os.fspath(path)
    where = where_to(name)
    future: Future[None] = Future()
    future.set_running_or_notify_cancel()
    with _lock:
        previous = _last.get(where)
        _last[where] = future

    def run() -> None:
        if previous is not None:
            previous.exception()  # waits; its failure is its own future's to report
        try:
            atomic_write(name, write, storage_options)
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result(None)
        finally:
            with _lock:
                if _last.get(where) is future:
                    del _last[where]

    if not _shutting_down():
        try:
            threading.Thread(target=run, name=f"callstate save {name}", daemon=False).start()
            return future
        except RuntimeError:  # "can't create new thread at interpreter shutdown" (3.12+)
            pass
    run()
    failure = future.exception()
    if failure is not None:
        raise failure  # nobody may wait on the future at exit: the handler's caller sees it
    return future


def save_async(
    target: Target | Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    meta: Mapping[str, Any] | None = None,
    storage_options: StorageOptions = None,
) -> Future[None]:
    """Capture the states of ``target`` now, and write them to ``path`` atomically in the background.

    Every state is encoded, and its large arrays and tensors copied, before this returns: a callback
    may change its state right after, and the file holds the states as they were at the call (CUDA
    tensors are copied to pinned host memory). The checksums, the write, its fsync, the rename and
    the directory's fsync happen in a background thread, as ``save`` does them. Writes to one path
    run one at a time, in the order of the calls, so the last call's states are the ones left; the
    interpreter waits for pending writes before it exits. Called while the interpreter exits (from
    an ``atexit`` handler, when no thread would be waited for), it writes the file before it
    returns, and raises what the write raised.

    Args:
        target: a ``CallbackRegistry``, a list of callbacks, or a mapping ``{key: state}``.
        path: the file to write, or an fsspec URL (the upload runs in the background).
        meta: JSON-serialisable metadata stored in the file's index.
        storage_options: for a URL, the fsspec backend's options (see ``save``).

    Returns:
        A ``concurrent.futures.Future`` whose ``result()`` is None once the file is in place, or
        raises what the write raised (``CheckpointWriteError`` when the file system refuses it; the
        file that was there is then unchanged).

    Raises:
        SerializationError: a state cannot be serialised (raised at the call; nothing is written).
        DuplicateKeyError: two callbacks share a key (at the call; nothing is written).
        CheckpointWriteError: called while the interpreter exits, the write failed.

    .. versionadded:: 0.1
    """
    return write_in_background(path, capture(target, meta=meta, dest=where_to(path)), storage_options)


def capture(
    target: Target | Mapping[str, Any], *, meta: Mapping[str, Any] | None = None, dest: str | None = None
) -> Callable[[IO[bytes]], None]:
    """Capture the states of ``target`` now; return what writes them, as a callstate file, to an open file.

    What ``save_async`` writes in its thread (for writers whose file is not callstate's to place,
    such as an orbax checkpoint item). ``dest`` is as for ``captured_entries``.

    Raises:
        SerializationError, DuplicateKeyError: as for ``save_async``, at the call.
    """
    # As in save: the versions entry of the mapping goes into each entry's info.
    states, versions = versioned_states(target)
    entries = stamp(captured_entries(states, dest), versions)
    meta_dict = dict(meta or {})

    def write(out: IO[bytes]) -> None:
        write_container(out, entries, meta_dict)

    return write
