"""Saving and loading callback states as callstate files: safe, atomic, checked and lazy."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import sys
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from typing import IO, Any, cast

from .._core import (
    VERSIONS_KEY,
    CallbackRegistry,
    RestoreReport,
    Saved,
    as_registry,
    as_states,
    entry_version,
    info_version,
    refuse_entry,
    relocation_of,
    split,
    stamp,
    versions_problem,
)
from .._encoding import (
    Allowance,
    EntryInfo,
    Source,
    chained_crc,
    decode_parts,
    encode_entries,
    encoded_entries,
    open_kept,
    parse,
    verify,
    write_container,
)
from .._support import warn_user
from ..errors import CallstateError, CallstateWarning, CheckpointWriteError, SerializationError
from ._storage import StorageOptions, is_url, local_path, open_remote, upload

Target = CallbackRegistry | Iterable[object]
_TMP_SUFFIX = ".callstate-tmp"
# What atomic_write names its temp files, between the prefix and the suffix: host, pid, 12 hex digits.
# A name that is not exactly this is another program's, and is left alone.
_TMP_NAME = re.compile(r"(?P<host>[^/]+)\.(?P<pid>[1-9][0-9]{0,9})\.[0-9a-f]{12}", re.ASCII)
_PID_MAX = 1 << 22  # Linux's highest pid_max; a larger number is no process of ours
# Temp files of writers on other hosts (shared file systems) are only removed once this old.
_FOREIGN_TMP_AGE = 24 * 3600


def versioned_states(target: Target | Mapping[str, Any]) -> tuple[Any, Mapping[Hashable, int]]:
    """Return the states of ``target`` to save and their versions, checked (the versions entry taken out)."""
    given = as_states(target)
    problem = versions_problem(given[VERSIONS_KEY]) if VERSIONS_KEY in given else None
    if problem is not None:
        raise SerializationError(
            f"The {VERSIONS_KEY!r} entry of the states to save {problem}: it must map state keys to "
            f"their versions (ints from 1); fix it, or leave it out to save every state at version 1.",
            key=VERSIONS_KEY,
        )
    return split(given, None, None)


def _encode(
    target: Target | Mapping[str, Any],
    meta: Mapping[str, Any] | None,
    checksums: bool = True,
    dest: str | os.PathLike[str] | None = None,
) -> Any:
    # The versions entry of the mapping goes into each entry's info, not into an entry of its own.
    states, versions = versioned_states(target)
    where = None if dest is None else where_to(dest)
    entries = encode_entries(states, checksums=checksums, dest=where)
    return stamp(entries, versions), dict(meta or {})


def where_to(path: str | os.PathLike[str]) -> str:
    """Return where a save to ``path`` writes, as a read of it names its origin: a URL, or a real path."""
    return path if is_url(path) else os.path.realpath(local_path(path))


def _open(source: Source, storage_options: StorageOptions, *, keep: bool, whole: bool) -> Any:
    """Return ``(view, name, file)`` for ``parse``: a local file or bytes (``open_kept``), or a remote
    object (whole, or a ``Window`` whose entries are fetched when needed)."""
    if is_url(source):
        view, name, remote = open_remote(source, storage_options, whole=whole)
        return view, name, remote if keep else None
    if isinstance(source, str):
        source = local_path(source)
    return open_kept(source, keep=keep)


def dumps(target: Target | Mapping[str, Any], *, meta: Mapping[str, Any] | None = None) -> bytes:
    """Return the states of ``target`` as the bytes of a callstate file.

    Args:
        target: a ``CallbackRegistry``, a list of callbacks, or a mapping ``{key: state}``.
            Undecoded states (``EncodedState``, as kept in ``registry.unclaimed``) are written back
            byte for byte; a pickled one kept from a file read without ``trusted=True`` is marked
            ``{"kept": "<that file>"}`` in its info (see ``read``'s ``trust_kept``). A mapping's
            ``"callstate:versions"`` entry is written as each named
            entry's version (in its info), not as an entry.
        meta: JSON-serialisable metadata stored in the file's index.

    Raises:
        SerializationError: a state cannot be serialised, or the mapping's ``"callstate:versions"``
            entry is not ``{key: version}`` (nothing is produced).
        DuplicateKeyError: two callbacks share a key.

    .. versionadded:: 0.1
    """
    entries, meta_dict = _encode(target, meta)
    out = io.BytesIO()
    write_container(out, entries, meta_dict)
    return out.getvalue()


def _tmp_prefix(path: str) -> str:
    directory, base = os.path.split(path)
    return os.path.join(directory, f".{base}.")


def _hostname() -> str:
    import socket  # here, not at the top: it alone costs a tenth of callstate's import time

    return socket.gethostname()


def _remove_stale_temps(path: str) -> None:
    """Remove temp files left by writers to ``path`` that died; never those of live writers.

    A writer holds an advisory lock (``flock``) on its temp file for as long as it has it open, so a
    temp file whose lock cannot be taken belongs to a live writer, in whatever PID namespace (two
    containers sharing one volume and one host name see different processes behind one pid). One
    whose lock can be taken is removed if its pid is not alive here (a writer of a version without
    the lock, on this host, is still seen alive by it) or once it is a day old; on a file system
    without locks, only once it is a day old.
    """
    directory = os.path.dirname(path) or "."
    prefix = os.path.basename(_tmp_prefix(path))
    host = _hostname()
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(_TMP_SUFFIX)):
            continue
        match = _TMP_NAME.fullmatch(name[len(prefix) : -len(_TMP_SUFFIX)])
        if match is None or int(match["pid"]) > _PID_MAX:
            continue
        full = os.path.join(directory, name)
        try:
            fd = os.open(full, os.O_RDONLY | os.O_NONBLOCK | _O_NOFOLLOW | _O_CLOEXEC)
        except OSError:
            continue  # gone already, or not ours to open: either way not worth failing a save
        try:
            stale = _stale(fd, match["host"] == host, int(match["pid"]))
            if stale and sys.platform != "win32":  # Windows removes no open file
                os.unlink(full)  # while holding its lock: no writer can be taking it up meanwhile
        except OSError:
            stale = False  # gone already, or not ours to remove: either way not worth failing a save
        finally:
            os.close(fd)
        if stale and sys.platform == "win32":
            with contextlib.suppress(OSError):
                os.unlink(full)


def _stale(fd: int, same_host: bool, pid: int) -> bool:
    """Return whether the temp file open as ``fd`` was left by a dead writer (see _remove_stale_temps)."""
    locked = _lock(fd, wait=False)
    if locked is False:
        return False  # its writer is alive
    old = time.time() - os.fstat(fd).st_mtime >= _FOREIGN_TMP_AGE
    if locked is None or not same_host:
        return old
    return old or not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _lock(fd: int, *, wait: bool) -> bool | None:
    """Take the advisory lock of the file open as ``fd``: True once taken, False if another holds
    it (only without ``wait``), None on a file system without such locks (some network ones).
    It is released when every descriptor of that open file is closed."""
    if sys.platform == "win32":
        return True  # no PID namespaces there: whether the writer's pid is alive says enough
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    except OSError:  # ENOLCK, EOPNOTSUPP: a file system without flock
        return None
    return True


def _locked_temp(path: str) -> tuple[str, int]:
    """Create a unique temp file beside ``path``, its lock held; return its name and descriptor.

    Raises:
        OSError: it cannot be created.
    """
    for _attempt in range(_TEMP_ATTEMPTS):
        tmp = f"{_tmp_prefix(path)}{_hostname()}.{os.getpid()}.{os.urandom(6).hex()}{_TMP_SUFFIX}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o666)
        _lock(fd, wait=True)  # a remover holds it only while it unlinks a file it judged dead
        try:
            if os.path.samestat(os.fstat(fd), os.stat(tmp)):
                return tmp, fd
        except FileNotFoundError:
            pass
        # A remover in another PID namespace took it for dead in the moment before the lock: afresh.
        os.close(fd)
    raise FileNotFoundError(errno.ENOENT, "temp files beside it keep being removed", path)


# A new temp file is removed before its writer locks it only by a remover that judges its pid dead
# in the same microseconds: a few attempts are more than enough.
_TEMP_ATTEMPTS = 8


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # some platforms cannot open directories; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):  # file systems that cannot sync a directory
            # The new file is in place and complete; only its surviving a crash right now is unsure.
            warn_user(
                CallstateWarning(
                    f"{directory}: the checkpoint was written, but flushing the directory failed "
                    f"({exc.strerror or exc}): a crash in the next seconds may bring back the previous "
                    "file. Check the device."
                )
            )
    finally:
        os.close(fd)


def save(
    target: Target | Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    meta: Mapping[str, Any] | None = None,
    storage_options: StorageOptions = None,
) -> None:
    """Write the states of ``target`` to ``path`` atomically.

    Every state is serialised before the file system is touched. The file is written to a unique
    temp file beside ``path``, flushed to disk, renamed over ``path`` and the directory is synced:
    a crash at any moment leaves the previous file or the new one. Concurrent writers never fail
    because of each other; the last complete write wins. Temp files left by dead writers are removed.

    Args:
        target: a ``CallbackRegistry``, a list of callbacks, or a mapping ``{key: state}`` (see
            ``dumps``: a pickled state kept from another file read without trust is marked so).
        path: the file to write, or an fsspec URL (``s3://bucket/run.callstate``), uploaded whole
            in one call once every byte is ready (no temp object; see the remote storage guide).
        meta: JSON-serialisable metadata stored in the file's index.
        storage_options: for a URL, the fsspec backend's options (endpoint, credentials); without
            them the backend reads the environment. Ignored for a local path.

    Raises:
        SerializationError: a state cannot be serialised, or the mapping's ``"callstate:versions"``
            entry is not ``{key: version}`` (nothing is written).
        DuplicateKeyError: two callbacks share a key (nothing is written).
        CheckpointWriteError: the file or object could not be written; what was there is unchanged.
        MissingDependencyError: a URL whose fsspec backend is not installed.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2 fsspec URLs and ``storage_options``.
    """
    # Checksums are computed as the file is written, each piece while it is in the cache.
    entries, meta_dict = _encode(target, meta, checksums=False, dest=path)
    atomic_write(path, lambda f: write_container(f, entries, meta_dict), storage_options)


def atomic_write(
    path: str | os.PathLike[str],
    write: Callable[[IO[bytes]], object],
    storage_options: StorageOptions = None,
) -> None:
    """Call ``write(file)`` on a unique temp file beside ``path``, then move it onto ``path``.

    The temp file is flushed to disk before the rename and the directory after it, so a crash at any
    moment leaves the old file or the new one. Temp files of dead writers to ``path`` are removed.
    An fsspec URL gets the bytes ``write`` wrote, uploaded in one call (``_storage.upload``).
    """
    if is_url(path):
        out = io.BytesIO()
        write(out)
        upload(path, out.getvalue(), storage_options)
        return
    path = os.fspath(local_path(path))
    directory = os.path.dirname(path) or "."
    _remove_stale_temps(path)
    try:
        tmp, fd = _locked_temp(path)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    try:
        # Open, and so locked, until it is in place: until then another writer's removal of stale
        # temp files sees a live writer, whatever PID namespace it judges from.
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, CallstateError):
            raise _write_error(path, exc) from exc
        raise
    _fsync_directory(directory)


# What to do about a failed write, by errno (ENOENT and ENOTDIR: by what the path's parents are).
_WRITE_FIXES = {
    errno.ENOSPC: "free space on the device, or save elsewhere",
    errno.EDQUOT: "free space within your quota, or save elsewhere",
    errno.EROFS: "the file system is read-only: save to a writable directory",
    errno.EACCES: "the directory is not writable by this user: save to a writable one",
    errno.EPERM: "the directory is not writable by this user: save to a writable one",
    errno.EISDIR: "the path is a directory: give the path of a file",
    errno.EIO: "the device reported an I/O error: check it, or save elsewhere",
}


def _write_error(path: str, exc: OSError) -> CheckpointWriteError:
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        fix = _parent_fix(os.path.dirname(path) or ".")
    else:
        fix = _WRITE_FIXES.get(exc.errno or 0, "check the path and the device")
    return CheckpointWriteError(
        f"{path}: could not be written ({reason}); {fix}. The file that was there is unchanged and no "
        "temp file is left.",
        path=path,
        errno=exc.errno,
        strerror=exc.strerror,
    )


def _parent_fix(directory: str) -> str:
    """Say why no file could be made in ``directory`` (ENOENT or ENOTDIR), from what its parts are.

    ENOENT also comes from a directory that exists but takes no new files (/proc and other virtual
    file systems): only a look at the parents tells that from a directory that is not there.
    """
    if os.path.isdir(directory):
        return (
            f"the directory {directory} exists, but no file can be created in it (a virtual file "
            "system such as /proc or /sys, or one that disappeared meanwhile): save to a directory "
            "on a regular file system"
        )
    part = directory
    while part and not os.path.lexists(part):
        parent = os.path.dirname(part)
        if parent == part:
            break
        part = parent
    if part and os.path.lexists(part) and not os.path.isdir(part):
        return f"{part} is a file, not a directory: give a path inside a directory"
    return f"the directory {directory} does not exist: create it first"


def _load_into(
    target: Target,
    source: Source,
    *,
    strict: bool,
    trusted: bool,
    relocate: Mapping[Any, Any] | None,
    storage_options: StorageOptions = None,
) -> RestoreReport:
    registry = as_registry(target)
    relocation = relocation_of(relocate)  # a malformed relocate= fails before the file is opened
    view, name, file = _open(source, storage_options, keep=True, whole=False)
    allowance = Allowance(view.nbytes, bound_memory=not trusted)  # one for every entry of the file
    entries, _meta = parse(view, name, allowance)
    states = cast(
        "dict[Hashable, Any]", encoded_entries(entries, name, trusted, file, allowance=allowance)
    )
    saved = Saved(states, source=name, fresh=True, relocate=relocation)
    return registry.begin_restore(saved, strict=strict).apply()


def load(
    target: Target,
    path: str | os.PathLike[str],
    *,
    strict: bool = False,
    trusted: bool = False,
    relocate: Mapping[Any, Any] | None = None,
    storage_options: StorageOptions = None,
) -> RestoreReport:
    """Restore the callbacks of ``target`` from a callstate file.

    Only the states that a callback claims are decoded (each checked against its checksum first).
    The others stay encoded in ``registry.unclaimed`` and are written back byte for byte by the
    next save.

    Args:
        target: a ``CallbackRegistry`` or a list of callbacks.
        path: the file, or an fsspec URL: its header and index are fetched, then only the claimed
            entries, by ranged reads (the others when a save writes them back).
        strict: see ``CallbackRegistry.load_state_dict``.
        trusted: also decode states saved with pickle or cloudpickle (format version 1 files, and
            types the data codec does not write), which can run any code. Only for files you trust;
            by default only plain data is decoded, with no pickle (see ``callstate.register_type``).
        relocate: ``{old prefix: new prefix}``: paths in the claimed states that are an old prefix
            or lie under it (whole components; URLs too) are moved to the new one before the
            callbacks see them, and counted in the report's ``relocated``.

    Raises:
        CorruptCheckpointError: the file is truncated, altered, or not a callstate file.
        UnsupportedFormatError: it was written by a newer format version.
        UnsafeCheckpointError: a claimed state is a pickle and ``trusted`` is false (nothing was run,
            no callback was changed).
        UnknownTypeError: a claimed state holds a registered type not registered here.
        StateMismatchError, RestoreError: as for ``CallbackRegistry.load_state_dict``.
        RelocationError: relocating made two dict keys of a state one (nothing was changed).
        CheckpointNotFoundError: a URL names no object (a missing local file: ``FileNotFoundError``).

    ``storage_options``: see ``save``.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2 fsspec URLs and ``storage_options``.
    """
    return _load_into(
        target, path, strict=strict, trusted=trusted, relocate=relocate, storage_options=storage_options
    )


def loads(
    target: Target,
    data: bytes | bytearray | memoryview,
    *,
    strict: bool = False,
    trusted: bool = False,
    relocate: Mapping[Any, Any] | None = None,
) -> RestoreReport:
    """Restore the callbacks of ``target`` from the bytes of a callstate file (see ``load``).

    .. versionadded:: 0.1
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(
            f"loads() takes bytes; for a path use callstate.load(). Got {type(data).__qualname__}."
        )
    return _load_into(target, data, strict=strict, trusted=trusted, relocate=relocate)


def read(
    source: Source,
    *,
    trusted: bool = False,
    lazy: bool = False,
    trust_kept: bool = False,
    storage_options: StorageOptions = None,
) -> dict[str, Any]:
    """Return the ``{key: state}`` mapping of a callstate file or its bytes, with no registry.

    Every checksum is verified before anything is decoded. When an entry was saved at a version
    other than 1 of its class, the mapping ends with a ``"callstate:versions"`` entry
    ``{key: version}`` (with ``lazy``, each ``EncodedState`` carries its version in its ``info``).

    Args:
        source: a path, an fsspec URL (fetched whole: every checksum is verified), or the bytes of a file.
        trusted: see ``load``.
        lazy: return ``EncodedState`` values, decoding nothing.
        trust_kept: with ``trusted``, also decode pickled states that a save kept from another file
            read without trust (their info says ``{"kept": "<that file>"}``): ``trusted=True`` alone
            refuses them, as it vouches for this file only. For accepting such a state deliberately,
            once: ``callstate.save(callstate.read(path, trusted=True, trust_kept=True), path)``
            writes them as your own.

    Raises:
        CorruptCheckpointError, UnsupportedFormatError, UnsafeCheckpointError: see ``load``; also an
            entry under the reserved key ``"callstate:versions"`` (``.key``), which no writer makes.
            ``UnsafeCheckpointError`` also for a kept pickle (see ``trust_kept``).

    ``storage_options``: see ``save``.

    .. versionadded:: 0.1
    """
    view, name, file = _open(source, storage_options, keep=lazy, whole=True)
    allowance = Allowance(view.nbytes, bound_memory=not trusted)  # one for every entry of the file
    entries, _meta = parse(view, name, allowance)
    refuse_entry((e.key for e in entries), name)
    for e in entries:
        verify(e, name)
    if lazy:
        lazily = encoded_entries(
            entries, name, trusted, file, trust_kept=trust_kept, allowance=allowance
        )
        return dict(lazily)
    out: dict[str, Any] = {
        e.key: decode_parts(
            e.codec, e.parts, trusted=trusted, name=name, key=e.key, info=e.info, trust_kept=trust_kept,
            allowance=allowance,
        )
        for e in entries
    }
    versions = {e.key: info_version(e.info, name, e.key) for e in entries if e.info}
    versions = {k: v for k, v in versions.items() if v != 1}
    if versions:
        out[VERSIONS_KEY] = versions
    return out


def read_meta(source: Source, *, storage_options: StorageOptions = None) -> dict[str, Any]:
    """Return the metadata stored with ``save(..., meta=...)`` (of a URL: its head and index only)."""
    view, name, _file = _open(source, storage_options, keep=False, whole=False)
    return parse(view, name)[1]


def inspect(source: Source, *, storage_options: StorageOptions = None) -> list[EntryInfo]:
    """Describe every entry of a callstate file (key, codec, size, checksum) without decoding any.

    Raises:
        CorruptCheckpointError: the header, index or footer is damaged (a damaged payload, or a
            malformed version in an entry's info, is reported as ``ok=False`` instead).
        UnsupportedFormatError: the file was written by a newer format version.

    ``source`` may be an fsspec URL (``storage_options``: see ``save``).

    .. versionadded:: 0.1
    """
    return list(describe_entries(source, storage_options=storage_options))


def describe_entries(source: Source, *, storage_options: StorageOptions = None) -> Iterator[EntryInfo]:
    """Yield ``inspect``'s description of each entry as its checksum is checked, one entry at a time.

    The file's header, index and footer are checked before the first; the ``callstate inspect``
    command draws its progress from this, over large files.
    """
    view, name, _file = _open(source, storage_options, keep=False, whole=True)
    entries, _meta = parse(view, name)
    for e in entries:
        version = entry_version(e.info)  # a malformed one is this entry's damage, not the file's
        yield EntryInfo(
            key=e.key,
            codec=e.codec,
            size=sum(p.nbytes for p in e.parts),
            checksum=f"{e.crc:08x}",
            ok=chained_crc(e.parts) == e.crc and version is not None,
            info=dict(e.info),
            version=version or 1,
        )
