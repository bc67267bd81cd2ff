"""Where a checkpoint lives: a local path, or an object in a remote store reached through fsspec.

A plain path, or a ``file://`` URL, is a local file: ``_files`` writes it through a temp file, its
fsync and a rename, as it always has. Any other ``protocol://...`` is an fsspec URL (fsspec is
imported only then, with the backend it names: s3fs, gcsfs, adlfs...). A save uploads the finished
bytes in one call (``pipe_file``: one request, or a multipart upload the backend aborts on failure),
never a temp object and a rename, which on an object store is a copy and a delete. A read fetches
the head, the index and the footer, then only the entries asked for, by ranged reads of the version
of the object it opened.
"""

from __future__ import annotations

import errno
import os
import re
import threading
from collections.abc import Mapping
from typing import Any, TypeGuard

from .._encoding import FOOTER, Window
from .._support import escape, require
from ..errors import (
    CheckpointNotFoundError,
    CheckpointWriteError,
    CorruptCheckpointError,
    MissingDependencyError,
)

StorageOptions = Mapping[str, Any] | None
"""What ``storage_options=`` takes: keyword arguments of the fsspec backend (``{"endpoint_url": ...}``)."""

_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://", re.ASCII)

# A read fetches the last this many bytes first: the footer and, in most files, the whole index.
_TAIL = 256 << 10
# An index larger than this is not fetched: a million entries' index is about 100 MB.
_MAX_INDEX = 1 << 30
# A large part is fetched this many bytes per request (see RemoteFile.expect).
_BLOCK = 64 << 20


def _memory() -> int:
    """The machine's memory in bytes: no whole read fetches more (it could not be held)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows): a bound all the same
        return 1 << 40


def is_url(path: object) -> TypeGuard[str]:
    """Return whether ``path`` is an fsspec URL other than ``file://`` (a str ``protocol://...``)."""
    if not isinstance(path, str):
        return False  # a PathLike is local: pathlib turns "s3://b" into "s3:/b"
    match = _URL.match(path)
    return match is not None and match[1].lower() != "file"


def local_path(path: str | os.PathLike[str]) -> str | os.PathLike[str]:
    """Return the local path of ``path``: a ``file://`` URL without its scheme, anything else as is."""
    if isinstance(path, str) and path[:7].lower() == "file://":
        return path[7:]
    return path


def _backend_package(protocol: str) -> str:
    from fsspec.registry import known_implementations

    spec = known_implementations.get(protocol, {})
    return str(spec.get("class", protocol)).partition(".")[0]


def filesystem(url: str, storage_options: StorageOptions, *, writing: bool = False) -> tuple[Any, str]:
    """Return the fsspec file system for ``url`` (built with ``storage_options``) and its path there.

    Raises:
        MissingDependencyError: fsspec, or the backend of the URL's protocol, is not installed.
        CheckpointWriteError: (``writing``) the backend could not be built from ``storage_options``.
        CorruptCheckpointError: (else) the same; the object cannot be read.
    """
    fsspec = require("fsspec", extra="remote", needed_for=f"The URL {escape(url, 200)}")
    protocol = url.partition("://")[0].lower()
    try:
        cls = fsspec.get_filesystem_class(protocol)
    except ImportError:
        package = _backend_package(protocol)
        raise MissingDependencyError(
            f"{escape(url, 200)}: {protocol}:// needs fsspec's backend {package}, which is not installed "
            f"here: pip install {package}.",
            name=package,
            extra="remote",
        ) from None
    except ValueError:
        raise MissingDependencyError(
            f"{escape(url, 200)}: fsspec knows no backend for {escape(protocol, 40)}://. Check the URL, "
            "or install the package that registers that protocol with fsspec.",
            name=protocol,
            extra="remote",
        ) from None
    try:
        fs = cls(**dict(storage_options or {}))
        return fs, str(cls._strip_protocol(url))
    except Exception as exc:
        # A backend checks its options (often its credentials too) when it is built: a wrong keyword,
        # a bad endpoint, or a storage_options that is no mapping fails here, in a type of its own.
        message = (
            f"{escape(url, 300)}: its fsspec backend could not be set up ({_reason(exc)}); check "
            "storage_options (a dict of the backend's keyword arguments), the credentials and the endpoint."
        )
        if writing:
            raise CheckpointWriteError(
                message + " Nothing was written.", path=url, errno=None, strerror=_reason(exc)
            ) from exc
        raise CorruptCheckpointError(message, path=url) from exc


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {escape(str(exc), 300)}"


def upload(url: str, data: bytes, storage_options: StorageOptions) -> None:
    """Upload the finished bytes of a checkpoint to ``url`` in one call: whole, or not at all.

    Raises:
        CheckpointWriteError: the backend refused or failed; the object that was there is unchanged.
        MissingDependencyError: see ``filesystem``.
    """
    fs, path = filesystem(url, storage_options, writing=True)
    try:
        fs.pipe_file(path, data)
    except Exception as exc:
        if isinstance(exc, FileNotFoundError):
            fix = "the bucket (or container) does not exist: create it first, or check the URL"
        elif isinstance(exc, PermissionError):
            fix = "the credentials may not write there: check them (the environment, or storage_options)"
        else:
            fix = "check the URL, the credentials and the endpoint (storage_options or the environment)"
        code = exc.errno if isinstance(exc, OSError) else None
        raise CheckpointWriteError(
            f"{escape(url, 300)}: could not be uploaded ({_reason(exc)}); {fix}. The object that was "
            "there is unchanged, and nothing is left beside it.",
            path=url,
            errno=code,
            strerror=_reason(exc),
        ) from exc


def not_found(url: str) -> CheckpointNotFoundError:
    return CheckpointNotFoundError(
        f"{escape(url, 300)}: no such object (or no such bucket). Check the URL; a save writes it.",
        path=url,
    )


def _changed(url: str, what: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"{escape(url, 300)}: {what} since this read opened it, so its parts would mix two versions; "
        "nothing was decoded from the new one. Read it again (registry states kept from it: save "
        "without them, registry.discard_unclaimed(), or load them again).",
        path=url,
    )


def _expired(exc: OSError) -> bool:
    """Return whether the backend refused a read because the object is no longer the version opened."""
    return type(exc).__name__ == "FileExpired" or (
        exc.errno in (errno.EINVAL, errno.ESTALE) and "condition" in str(exc).lower()
    )


class RemoteFile:
    """One version of a remote object, opened for ranged reads (a ``RangedFile`` for kept parts).

    The backend pins the version it opened where it can (s3fs sends ``If-Match`` with the ETag it
    saw): a changed object is a ``CorruptCheckpointError``, never a mix of two versions. Every read
    must return exactly the bytes asked for. ``fetched`` counts the bytes fetched.
    """

    def __init__(self, url: str, storage_options: StorageOptions) -> None:
        self.name = url
        fs, path = filesystem(url, storage_options)
        try:
            self._handle = fs.open(path, "rb", cache_type="none")
            self.nbytes = int(self._handle.size)
        except FileNotFoundError:
            raise not_found(url) from None
        except Exception as exc:
            message = f"{escape(url, 300)}: cannot be read ({_reason(exc)})."
            raise CorruptCheckpointError(message, path=url) from exc
        self.fetched = 0
        self._lock = threading.Lock()
        self._span = (0, 0)
        self._buffer, self._buffer_start, self._whole = b"", 0, False

    @property
    def origin(self) -> str:
        """The URL."""
        return self.name

    def fetch(self, start: int, stop: int) -> bytes:
        """Return the bytes from ``start`` to ``stop``, fetched now in one ranged read."""
        want = stop - start
        if start < 0 or want < 0 or stop > self.nbytes:
            raise _changed(self.name, f"a read of bytes {start}-{stop} lies outside its {self.nbytes} bytes")
        with self._lock:
            try:
                self._handle.seek(start)
                data = self._handle.read(want)
            except FileNotFoundError:
                raise _changed(self.name, "it was deleted") from None
            except OSError as exc:
                if _expired(exc):
                    raise _changed(self.name, "it was replaced") from None
                raise CorruptCheckpointError(
                    f"{escape(self.name, 300)}: cannot be read ({_reason(exc)}).", path=self.name
                ) from exc
            except Exception as exc:
                raise CorruptCheckpointError(
                    f"{escape(self.name, 300)}: cannot be read ({_reason(exc)}).", path=self.name
                ) from exc
            if not isinstance(data, bytes | bytearray) or len(data) != want:
                got = len(data) if isinstance(data, bytes | bytearray) else type(data).__name__
                raise CorruptCheckpointError(
                    f"{escape(self.name, 300)}: the server sent {got} bytes for a read of {want} at "
                    f"{start}: it changed, or the server is broken. Nothing was decoded from it.",
                    path=self.name,
                )
            self.fetched += want
            return bytes(data)

    def keep_whole(self) -> bytes:
        """Fetch the whole object once and serve every later read from it; return it.

        Raises:
            CorruptCheckpointError: the object claims more bytes than the machine's memory (a
                server's claim is not trusted with an allocation), or see ``fetch``.
        """
        if self.nbytes > _memory():
            raise CorruptCheckpointError(
                f"{escape(self.name, 300)}: the server gives its size as {self.nbytes} bytes, more than this "
                f"machine's memory ({_memory()}), so it is not fetched whole: the wrong object, or a "
                "broken server. A load reads only its header, index and the entries claimed.",
                path=self.name,
            )
        data = self.fetch(0, self.nbytes)
        with self._lock:
            self._buffer, self._buffer_start, self._whole = data, 0, True
        return data

    def expect(self, offset: int, nbytes: int) -> None:
        """Let the next reads within ``nbytes`` at ``offset`` fetch up to ``_BLOCK`` bytes per request."""
        with self._lock:
            self._span = (offset, offset + nbytes)

    def read_into(self, out: memoryview, offset: int) -> None:
        """Fill ``out`` with the bytes at ``offset``, from what was fetched or by a ranged read."""
        end = offset + out.nbytes
        with self._lock:
            start = self._buffer_start
            if start <= offset and end <= start + len(self._buffer):
                out[:] = memoryview(self._buffer)[offset - start : end - start]
                return
            span_start, span_end = self._span
        stop = end
        if span_start <= offset and end <= span_end:
            stop = max(end, min(span_end, offset + _BLOCK))
        data = self.fetch(offset, stop)
        out[:] = memoryview(data)[: out.nbytes]
        with self._lock:
            if not self._whole:
                self._buffer, self._buffer_start = (data, offset) if stop > end else (b"", 0)


def head(url: str, nbytes: int, storage_options: StorageOptions) -> tuple[bytes, int]:
    """Return the first ``nbytes`` bytes of the remote object ``url`` (fewer if it is shorter) and its size.

    Raises:
        CheckpointNotFoundError: no such object.
        CorruptCheckpointError: it cannot be read.
    """
    file = RemoteFile(url, storage_options)
    return file.fetch(0, min(nbytes, file.nbytes)), file.nbytes


def exists(url: str, storage_options: StorageOptions) -> bool:
    """Return whether the remote object ``url`` exists (a missing bucket is no object either)."""
    fs, path = filesystem(url, storage_options)
    try:
        return bool(fs.exists(path))
    except FileNotFoundError:
        return False


def fetch_whole(url: str, storage_options: StorageOptions) -> bytes:
    """Return the bytes of the remote object ``url``, fetched in one read (see ``RemoteFile``)."""
    return RemoteFile(url, storage_options).keep_whole()


def _index_start(tail: bytes, size: int) -> int | None:
    """Return where the index starts by the footer at the end of ``tail``, or None if it is no footer."""
    if len(tail) < FOOTER.size:
        return None
    index_offset, index_len, _crc, _footer_crc, _end = FOOTER.unpack(tail[-FOOTER.size :])
    if index_offset + index_len + FOOTER.size != size:
        return None  # parse says what is wrong with it
    return int(index_offset)


def open_remote(
    url: str, storage_options: StorageOptions, *, whole: bool = False
) -> tuple[memoryview | Window, str, RemoteFile]:
    """Open a remote checkpoint for ``parse``: its whole bytes (``whole``, or a small object), or a
    ``Window`` of its head, index and footer whose entries are fetched by ranged reads when needed.

    Raises:
        CheckpointNotFoundError: no such object.
        CorruptCheckpointError: it cannot be read, changed while read, or its index is too large.
        MissingDependencyError: see ``filesystem``.
    """
    file = RemoteFile(url, storage_options)
    size = file.nbytes
    if whole or size <= _TAIL:
        return memoryview(file.keep_whole()), url, file
    head = file.fetch(0, 16)  # the header
    tail_start = size - _TAIL
    tail = file.fetch(tail_start, size)
    start = _index_start(tail, size)
    if start is not None and 16 <= start < tail_start:
        if size - start > _MAX_INDEX:
            raise CorruptCheckpointError(
                f"{escape(url, 300)}: its footer gives an index of {size - start} bytes, more than "
                f"{_MAX_INDEX} a remote read fetches; it is damaged or crafted.",
                path=url,
            )
        tail = file.fetch(start, tail_start) + tail
    return Window(size, head, tail, file), url, file

