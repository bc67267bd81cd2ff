"""The callstate file format, version 1: encoding states, and reading them back checked.

Layout (all integers little-endian)::

    header   16 bytes  MAGIC (8) | version u16 | flags u16 | crc32 of the 12 bytes before it
    entries            for each entry, contiguous: its pickle stream, then its out-of-band buffers
    index              UTF-8 JSON: {"entries": [[key, codec, offset, [part sizes], crc32], ...],
                                    "meta": {...}}
    footer   32 bytes  index offset u64 | index length u64 | index crc32 u32 | crc32 of those 20
                       bytes u32 | END_MAGIC (8)

Every byte is covered by a checksum, and entries must tile the space between the header and the
index exactly, so truncation, a flipped bit or trailing garbage is always detected. The first 16
bytes keep this shape in every later version, so a newer file is recognised as such.
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

from ._encoded import EncodedState, chained_crc
from ._errors import CallstateError, CorruptCheckpointError, UnsafeCheckpointError, UnsupportedFormatError
from ._unpickler import SafeUnpickler

MAGIC = b"\x89CALLST\n"
END_MAGIC = b"\nCLSTEND"
VERSION = 1
HEADER = struct.Struct("<8sHHI")
FOOTER = struct.Struct("<QQII8s")
FOOTER_CRC_SPAN = 20
CODECS = ("pickle", "cloudpickle")
# Buffers at least this large are written out of band: straight from the array's memory.
OUT_OF_BAND_MIN = 64 * 1024
MAX_PARTS = 1 << 16

Source = bytes | bytearray | memoryview | str | os.PathLike[str]


class SerializationError(CallstateError, TypeError):
    """A state could be serialized neither by pickle nor by cloudpickle."""

    def __init__(self, message: str, *, key: str) -> None:
        super().__init__(message)
        self.key = key


SerializationError.__module__ = "callstate"


@attrs.frozen
class EntryInfo:
    """One entry of a callstate file, as ``callstate.inspect`` describes it without decoding.

    Attributes:
        key: the state key.
        codec: ``"pickle"`` or ``"cloudpickle"``.
        size: payload size in bytes (pickle stream and out-of-band buffers).
        checksum: the recorded CRC-32, as 8 hex digits.
        ok: whether the payload matches its checksum.

    .. versionadded:: 0.1
    """

    key: str
    codec: str
    size: int
    checksum: str
    ok: bool


EntryInfo.__module__ = "callstate"


# -- encoding -------------------------------------------------------------------------------------


class _Encoder:
    """Encodes states one by one with a reused pickler (much cheaper than one per state)."""

    def __init__(self) -> None:
        self._stream = io.BytesIO()
        self._buffers: list[memoryview] = []
        self._pickler = pickle.Pickler(
            self._stream, protocol=5, buffer_callback=self._buffer_callback
        )
        torch = sys.modules.get("torch")
        if torch is not None:
            from ._tensors import reduce_tensor

            self._pickler.dispatch_table = {
                torch.Tensor: reduce_tensor,
                torch.nn.Parameter: reduce_tensor,
            }

    def _buffer_callback(self, buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()
        if raw.nbytes < OUT_OF_BAND_MIN:
            return True  # in band: not worth a part of its own
        self._buffers.append(raw)
        return False

    def encode(self, key: str, state: Any) -> tuple[str, tuple[bytes | memoryview, ...]]:
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
                f"The state of {key!r} cannot be saved: pickle says {first_error!r} and cloudpickle "
                f"says {exc!r}. Return plain data (numbers, strings, lists, dicts, arrays, tensors) "
                "from its state_dict().",
                key=key,
            ) from exc


def encode_entries(states: Mapping[Hashable, Any]) -> list[tuple[str, str, tuple[Any, ...], int]]:
    """Return ``(key, codec, parts, crc)`` for each state; EncodedState values are kept verbatim."""
    encoder: _Encoder | None = None
    out = []
    for key, state in states.items():
        if not isinstance(key, str):
            raise SerializationError(
                f"State key {key!r} is a {type(key).__qualname__}, not a str: a callstate file holds "
                "str keys only. Register the callback with key=, or rename the key.",
                key=repr(key),
            )
        if isinstance(state, EncodedState):
            if not state.is_intact():
                raise CorruptCheckpointError(
                    f"State {key!r} was read from a checkpoint and kept undecoded, but its bytes no "
                    "longer match their checksum: the file it came from was damaged. Nothing was "
                    f"written. Drop it with registry.discard_unclaimed([{key!r}]) to save the rest.",
                    key=key,
                )
            out.append((key, state.codec, state.parts, state.checksum))
            continue
        if encoder is None:
            encoder = _Encoder()
        codec, parts = encoder.encode(key, state)
        out.append((key, codec, parts, zlib.crc32(parts[0]) if len(parts) == 1 else chained_crc(parts)))
    return out


def _header() -> bytes:
    head = struct.pack("<8sHH", MAGIC, VERSION, 0)
    return head + struct.pack("<I", zlib.crc32(head))


def write_container(
    out: IO[bytes], entries: list[tuple[str, str, tuple[Any, ...], int]], meta: Mapping[str, Any]
) -> None:
    """Write a whole file to ``out``; parts are written from their own memory, never joined."""
    out.write(_header())
    offset = HEADER.size
    index = []
    write = out.write
    for key, codec, parts, crc in entries:
        if len(parts) == 1 and type(parts[0]) is bytes:  # the usual entry, straight from the encoder
            size = len(parts[0])
            index.append([key, codec, offset, [size], crc])
            write(parts[0])
            offset += size
            continue
        sizes = [memoryview(p).nbytes for p in parts]
        index.append([key, codec, offset, sizes, crc])
        for part in parts:
            write(part)
        offset += sum(sizes)
    import json  # here, not at the top: import callstate stays fast

    index_bytes = json.dumps({"entries": index, "meta": dict(meta)}, separators=(",", ":")).encode()
    out.write(index_bytes)
    body = struct.pack("<QQI", offset, len(index_bytes), zlib.crc32(index_bytes))
    out.write(body + struct.pack("<I", zlib.crc32(body)) + END_MAGIC)


# -- reading --------------------------------------------------------------------------------------


def _name(source: Source) -> str:
    return "<bytes>" if isinstance(source, bytes | bytearray | memoryview) else os.fspath(source)


def open_source(source: Source) -> tuple[memoryview, str]:
    """Return a read-only view of the whole file or buffer, and its name for messages."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = source if isinstance(source, bytes) else bytes(source)
        return memoryview(data), "<bytes>"
    name = _name(source)
    try:
        with open(source, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                return memoryview(f.read()), name  # a pipe or device: its size is unknown up front
            if st.st_size == 0:
                return memoryview(b""), name
            # A map stays valid after the path is atomically replaced, so undecoded states can be
            # written back from it later without holding the whole file in memory.
            try:
                mapped: mmap.mmap | bytes = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError):  # a file system that cannot map files
                mapped = f.read()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise CorruptCheckpointError(f"{name}: cannot be read ({exc}).", path=name) from exc
    return memoryview(mapped), name


def _corrupt(name: str, problem: str, key: str | None = None) -> CorruptCheckpointError:
    where = f"{name}, entry {key!r}" if key is not None else name
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


def parse(view: memoryview, name: str) -> tuple[list[RawEntry], dict[str, Any]]:
    """Check the header, footer and index of a file and return its entries, undecoded and unverified."""
    size = view.nbytes
    if size < HEADER.size or bytes(view[:8]) != MAGIC:
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
    if size < HEADER.size + FOOTER.size:
        raise _corrupt(name, f"it is truncated ({size} bytes, no footer)")
    footer = view[size - FOOTER.size :]
    index_offset, index_len, index_crc, footer_crc, end = FOOTER.unpack(footer)
    if end != END_MAGIC or zlib.crc32(footer[:FOOTER_CRC_SPAN]) != footer_crc:
        raise _corrupt(name, "it is truncated or has trailing bytes (no valid footer at its end)")
    if index_offset < HEADER.size or index_offset + index_len + FOOTER.size != size:
        raise _corrupt(name, "its footer does not match its size (truncated or extended)")
    index_view = view[index_offset : index_offset + index_len]
    if zlib.crc32(index_view) != index_crc:
        raise _corrupt(name, "the index checksum does not match")
    import json

    try:
        index = json.loads(bytes(index_view))
    except (ValueError, RecursionError) as exc:
        raise _corrupt(name, f"the index is not valid JSON ({exc})") from None
    if not isinstance(index, dict) or not isinstance(index.get("entries"), list):
        raise _corrupt(name, "the index has no entry list")
    meta = index.get("meta", {})
    if not isinstance(meta, dict):
        raise _corrupt(name, "the index metadata is not a mapping")
    entries: list[RawEntry] = []
    expected = HEADER.size
    seen: set[str] = set()
    # JSON yields exact types, so `type(x) is T` checks the same as isinstance, faster: files may
    # hold many thousands of entries.
    append = entries.append
    for item in index["entries"]:
        if type(item) is not list or len(item) != 5:
            raise _corrupt(name, f"an index entry is malformed: {item!r:.80}")
        key, codec, offset, sizes, crc = item
        if type(key) is not str or key in seen:
            raise _corrupt(name, f"an index key is not a str or repeats: {key!r:.80}")
        seen.add(key)
        if codec not in CODECS:
            raise _corrupt(name, f"unknown codec {codec!r:.40}", key)
        if type(offset) is not int or type(crc) is not int or type(sizes) is not list:
            raise _corrupt(name, "its index record is malformed", key)
        if len(sizes) == 1:  # the usual entry: a pickle stream and no out-of-band buffer
            size = sizes[0]
            if type(size) is not int or size < 0:
                raise _corrupt(name, "its index record is malformed", key)
            end = offset + size
            if offset != expected or end > index_offset:
                raise _corrupt(name, "its payload lies outside the file or overlaps another", key)
            append(RawEntry(key, codec, (view[offset:end],), crc))
            expected = end
            continue
        if not 1 <= len(sizes) <= MAX_PARTS or not all(type(s) is int and s >= 0 for s in sizes):
            raise _corrupt(name, "its index record is malformed", key)
        if offset != expected or offset + sum(sizes) > index_offset:
            raise _corrupt(name, "its payload lies outside the file or overlaps another", key)
        parts = []
        for s in sizes:
            parts.append(view[offset : offset + s])
            offset += s
        expected = offset
        append(RawEntry(key, codec, tuple(parts), crc))
    if expected != index_offset:
        stray = index_offset - expected
        raise _corrupt(name, f"{stray} bytes between the entries and the index belong to no entry")
    return entries, meta


# Large buffers are copied out of a mapped file this many bytes at a time, and the pages read are
# dropped from the mapping after each step: the file's pages would otherwise count in the process's
# resident memory next to the copy, doubling the peak while a large state loads.
_COPY_CHUNK = 8 << 20


def _copy_out(part: Any) -> bytearray:
    """Return a private, writable copy of ``part``."""
    owner = part.obj if isinstance(part, memoryview) else None
    if not isinstance(owner, mmap.mmap) or part.nbytes <= _COPY_CHUNK or not hasattr(mmap, "MADV_DONTNEED"):
        return bytearray(part)
    size = part.nbytes
    out = bytearray(size)
    for start in range(0, size, _COPY_CHUNK):
        out[start : start + _COPY_CHUNK] = part[start : start + _COPY_CHUNK]
        # Safe for any other view of the map: the kernel reads a dropped page back from the file.
        owner.madvise(mmap.MADV_DONTNEED)
    return out


def decode_parts(
    codec: str, parts: tuple[Any, ...], *, trusted: bool, name: str, key: str, crc: int | None = None
) -> Any:
    """Decode a payload, first checking it against ``crc`` if given; raise only CallstateError."""
    if codec == "cloudpickle" and not trusted:
        raise UnsafeCheckpointError(
            f"{name}, entry {key!r}: written with cloudpickle (it holds code, such as a lambda or a "
            "local class), which can run anything when loaded; nothing was run. Load with trusted=True "
            "only if you trust this file.",
            global_name="cloudpickle",
            path=name,
            key=key,
        )
    # Buffers are copied so arrays and tensors come back writable and own their memory; the
    # checksum is taken over the copies, so what is decoded is exactly what was checked.
    if len(parts) == 1:  # the usual entry: nothing out of band
        buffers: list[bytearray] = []
        if crc is not None and zlib.crc32(parts[0]) != crc:
            raise _corrupt(name, "its payload does not match its checksum", key)
    else:
        buffers = [_copy_out(p) for p in parts[1:]]
        if crc is not None and chained_crc((parts[0], *buffers)) != crc:
            raise _corrupt(name, "its payload does not match its checksum", key)
    try:
        if trusted:
            return pickle.Unpickler(io.BytesIO(parts[0]), buffers=buffers).load()
        return SafeUnpickler(io.BytesIO(parts[0]), buffers=buffers).load()
    except UnsafeCheckpointError as exc:
        glob = exc.global_name
        module = glob.rpartition(".")[0]
        hint = (
            f"callstate.allow({glob}) (after import {module})" if module else f"callstate.allow({glob})"
        )
        if glob.startswith("persistent_load"):
            hint = "nothing: persistent ids are never followed"
        raise UnsafeCheckpointError(
            f"{name}, entry {key!r}: the payload needs {glob!r}, which is not on the allowlist; nothing "
            f"was run. If you trust this file, admit it with {hint}, or load with trusted=True.",
            global_name=glob,
            path=name,
            key=key,
        ) from None
    except CallstateError:
        raise
    except Exception as exc:
        raise CorruptCheckpointError(
            f"{name}, entry {key!r}: the payload matches its checksum but does not decode "
            f"({type(exc).__name__}: {exc!s:.200}). It was written by an incompatible library version "
            "or crafted; load it where it was written, or discard it.",
            path=name,
            key=key,
        ) from None


def verify(entry: RawEntry, name: str) -> None:
    """Raise CorruptCheckpointError if the entry's bytes do not match its checksum."""
    if chained_crc(entry.parts) != entry.crc:
        raise _corrupt(name, "its payload does not match its checksum", entry.key)


def make_decoder(name: str, trusted: bool) -> Callable[[EncodedState], Any]:
    """Return the decoder that EncodedStates from the file ``name`` use."""

    def decoder(state: EncodedState) -> Any:
        return decode_parts(
            state.codec, state.parts, trusted=trusted, name=name, key=state.key, crc=state.checksum
        )

    return decoder


def encoded_entries(
    entries: Iterable[RawEntry], name: str, trusted: bool
) -> dict[str, EncodedState]:
    """Wrap raw entries as EncodedStates that decode (and check themselves) on demand."""
    decoder = make_decoder(name, trusted)
    out: dict[str, EncodedState] = {}
    for e in entries:
        out[e.key] = EncodedState(codec=e.codec, parts=e.parts, checksum=e.crc, decoder=decoder, key=e.key)
    return out
