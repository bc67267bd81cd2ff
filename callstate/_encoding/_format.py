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

import mmap
import os
import stat
import struct
import zlib
from collections.abc import Callable, Mapping
from typing import IO, Any, NamedTuple

import attrs

from .._support import escape, show
from ..errors import CorruptCheckpointError, UnsupportedFormatError
from ._allowance import Allowance, Oversized, list_bytes, set_bytes
from ._parts import FilePart, OpenFile, RangedFile, crc32

MAGIC = b"\x89CALLST\n"
END_MAGIC = b"\nCLSTEND"
VERSION = 2
HEADER = struct.Struct("<8sHHI")
FOOTER = struct.Struct("<QQII8s")
FOOTER_CRC_SPAN = 20
CODECS = {1: ("pickle", "cloudpickle"), 2: ("data", "pickle", "cloudpickle")}
# An entry is its payload stream and one part per out-of-band buffer: a file asking for more is
# refused before its index is turned into views (each costs memory, see parse's allowance).
MAX_PARTS = 1 << 16
MAX_INFO_ITEMS = 16
MAX_INFO_TEXT = 1000
# What an entry read from a version 1 file carries in its info, so a later save keeps saying so.
V1_INFO = {"format": "1"}
KEPT = "kept"
"""The info item that marks a pickled entry kept from a file read without trust: ``{"kept": source}``.

Trust does not launder: ``trusted=True`` vouches for the file being read, not for the files its
kept states came from, so such an entry is decoded only with ``trust_kept=True`` as well.
"""

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


Entry = tuple[str, str, tuple[Any, ...], int | None, dict[str, str]]


def registrable(reason: str) -> bool:
    """Return whether ``reason`` (why a state was pickled) names a class ``register_type`` can make data."""
    # A phrase (nesting, a cycle, an int too large) names no class; a name without a module is a
    # builtin (object, function, generator...), which no to_data/from_data pair makes data of yours.
    return " " not in reason and "." in reason


def register_hint(reason: str) -> str:
    """Say how to make a state that was pickled because it holds ``reason`` plain data instead."""
    if " " in reason:  # not a type's name: nesting, a cycle, an int too large
        return "Return plain data from its state_dict()"
    if not registrable(reason):
        why = (
            "a bare object() holds no data: None or a str can stand for it"
            if reason == "object"
            else f"{reason} is a Python builtin, not a class to register"
        )
        return (
            f"Return plain data in its place from its state_dict() ({why}), or leave it out of the "
            "state by naming the attributes to save: @callstate.stateful(state=[...])"
        )
    module, _, short = reason.rpartition(".")
    return (
        f"Make it safe with callstate.register_type({short}, to_data=..., from_data=...) "
        f"(after importing {module})"
    )


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
    fix = (
        "Give the path of the checkpoint file in it."
        if kind == "a directory"
        else "Give the path of the checkpoint file itself (read a pipe into bytes and use callstate.loads)."
    )
    return CorruptCheckpointError(
        f"{name}: is {kind}, not a regular file; callstate reads checkpoints only from regular files. {fix}",
        path=name,
    )


class Window:
    """A file of which a read holds only the head and the tail (index and footer) in memory.

    ``parse`` reads it as it reads a whole file's view; a span outside those two is a ``FilePart``
    of ``file``, read when needed (a remote object, fetched by ranged reads).
    """

    __slots__ = ("file", "head", "nbytes", "tail", "tail_start")

    def __init__(self, nbytes: int, head: bytes, tail: bytes, file: RangedFile) -> None:
        self.nbytes, self.file = nbytes, file
        self.head, self.tail = memoryview(head), memoryview(tail)
        self.tail_start = nbytes - len(tail)

    def __getitem__(self, span: slice) -> memoryview | FilePart:
        start, stop, _step = span.indices(self.nbytes)
        stop = max(start, stop)
        if stop <= self.head.nbytes:
            return self.head[start:stop]
        if start >= self.tail_start:
            return self.tail[start - self.tail_start : stop - self.tail_start]
        return FilePart(self.file, start, stop - start)


View = memoryview | Window


def _held(view: View, start: int, stop: int, name: str) -> memoryview:
    """Return ``view[start:stop]``, which a ``Window`` must hold in memory (its head or its tail)."""
    got = view[start:stop]
    if not isinstance(got, memoryview):
        raise corrupt(name, "its footer does not match its size (truncated or extended)")
    return got


def oversized(name: str, exc: Oversized, key: str | None = None) -> CorruptCheckpointError:
    where = f"{escape(name)}, entry {show(key)}" if key is not None else escape(name)
    return CorruptCheckpointError(
        f"{where}: {exc}, far more than plain states need: it was crafted to exhaust memory, or "
        "holds millions of tiny containers. Nothing was changed. If you trust this file, load it "
        "with trusted=True, which lifts this bound.",
        path=name,
        key=key,
    )


def corrupt(name: str, problem: str, key: str | None = None) -> CorruptCheckpointError:
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
    parts: tuple[memoryview | FilePart, ...]
    crc: int
    info: dict[str, str]
    offset: int  # of the first part in the file


def _check_header(view: View, name: str) -> int:
    """Check the header and return the file's format version."""
    if view.nbytes < HEADER.size or bytes(_held(view, 0, 8, name)) != MAGIC:
        if view.nbytes >= 4 and bytes(_held(view, 0, 4, name)) == b"PK\x03\x04":
            raise CorruptCheckpointError(
                f"{escape(name)}: is a torch checkpoint (torch.save's zip: Lightning's .ckpt, "
                "callstate.loop's .pt), not a callstate file: read it with callstate.read or "
                "callstate.load, which take both, or callstate.lightning.restore.",
                path=name,
            )
        raise corrupt(name, "it does not start with the callstate magic bytes")
    head = _held(view, 0, HEADER.size, name)
    _magic, version, _flags, crc = HEADER.unpack(head)
    if zlib.crc32(head[: HEADER.size - 4]) != crc:
        raise corrupt(name, "the header checksum does not match")
    if version > VERSION:
        raise UnsupportedFormatError(
            f"{name}: written in callstate format version {version}, but this callstate reads versions "
            f"up to {VERSION}. Upgrade callstate to read it.",
            found=version,
            supported=VERSION,
            path=name,
        )
    if version < 1:
        raise corrupt(name, f"format version {version} does not exist")
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


def _read_index(
    view: View, name: str, allowance: Allowance
) -> tuple[dict[str, Any], int, int]:
    """Check the footer and the index; return the index, where it starts, and what of it to give
    back to ``allowance`` once its entries are parsed."""
    size = view.nbytes
    if size < HEADER.size + FOOTER.size:
        raise corrupt(name, f"it is truncated ({size} bytes, no footer)")
    footer = _held(view, size - FOOTER.size, size, name)
    index_offset, index_len, index_crc, footer_crc, end = FOOTER.unpack(footer)
    if end != END_MAGIC or zlib.crc32(footer[:FOOTER_CRC_SPAN]) != footer_crc:
        raise corrupt(name, "it is truncated or has trailing bytes (no valid footer at its end)")
    if index_offset < HEADER.size or index_offset + index_len + FOOTER.size != size:
        raise corrupt(name, "its footer does not match its size (truncated or extended)")
    index_view = _held(view, index_offset, index_offset + index_len, name)
    if crc32(index_view) != index_crc:
        raise corrupt(name, "the index checksum does not match")
    import json

    raw = bytes(index_view)
    cost, gone = _index_bytes(raw)
    try:
        allowance.charge(cost)
        index = json.loads(raw)
    except Oversized as exc:
        raise oversized(name, exc) from None
    except (ValueError, RecursionError) as exc:
        raise corrupt(name, f"the index is not valid JSON ({exc})") from None
    if not isinstance(index, dict) or not isinstance(index.get("entries"), list):
        raise corrupt(name, "the index has no entry list")
    if not isinstance(index.get("meta", {}), dict):
        raise corrupt(name, "the index metadata is not a mapping")
    return index, int(index_offset), gone


def _entry_parts(
    view: View,
    sizes: list[Any],
    offset: int,
    expected: int,
    limit: int,
    name: str,
    key: str,
    allowance: Allowance,
) -> tuple[memoryview | FilePart, ...]:
    """Return the views of an entry's parts, checked to follow the previous entry and end before ``limit``."""
    if len(sizes) == 1:  # the usual entry: a stream and no out-of-band buffer
        size = sizes[0]
        if type(size) is not int or size < 0:
            raise corrupt(name, "its index record is malformed", key)
        if offset != expected or offset + size > limit:
            raise corrupt(name, "its payload lies outside the file or overlaps another", key)
        return (view[offset : offset + size],)
    if not 1 <= len(sizes) <= MAX_PARTS or not all(type(s) is int and s >= 0 for s in sizes):
        raise corrupt(name, "its index record is malformed", key)
    if offset != expected or offset + sum(sizes) > limit:
        raise corrupt(name, "its payload lies outside the file or overlaps another", key)
    try:
        allowance.charge(list_bytes(len(sizes)) + _PART * len(sizes))
    except Oversized as exc:
        raise oversized(name, exc, key) from None
    parts = []
    for s in sizes:
        parts.append(view[offset : offset + s])
        offset += s
    return tuple(parts)


def parse(
    view: View, name: str, allowance: Allowance | None = None
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
        raise oversized(name, exc) from None
    entries: list[RawEntry] = []
    expected = HEADER.size
    seen: set[str] = set()
    # JSON yields exact types, so `type(x) is T` checks the same as isinstance, faster: files may
    # hold many thousands of entries.
    for item in records:
        if type(item) is not list or len(item) != fields:
            raise corrupt(name, f"an index entry is malformed: {show(item, 80)}")
        key, codec, offset, sizes, crc = item[:5]
        if type(key) is not str or key in seen:
            raise corrupt(name, f"an index key is not a str or repeats: {show(key, 80)}")
        seen.add(key)
        if codec not in codecs:
            raise corrupt(name, f"unknown codec {show(codec, 40)}", key)
        if type(offset) is not int or type(crc) is not int or type(sizes) is not list:
            raise corrupt(name, "its index record is malformed", key)
        info = V1_INFO if fields == 5 else _info(item[5], name, key)
        parts = _entry_parts(view, sizes, offset, expected, index_offset, name, key, allowance)
        expected = offset + (sizes[0] if len(sizes) == 1 else sum(sizes))  # checked by _entry_parts
        entries.append(RawEntry(key, codec, parts, crc, info, offset))
    if expected != index_offset:
        stray = index_offset - expected
        raise corrupt(name, f"{stray} bytes between the entries and the index belong to no entry")
    allowance.memory += gone
    return entries, index.get("meta", {})


NO_INFO: dict[str, str] = {}


def _info(info: Any, name: str, key: str) -> dict[str, str]:
    if type(info) is not dict:
        raise corrupt(name, "its index record is malformed (info is not a mapping)", key)
    if not info:
        return NO_INFO  # the usual entry; shared, never mutated
    if len(info) > MAX_INFO_ITEMS or not all(
        type(k) is str and type(v) is str and len(k) + len(v) <= MAX_INFO_TEXT for k, v in info.items()
    ):
        raise corrupt(name, "its index record is malformed (info holds more than short strings)", key)
    return info


