"""The callstate file format, version 2 (reads 1 and 2): encoding states, and reading them back checked.

Layout (all integers little-endian)::

    header   16 bytes  MAGIC (8) | version u16 | flags u16 | crc32 of the 12 bytes before it
    entries            for each entry, contiguous: its payload stream, then its out-of-band buffers
    index              UTF-8 JSON: {"entries": [[key, codec, offset, [part sizes], crc32, {info}],
                                                ...],
                                    "meta": {...}}
    footer   32 bytes  index offset u64 | index length u64 | index crc32 u32 | crc32 of those 20
                       bytes u32 | END_MAGIC (8)

Every byte is covered by a checksum, and entries must tile the space between the header and the
index exactly, so truncation, a flipped bit or trailing garbage is always detected. The first 16
bytes keep this shape in every later version, so a newer file is recognised as such.

Codecs: ``"data"`` (version 2's default, ``callstate._encoding._codec``: plain data, decoded with no pickle,
safe for any file), ``"pickle"`` and ``"cloudpickle"`` (for states the data codec cannot write; they
can run code, so they are decoded only with ``trusted=True``). An entry's info mapping (version 2)
says why it was pickled: ``{"pickled": "<type or reason>"}``, and the version of the state's class
when it is not 1: ``{"version": "3"}`` (see ``callstate._core._versions``), and, for a pickled state
written back from another file that was not read with ``trusted=True``, where it was kept from:
``{"kept": "<that file>"}`` (such an entry is refused even with ``trusted=True``, see ``KEPT``).
Version 1 records have five fields and only the two pickle codecs: version 1 states are decoded
only with ``trusted=True``.
"""

from __future__ import annotations

import io
import mmap
import os
import pickle
import stat
import struct
import sys
import zlib
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import IO, Any, NamedTuple

import attrs

from .._support import escape, show, warn_user
from ..errors import (
    CallstateError,
    CorruptCheckpointError,
    MissingDependencyError,
    PickledStateWarning,
    SerializationError,
    UnknownTypeError,
    UnsafeCheckpointError,
    UnsupportedFormatError,
)
from ._allowance import Allowance, Oversized, list_bytes, set_bytes
from ._encoded import (
    Buffer,
    EncodedState,
    FilePart,
    OpenFile,
    chained_crc,
    crc32,
    filled,
    in_memory,
    recognised,
)
from ._tensors import reduce_tensor

MAGIC = b"\x89CALLST\n"
END_MAGIC = b"\nCLSTEND"
VERSION = 2
HEADER = struct.Struct("<8sHHI")
FOOTER = struct.Struct("<QQII8s")
FOOTER_CRC_SPAN = 20
CODECS = {1: ("pickle", "cloudpickle"), 2: ("data", "pickle", "cloudpickle")}
# Buffers at least this large are written out of band: straight from the array's memory.
MAX_PARTS = 1 << 16
_MAX_INFO_ITEMS = 16
_MAX_INFO_TEXT = 1000
# What an entry read from a version 1 file carries in its info, so a later save keeps saying so.
V1_INFO = {"format": "1"}
KEPT = "kept"
"""The info item that marks a pickled entry kept from a file read without trust: ``{"kept": source}``.

Trust does not launder: ``trusted=True`` vouches for the file being read, not for the files its
kept states came from, so such an entry is decoded only with ``trust_kept=True`` as well.
"""
# The callstate info items a save writes itself; an entry's other items make way for the mark.
_OWN_INFO = ("pickled", "format", "version", KEPT)

Source = bytes | bytearray | memoryview | str | os.PathLike[str]




@attrs.frozen
class EntryInfo:
    """One entry of a callstate file, as ``callstate.inspect`` describes it without decoding.

    Attributes:
        key: the state key.
        codec: ``"data"`` (safe for any file), ``"pickle"`` or ``"cloudpickle"`` (trusted files only).
        size: payload size in bytes (stream and out-of-band buffers).
        checksum: the recorded CRC-32, as 8 hex digits.
        ok: whether the payload matches its checksum.
        info: what the file records about the entry: ``{"pickled": "<type or reason>"}`` when the
            data codec could not write it, ``{"format": "1"}`` when it came from a version 1 file,
            ``{"version": "N"}`` when its state was saved at version N (not 1) of its class,
            ``{"kept": "<file>"}`` when it is a pickle kept from a file read without trust (refused
            even with ``trusted=True``, see ``callstate.read``'s ``trust_kept``).
        version: the version of the state's class that saved it (1 when the info records none).

    .. versionadded:: 0.1
    """

    key: str
    codec: str
    size: int
    checksum: str
    ok: bool
    info: dict[str, str] = attrs.field(factory=dict, eq=False)
    version: int = 1




# -- encoding -------------------------------------------------------------------------------------


class _PickleEncoder:
    """Encodes states the data codec cannot write, with a reused pickler (cheaper than one per state)."""

    def __init__(self) -> None:
        from ._codec import OUT_OF_BAND_MIN  # made only where the data codec is imported already

        self._out_of_band_min = OUT_OF_BAND_MIN
        self._stream = io.BytesIO()
        self._buffers: list[memoryview] = []
        self._pickler = pickle.Pickler(
            self._stream, protocol=5, buffer_callback=self._buffer_callback
        )
        torch = sys.modules.get("torch")
        if torch is not None:
            self._pickler.dispatch_table = {
                torch.Tensor: reduce_tensor,
                torch.nn.Parameter: reduce_tensor,
            }

    def _buffer_callback(self, buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()
        if raw.nbytes < self._out_of_band_min:
            return True  # in band: not worth a part of its own
        self._buffers.append(raw)
        return False

    def encode(self, key: str, state: Any, reason: str) -> tuple[str, tuple[bytes | memoryview, ...]]:
        """Return ``(codec, parts)`` for ``state``; plain pickle first, cloudpickle if it must."""
        stream, buffers = self._stream, self._buffers
        try:
            self._pickler.dump(state)
            return "pickle", (stream.getvalue(), *buffers)
        except Exception as exc:
            first_error = exc
        finally:
            self._pickler.clear_memo()
            stream.seek(0)
            stream.truncate()
            self._buffers = []
        import cloudpickle

        try:
            return "cloudpickle", (cloudpickle.dumps(state, protocol=5),)
        except Exception as exc:
            raise SerializationError(
                f"The state of {show(key)} cannot be saved: it holds {reason}, which callstate's data codec "
                f"does not write; pickle says {first_error!r} and cloudpickle says {exc!r}. Return plain "
                "data (numbers, strings, lists, dicts, arrays, tensors) from its state_dict(), or "
                "register the type with callstate.register_type().",
                key=key,
            ) from exc


Entry = tuple[str, str, tuple[Any, ...], int | None, dict[str, str]]


def _register_hint(reason: str) -> str:
    if " " in reason:  # not a type's name: nesting, a cycle, an int too large
        return "Return plain data from its state_dict()"
    short = reason.rpartition(".")[2]
    return (
        f"Make it safe with callstate.register_type({short}, to_data=..., from_data=...) "
        f"(after importing {reason.rpartition('.')[0] or short})"
    )


def _pickled(key: str, reason: str) -> None:
    warn_user(
        PickledStateWarning(
            f"State {show(key)} holds {reason}, which callstate's data codec does not write, so it was "
            f"saved with pickle: loading it will need trusted=True. {_register_hint(reason)}.",
            key=key,
            reason=reason,
        )
    )


def _encode_one(key: str, state: Any, coders: dict[str, Any], checksums: bool) -> Entry:
    # Imported here, not at the top: the codec's standard-library types (datetime, decimal,
    # fractions, pathlib, uuid) cost about a fifth of import callstate.
    from . import _codec

    encoder = coders.get("data")
    if encoder is None:
        encoder = coders["data"] = _codec.Encoder()
    try:
        parts = encoder.encode(state)
        codec, info = "data", {}
    except _codec.Unsupported as exc:
        pickler = coders.get("pickle")
        if pickler is None:
            pickler = coders["pickle"] = _PickleEncoder()
        codec, parts = pickler.encode(key, state, exc.what)
        info = {"pickled": exc.what}
        _pickled(key, exc.what)
    except _codec.ToDataError as exc:
        raise SerializationError(
            f"The state of {show(key)} cannot be saved: the to_data function registered for "
            f"{exc.type_name!r} raised {exc.__cause__!r}.",
            key=key,
        ) from exc.__cause__
    if not checksums:
        return key, codec, parts, None, info
    return key, codec, parts, crc32(parts[0]) if len(parts) == 1 else chained_crc(parts), info


def encode_entries(
    states: Mapping[Hashable, Any], *, checksums: bool = True, dest: str | None = None
) -> list[Entry]:
    """Return ``(key, codec, parts, crc, info)`` for each state; EncodedState values are kept verbatim.

    With ``checksums=False`` the crc of a newly encoded state is None, for ``write_container`` to
    compute (a background save computes it in its thread, not while the caller waits). ``dest`` is
    the real path of the file being written, if any: a pickled state kept from it is its own.
    """
    coders: dict[str, Any] = {}
    out: list[Entry] = []
    for key, state in states.items():
        if not isinstance(key, str):
            raise SerializationError(
                f"State key {show(key)} is a {type(key).__qualname__}, not a str: a callstate file holds "
                "str keys only. Register the callback with key=, or rename the key.",
                key=show(key),
            )
        state = recognised(state, None)  # a kept state in its plain form, from registry.state_dict()
        if isinstance(state, EncodedState):
            out.append(_kept_entry(key, state, dest))
            continue
        out.append(_encode_one(key, state, coders, checksums))
    return out


def _kept_entry(key: str, state: EncodedState, dest: str | None) -> Entry:
    """Return the entry that writes back ``state``, byte for byte, with its provenance (see ``KEPT``)."""
    try:
        parts = tuple(in_memory(p) for p in state.parts)  # read once: checked, then written
    except CorruptCheckpointError as exc:
        raise CorruptCheckpointError(
            f"State {show(key)} was kept undecoded from a file that changed since ({exc}). Nothing "
            f"was written. Drop it with registry.discard_unclaimed([{show(key)}]) to save the rest.",
            path=exc.path,
            key=key,
        ) from None
    if chained_crc(parts) != state.checksum:
        raise CorruptCheckpointError(
            f"State {show(key)} was read from a checkpoint and kept undecoded, but its bytes no "
            "longer match their checksum: the file it came from was damaged. Nothing was "
            f"written. Drop it with registry.discard_unclaimed([{show(key)}]) to save the rest.",
            key=key,
        )
    return key, state.codec, parts, state.checksum, written_info(state, dest)


def written_info(state: EncodedState, dest: str | None) -> dict[str, str]:
    """Return the info to write ``state`` back with: its own, marked ``KEPT`` if it is an untrusted pickle.

    A pickle keeps its standing only where it is written back into the file it was read from, or
    when that file was read with ``trusted=True``; otherwise the mark names where it came from. A
    mark, once there, stays. A state in plain form (``EncodedState.from_plain``) is always marked.
    """
    info = dict(state.info)
    if state.codec == "data" or KEPT in info:
        return info
    decoder = getattr(state, "_decoder", None)
    if isinstance(decoder, FileDecoder) and (
        decoder.trusted or (decoder.origin is not None and decoder.origin == dest)
    ):
        return info
    if len(info) >= _MAX_INFO_ITEMS:  # another writer's items: the mark matters more
        info = {k: v for k, v in info.items() if k in _OWN_INFO}
    source = decoder.name if isinstance(decoder, FileDecoder) else "<an EncodedState made in memory>"
    room = _MAX_INFO_TEXT - len(KEPT)
    info[KEPT] = source if len(source) <= room else "..." + source[-(room - 3) :]
    return info


def _header() -> bytes:
    head = struct.pack("<8sHH", MAGIC, VERSION, 0)
    return head + struct.pack("<I", zlib.crc32(head))


# Parts whose checksum is computed as they are written go this many bytes at a time: each piece is
# checksummed, then written while it is still in the cache (one pass over memory, not two).
_WRITE_CHUNK = 1 << 20


def _write_checked(write: Callable[[Any], object], parts: tuple[Any, ...]) -> int:
    """Write ``parts`` a piece at a time, checksumming each piece just before; return their CRC-32."""
    crc = 0
    for part in parts:
        view = memoryview(part)
        for start in range(0, view.nbytes, _WRITE_CHUNK):
            piece = view[start : start + _WRITE_CHUNK]
            crc = crc32(piece, crc)
            write(piece)
    return crc


def write_container(out: IO[bytes], entries: list[Entry], meta: Mapping[str, Any]) -> None:
    """Write a whole file to ``out``; parts are written from their own memory, never joined."""
    out.write(_header())
    offset = HEADER.size
    index = []
    write = out.write
    for key, codec, parts, crc, info in entries:
        if len(parts) == 1 and type(parts[0]) is bytes:  # the usual entry, straight from the encoder
            size = len(parts[0])
            index.append([key, codec, offset, [size], crc32(parts[0]) if crc is None else crc, info])
            write(parts[0])
            offset += size
            continue
        sizes = [memoryview(p).nbytes for p in parts]
        if crc is None:
            crc = _write_checked(write, parts)
        else:
            for part in parts:
                write(part)
        index.append([key, codec, offset, sizes, crc, info])
        offset += sum(sizes)
    import json  # here, not at the top: import callstate stays fast

    index_bytes = json.dumps({"entries": index, "meta": dict(meta)}, separators=(",", ":")).encode()
    out.write(index_bytes)
    body = struct.pack("<QQI", offset, len(index_bytes), crc32(index_bytes))
    out.write(body + struct.pack("<I", zlib.crc32(body)) + END_MAGIC)


# -- reading --------------------------------------------------------------------------------------


def _name(source: Source) -> str:
    return "<bytes>" if isinstance(source, bytes | bytearray | memoryview) else os.fspath(source)


def open_source(source: Source) -> tuple[memoryview, str]:
    """Return a read-only view of the whole file or buffer, and its name for messages."""
    view, name, _file = open_kept(source, keep=False)
    return view, name


def open_kept(source: Source, *, keep: bool = True) -> tuple[memoryview, str, OpenFile | None]:
    """Like ``open_source``, and, for a file, an ``OpenFile`` from which kept parts are read later."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = source if isinstance(source, bytes) else bytes(source)
        return memoryview(data), "<bytes>", None
    name = _name(source)
    try:
        with open_regular(source) as f:
            st = os.fstat(f.fileno())
            kept = OpenFile(os.dup(f.fileno()), name) if keep else None
            if st.st_size == 0:
                return memoryview(b""), name, kept
            # The map serves this read only: nothing kept points into it (see OpenFile).
            try:
                mapped: mmap.mmap | bytes = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError):  # a file system that cannot map files
                mapped = f.read()
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise _not_a_file(name, stat.S_IFDIR) from None
    except OSError as exc:
        raise CorruptCheckpointError(f"{name}: cannot be read ({exc}).", path=name) from exc
    return memoryview(mapped), name, kept


def open_regular(path: str | os.PathLike[str]) -> IO[bytes]:
    """Open a checkpoint file for reading; refuse at once what is not a regular file.

    Opened without blocking, so a FIFO is refused instead of waiting for a writer, and a device
    (``/dev/zero``, through a symlink too) instead of being read without end.

    Raises:
        CorruptCheckpointError: ``path`` is a directory, a FIFO, a device or a socket.
        OSError: it cannot be opened.
    """
    name = os.fspath(path)
    fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):  # checked before fdopen, which refuses a directory untyped
        os.close(fd)
        raise _not_a_file(name, mode)
    return os.fdopen(fd, "rb")


def _not_a_file(name: str, mode: int) -> CorruptCheckpointError:
    kinds = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
             stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}
    kind = kinds.get(stat.S_IFMT(mode), "not a regular file")
    return CorruptCheckpointError(
        f"{name}: is {kind}, not a regular file; callstate reads checkpoints only from regular files. "
        "Give the path of the checkpoint file itself (read a pipe into bytes and use callstate.loads).",
        path=name,
    )


def _oversized(name: str, exc: Oversized, key: str | None = None) -> CorruptCheckpointError:
    where = f"{escape(name)}, entry {show(key)}" if key is not None else escape(name)
    return CorruptCheckpointError(
        f"{where}: {exc}, far more than plain states need: it was crafted to exhaust memory, or "
        "holds millions of tiny containers. Nothing was changed. If you trust this file, load it "
        "with trusted=True, which lifts this bound.",
        path=name,
        key=key,
    )


def _corrupt(name: str, problem: str, key: str | None = None) -> CorruptCheckpointError:
    where = f"{escape(name)}, entry {show(key)}" if key is not None else escape(name)
    return CorruptCheckpointError(
        f"{where}: {problem}. The file is damaged or not a callstate file; restore it from a copy.",
        path=name,
        key=key,
    )


class RawEntry(NamedTuple):
    """An entry as the index describes it; a tuple, as files may hold many thousands of them."""

    key: str
    codec: str
    parts: tuple[memoryview, ...]
    crc: int
    info: dict[str, str]
    offset: int  # of the first part in the file


def _check_header(view: memoryview, name: str) -> int:
    """Check the header and return the file's format version."""
    if view.nbytes < HEADER.size or bytes(view[:8]) != MAGIC:
        raise _corrupt(name, "it does not start with the callstate magic bytes")
    _magic, version, _flags, crc = HEADER.unpack(view[: HEADER.size])
    if zlib.crc32(view[: HEADER.size - 4]) != crc:
        raise _corrupt(name, "the header checksum does not match")
    if version > VERSION:
        raise UnsupportedFormatError(
            f"{name}: written in callstate format version {version}, but this callstate reads versions "
            f"up to {VERSION}. Upgrade callstate to read it.",
            found=version,
            supported=VERSION,
            path=name,
        )
    if version < 1:
        raise _corrupt(name, f"format version {version} does not exist")
    return int(version)


# What parsing the JSON index may build, charged before it is parsed, from counts of its
# characters: a str of its bytes (and the bytes copied out of the file), a list or dict per bracket
# (a dict's table entry per colon), a pointer and an int per comma, a str per pair of quotes.
# Counting brackets and quotes inside strings too only overcharges.
_JSON_CONTAINER = 72
_JSON_ITEM = 96
_JSON_VALUE = 40
_JSON_STR = 56


def _index_bytes(index: bytes) -> tuple[int, int]:
    """Return an upper estimate of what ``json.loads(index)`` builds, and of what of it is gone
    once the entries are parsed (all but the strs, such as keys, and the dicts, such as infos)."""
    gone = 2 * len(index) + _JSON_CONTAINER * index.count(b"[") + _JSON_VALUE * index.count(b",")
    kept = _JSON_CONTAINER * index.count(b"{") + _JSON_ITEM * index.count(b":")
    return gone + kept + _JSON_STR * (index.count(b'"') // 2), gone


# Per entry: its RawEntry, the tuple of its parts, its key among those seen, its slot in the list;
# per part, a memoryview (sys.getsizeof: 184) and its slot in the tuple.
_ENTRY = 96 + 48 + 64 + 24
_PART = 200
# Per entry kept undecoded: its EncodedState, a slot in the mapping, the tuple of FileParts; per
# part, a FilePart (sys.getsizeof: 72) and its slot in the tuple.
_KEPT_ENTRY = 256
_KEPT_PART = 80


def _read_index(
    view: memoryview, name: str, allowance: Allowance
) -> tuple[dict[str, Any], int, int]:
    """Check the footer and the index; return the index, where it starts, and what of it to give
    back to ``allowance`` once its entries are parsed."""
    size = view.nbytes
    if size < HEADER.size + FOOTER.size:
        raise _corrupt(name, f"it is truncated ({size} bytes, no footer)")
    footer = view[size - FOOTER.size :]
    index_offset, index_len, index_crc, footer_crc, end = FOOTER.unpack(footer)
    if end != END_MAGIC or zlib.crc32(footer[:FOOTER_CRC_SPAN]) != footer_crc:
        raise _corrupt(name, "it is truncated or has trailing bytes (no valid footer at its end)")
    if index_offset < HEADER.size or index_offset + index_len + FOOTER.size != size:
        raise _corrupt(name, "its footer does not match its size (truncated or extended)")
    index_view = view[index_offset : index_offset + index_len]
    if crc32(index_view) != index_crc:
        raise _corrupt(name, "the index checksum does not match")
    import json

    raw = bytes(index_view)
    cost, gone = _index_bytes(raw)
    try:
        allowance.charge(cost)
        index = json.loads(raw)
    except Oversized as exc:
        raise _oversized(name, exc) from None
    except (ValueError, RecursionError) as exc:
        raise _corrupt(name, f"the index is not valid JSON ({exc})") from None
    if not isinstance(index, dict) or not isinstance(index.get("entries"), list):
        raise _corrupt(name, "the index has no entry list")
    if not isinstance(index.get("meta", {}), dict):
        raise _corrupt(name, "the index metadata is not a mapping")
    return index, int(index_offset), gone


def _entry_parts(
    view: memoryview,
    sizes: list[Any],
    offset: int,
    expected: int,
    limit: int,
    name: str,
    key: str,
    allowance: Allowance,
) -> tuple[memoryview, ...]:
    """Return the views of an entry's parts, checked to follow the previous entry and end before ``limit``."""
    if len(sizes) == 1:  # the usual entry: a stream and no out-of-band buffer
        size = sizes[0]
        if type(size) is not int or size < 0:
            raise _corrupt(name, "its index record is malformed", key)
        if offset != expected or offset + size > limit:
            raise _corrupt(name, "its payload lies outside the file or overlaps another", key)
        return (view[offset : offset + size],)
    if not 1 <= len(sizes) <= MAX_PARTS or not all(type(s) is int and s >= 0 for s in sizes):
        raise _corrupt(name, "its index record is malformed", key)
    if offset != expected or offset + sum(sizes) > limit:
        raise _corrupt(name, "its payload lies outside the file or overlaps another", key)
    try:
        allowance.charge(list_bytes(len(sizes)) + _PART * len(sizes))
    except Oversized as exc:
        raise _oversized(name, exc, key) from None
    parts = []
    for s in sizes:
        parts.append(view[offset : offset + s])
        offset += s
    return tuple(parts)


def parse(
    view: memoryview, name: str, allowance: Allowance | None = None
) -> tuple[list[RawEntry], dict[str, Any]]:
    """Check the header, footer and index of a file and return its entries, undecoded and unverified.

    What they take in memory is drawn from ``allowance``, the read's (by default, one of its own).
    """
    if allowance is None:
        allowance = Allowance(view.nbytes)
    version = _check_header(view, name)
    fields, codecs = (5, CODECS[1]) if version == 1 else (6, CODECS[2])
    index, index_offset, gone = _read_index(view, name, allowance)
    records = index["entries"]
    try:
        allowance.charge(len(records) * _ENTRY + set_bytes(len(records)))
    except Oversized as exc:
        raise _oversized(name, exc) from None
    entries: list[RawEntry] = []
    expected = HEADER.size
    seen: set[str] = set()
    # JSON yields exact types, so `type(x) is T` checks the same as isinstance, faster: files may
    # hold many thousands of entries.
    for item in records:
        if type(item) is not list or len(item) != fields:
            raise _corrupt(name, f"an index entry is malformed: {show(item, 80)}")
        key, codec, offset, sizes, crc = item[:5]
        if type(key) is not str or key in seen:
            raise _corrupt(name, f"an index key is not a str or repeats: {show(key, 80)}")
        seen.add(key)
        if codec not in codecs:
            raise _corrupt(name, f"unknown codec {show(codec, 40)}", key)
        if type(offset) is not int or type(crc) is not int or type(sizes) is not list:
            raise _corrupt(name, "its index record is malformed", key)
        info = V1_INFO if fields == 5 else _info(item[5], name, key)
        parts = _entry_parts(view, sizes, offset, expected, index_offset, name, key, allowance)
        expected = offset + sum(p.nbytes for p in parts)
        entries.append(RawEntry(key, codec, parts, crc, info, offset))
    if expected != index_offset:
        stray = index_offset - expected
        raise _corrupt(name, f"{stray} bytes between the entries and the index belong to no entry")
    allowance.memory += gone
    return entries, index.get("meta", {})


_NO_INFO: dict[str, str] = {}


def _info(info: Any, name: str, key: str) -> dict[str, str]:
    if type(info) is not dict:
        raise _corrupt(name, "its index record is malformed (info is not a mapping)", key)
    if not info:
        return _NO_INFO  # the usual entry; shared, never mutated
    if len(info) > _MAX_INFO_ITEMS or not all(
        type(k) is str and type(v) is str and len(k) + len(v) <= _MAX_INFO_TEXT for k, v in info.items()
    ):
        raise _corrupt(name, "its index record is malformed (info holds more than short strings)", key)
    return info


# Large buffers are copied out of a mapped file this many bytes at a time, and the pages read are
# dropped from the mapping after each step: the file's pages would otherwise count in the process's
# resident memory next to the copy, doubling the peak while a large state loads.
_COPY_CHUNK = 8 << 20


def _dropped_as_read(part: Any) -> mmap.mmap | None:
    """Return the map of which ``part`` is a large view, whose pages are dropped as they are read."""
    owner = part.obj if isinstance(part, memoryview) else None
    if isinstance(owner, mmap.mmap) and part.nbytes > _COPY_CHUNK and hasattr(mmap, "MADV_DONTNEED"):
        return owner
    return None


def _copy_out(part: Any, crc: int | None) -> tuple[Buffer, int | None]:
    """Return a private, writable copy of ``part``, and its CRC-32 continued from ``crc`` (if not None)."""
    if isinstance(part, FilePart):
        return part.read_checked(crc)
    owner = _dropped_as_read(part)
    size = part.nbytes

    def fill(piece: memoryview, start: int) -> None:
        end = start + piece.nbytes
        piece[:] = part[start:end]
        if owner is not None and (end % _COPY_CHUNK == 0 or end == size):
            # Safe for any other view of the map: the kernel reads a dropped page back from the file.
            owner.madvise(mmap.MADV_DONTNEED)

    return filled(size, fill, crc)


def _refuse_pickle(codec: str, info: Mapping[str, str], name: str, key: str) -> UnsafeCheckpointError:
    if codec == "cloudpickle":
        what = "written with cloudpickle (it holds code, such as a lambda or a local class)"
        fix = "Load with trusted=True only if you trust this file."
        needs = "cloudpickle"
    elif "pickled" in info:
        needs = info["pickled"]
        shown = escape(needs, 120)  # from the file's index
        what = f"saved with pickle, as it holds {shown}, which callstate's data codec does not write"
        fix = (
            f"{_register_hint(shown)} before saving it again, or load with trusted=True only if you "
            "trust this file."
        )
    else:
        needs = "pickle"
        what = "saved by callstate format version 1, whose states are pickles"
        fix = (
            "Load with trusted=True only if you trust this file; saving it again then writes format "
            "version 2, which needs no trust (callstate.save(callstate.read(path, trusted=True), path))."
        )
    return UnsafeCheckpointError(
        f"{escape(name)}, entry {show(key)}: {what}. A pickle can run any code when loaded, so callstate "
        f"decodes it only from trusted files; nothing was run. {fix}",
        global_name=needs,
        path=name,
        key=key,
    )


def _refusal(
    codec: str, info: Mapping[str, str], name: str, key: str, trusted: bool
) -> UnsafeCheckpointError:
    if KEPT in info:  # from another file read without trust: trusted=True alone is not enough
        return _refuse_kept(codec, info, name, key, trusted)
    return _refuse_pickle(codec, info, name, key)


def _refuse_kept(
    codec: str, info: Mapping[str, str], name: str, key: str, trusted: bool
) -> UnsafeCheckpointError:
    from .._support import escape, show

    source = escape(info[KEPT])
    needs = "cloudpickle" if codec == "cloudpickle" else info.get("pickled", "pickle")
    vouched = "trusted=True vouches for this file, not for that one, so " if trusted else ""
    return UnsafeCheckpointError(
        f"{escape(name)}, entry {show(key)}: a {codec} state kept undecoded from {source}, which was "
        f"not read with trusted=True, and saved into this file since. A pickle can run any code when "
        f"loaded; {vouched}nothing was run. If you trust {source} as much as your own code, accept it "
        f"deliberately: callstate.save(callstate.read(path, trusted=True, trust_kept=True), path) "
        f"writes this file again with it as your own. Otherwise drop it "
        f"(registry.discard_unclaimed([{show(key)}]) before the next save).",
        global_name=needs,
        path=name,
        key=key,
        kept_from=info[KEPT],
    )


def _checked_copies(
    parts: tuple[Any, ...], crc: int | None, name: str, key: str
) -> tuple[bytes, list[Buffer]]:
    """Return private copies of the stream and the buffers, checked against ``crc`` if given."""
    # Every part is copied before it is checked, so what is decoded is exactly what was checked
    # (even if the file under a memory map changes), and arrays and tensors own their memory. Each
    # large buffer is read once, into the memory its array will own, and checked as it is read.
    stream = bytes(parts[0])
    computed = None if crc is None else crc32(stream)
    buffers = []
    for part in parts[1:]:
        buffer, computed = _copy_out(part, computed)
        buffers.append(buffer)
    if crc is not None and computed != crc:
        raise _corrupt(name, "its payload does not match its checksum", key)
    return stream, buffers


def decode_parts(
    codec: str,
    parts: tuple[Any, ...],
    *,
    trusted: bool,
    name: str,
    key: str,
    crc: int | None = None,
    info: Mapping[str, str] = _NO_INFO,
    trust_kept: bool = False,
    allowance: Allowance | None = None,
) -> Any:
    """Decode a payload, first checking it against ``crc`` if given; raise only CallstateError.

    It draws from ``allowance``, the allowance of the read it came from (by default, one for this
    payload alone).
    """
    if codec != "data" and not (trusted and (trust_kept or KEPT not in info)):
        raise _refusal(codec, info, name, key, trusted)
    if allowance is None:
        allowance = Allowance(sum(_part_size(p) for p in parts), bound_memory=not trusted)
    with allowance.drawing(key):
        return _decode_drawing(codec, parts, name=name, key=key, crc=crc, allowance=allowance)


def _part_size(part: Any) -> int:
    return part.nbytes if isinstance(part, FilePart) else memoryview(part).nbytes


def _decode_drawing(
    codec: str, parts: tuple[Any, ...], *, name: str, key: str, crc: int | None, allowance: Allowance
) -> Any:
    from . import _codec  # see _encode_one

    if not parts:
        raise _corrupt(name, "it has no payload", key)
    # The private copies: the stream and the list of buffers (gone once decoded), and each buffer
    # with its structures (see _checked_copies), which arrays and tensors then own.
    copies = 40 + _part_size(parts[0]) + list_bytes(len(parts))
    try:
        allowance.charge(copies + sum(128 + _part_size(p) for p in parts[1:]))
    except Oversized as exc:
        raise _oversized(name, exc, key) from None
    stream, buffers = _checked_copies(parts, crc, name, key)
    try:
        if codec == "data":
            value = _codec.decode(stream, buffers, allowance=allowance)
        else:
            value = pickle.Unpickler(io.BytesIO(stream), buffers=buffers).load()
        allowance.memory += copies
        return value
    except _codec.UnknownType as exc:
        raise UnknownTypeError(
            f"{escape(name)}, entry {show(key)}: the state holds a {show(exc.name)}, a type registered with "
            "callstate.register_type() where it was saved, and not registered here. Import the module "
            f"that registers it, or call callstate.register_type(<the class>, to_data=..., from_data=..., "
            f"name={show(exc.name)}).",
            type_name=exc.name,
            path=name,
            key=key,
        ) from None
    except MissingDependencyError as exc:
        # The file is fine: this machine lacks the package its arrays or tensors need.
        message = f"{escape(name)}, entry {show(key)}: {exc}"
        raise MissingDependencyError(message, name=exc.name or "", extra=exc.extra) from None
    except CallstateError:
        raise
    except Oversized as exc:
        raise _oversized(name, exc, key) from None
    except _codec.DecodeError as exc:
        raise _corrupt(name, f"its payload is malformed ({escape(str(exc), 300)})", key) from None
    except Exception as exc:
        raise CorruptCheckpointError(
            f"{escape(name)}, entry {show(key)}: the payload matches its checksum but does not decode "
            f"({type(exc).__name__}: {escape(str(exc), 200)}). It was written by an incompatible library "
            "version or crafted; load it where it was written, or discard it.",
            path=name,
            key=key,
        ) from None


def _checked_crc(parts: tuple[Any, ...]) -> int:
    """Return the CRC-32 of ``parts``; pages of a mapped file are dropped as they are read (see _copy_out)."""
    crc = 0
    for part in parts:
        if isinstance(part, FilePart):
            crc = part.crc32(crc)
            continue
        owner = _dropped_as_read(part)
        if owner is None:
            crc = crc32(part, crc)
            continue
        for start in range(0, part.nbytes, _COPY_CHUNK):
            crc = crc32(part[start : start + _COPY_CHUNK], crc)
            owner.madvise(mmap.MADV_DONTNEED)
    return crc


def verify(entry: RawEntry, name: str) -> None:
    """Raise CorruptCheckpointError if the entry's bytes do not match its checksum."""
    if _checked_crc(entry.parts) != entry.crc:
        raise _corrupt(name, "its payload does not match its checksum", entry.key)


class FileDecoder:
    """Decodes the EncodedStates read from one file (or given in plain form), as far as it is trusted.

    Attributes:
        name: the file, for messages (``"<bytes>"``, or where a plain form came from).
        trusted: whether it was read with ``trusted=True``.
        trust_kept: whether pickles kept from other files (marked ``KEPT``) are decoded too.
        origin: the file's real path when it was read, or None (bytes, plain forms): a kept pickle
            written back there keeps its standing.
        allowance: the allowance of the read every state decoded here draws from; None: each
            state from one for its own payload alone.
    """

    __slots__ = ("allowance", "name", "origin", "trust_kept", "trusted")

    def __init__(
        self,
        name: str,
        trusted: bool,
        *,
        trust_kept: bool = False,
        origin: str | None = None,
        allowance: Allowance | None = None,
    ) -> None:
        self.name, self.trusted, self.trust_kept, self.origin = name, trusted, trust_kept, origin
        self.allowance = allowance

    def __call__(self, state: EncodedState) -> Any:
        return decode_parts(
            state.codec, state.parts, trusted=self.trusted, name=self.name, key=state.key,
            crc=state.checksum, info=state.info, trust_kept=self.trust_kept, allowance=self.allowance,
        )


def make_decoder(
    name: str,
    trusted: bool,
    *,
    trust_kept: bool = False,
    origin: str | None = None,
    allowance: Allowance | None = None,
) -> Callable[[EncodedState], Any]:
    """Return the decoder that EncodedStates from the file ``name`` use (see ``FileDecoder``)."""
    return FileDecoder(name, trusted, trust_kept=trust_kept, origin=origin, allowance=allowance)


def encoded_entries(
    entries: Iterable[RawEntry],
    name: str,
    trusted: bool,
    file: OpenFile | None = None,
    *,
    trust_kept: bool = False,
    allowance: Allowance | None = None,
) -> dict[str, EncodedState]:
    """Wrap raw entries as EncodedStates that decode (and check themselves) on demand.

    With ``file``, their parts are ``FilePart``s read from it when needed, not views of the map.
    With ``allowance`` (the read's), what they take and what decoding them builds is drawn from it.
    """
    origin = os.path.realpath(file.name) if file is not None else None
    decoder = make_decoder(name, trusted, trust_kept=trust_kept, origin=origin, allowance=allowance)
    out: dict[str, EncodedState] = {}
    for e in entries:
        if allowance is not None:
            try:
                allowance.charge(_KEPT_ENTRY + _KEPT_PART * len(e.parts))
            except Oversized as exc:
                raise _oversized(name, exc, e.key) from None
        parts: tuple[Any, ...] = e.parts
        if file is not None:
            parts, offset = (), e.offset
            for view in e.parts:
                parts += (FilePart(file, offset, view.nbytes),)
                offset += view.nbytes
        out[e.key] = EncodedState(
            codec=e.codec, parts=parts, checksum=e.crc, decoder=decoder, key=e.key, info=e.info
        )
    return out
