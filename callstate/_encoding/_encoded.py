"""A saved state kept in its encoded form until a callback claims it."""

from __future__ import annotations

import contextlib
import functools
import itertools
import mmap
import os
import weakref
import zlib
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import attrs

from .._support import escape, show


@functools.cache
def _crc32_function() -> Callable[[Any, int], int]:
    """Return ISA-L's CRC-32 if python-isal is installed (``callstate[fast]``), else zlib's.

    Both give the same values (the CRC-32 that every callstate file records), so files of every
    version verify either way. benchmarks/checksums.py measured on 256 MB (2 cores, AMD EPYC):
    zlib 1.52 GB/s, 3.1x a memory copy of the same bytes; ISA-L 9.2 GB/s, 0.9x the copy. Imported
    on first use, not with callstate (it costs 2.3 ms).
    """
    try:
        from isal.isal_zlib import crc32
    except ImportError:
        return zlib.crc32
    fast: Callable[[Any, int], int] = crc32
    return fast


def crc32(data: Any, value: int = 0) -> int:
    """Return ``zlib.crc32(data, value)``, computed by the fastest implementation installed."""
    return _crc32_function()(data, value)


Buffer = bytearray | mmap.mmap
"""Memory a part is read into, which the array or tensor rebuilt from it then owns."""

# Buffers at least this large get memory mapped for them alone: the kernel hands its pages out
# zeroed as they are first written, so no pass fills them first (bytearray(n) writes n zeros before
# the read writes them again), and asks for huge pages (a fault every 2 MB, not every 4 KB).
_MAPPED_MIN = 1 << 20
# A buffer is read and checksummed this many bytes at a time, so each piece is checked while it is
# still in the cache the read left it in, instead of in a second pass over memory.
_READ_CHUNK = 1 << 20


def new_buffer(nbytes: int) -> Buffer:
    """Return ``nbytes`` of writable memory, not filled by a pass of its own."""
    if nbytes < _MAPPED_MIN:
        return bytearray(nbytes)
    if not hasattr(mmap, "MAP_PRIVATE"):  # Windows
        return mmap.mmap(-1, nbytes)
    # Private: an anonymous map is shared by default, which is shared memory, which gets no huge pages.
    memory = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        with contextlib.suppress(OSError):  # a kernel without transparent huge pages
            memory.madvise(mmap.MADV_HUGEPAGE)
    return memory


def filled(
    nbytes: int, fill: Callable[[memoryview, int], object], crc: int | None
) -> tuple[Buffer, int | None]:
    """Return new memory filled by ``fill(piece, offset)`` a piece at a time, and the CRC-32 of it.

    The CRC-32 continues from ``crc`` over the memory as filled; None if ``crc`` is None.
    """
    out = new_buffer(nbytes)
    view = memoryview(out)
    for start in range(0, nbytes, _READ_CHUNK):
        piece = view[start : start + _READ_CHUNK]
        fill(piece, start)
        if crc is not None:
            crc = crc32(piece, crc)
        piece.release()
    view.release()
    return out, crc


class OpenFile:
    """A file opened for positioned reads, shared by the parts read from it; closed with the last one.

    Parts kept from a file are read from it only when needed, never through a memory map: another
    process may rewrite or truncate the file, which a read reports (a short read, or a checksum that
    no longer matches) where touching a map of it kills the process (SIGBUS). An atomic replacement
    (write then rename, as callstate saves) leaves the open file as it was.
    """

    def __init__(self, fd: int, name: str) -> None:
        self.fd, self.name = fd, name
        weakref.finalize(self, os.close, fd)

    def read_into(self, out: memoryview, offset: int) -> None:
        """Fill ``out`` with the bytes at ``offset``; raise CorruptCheckpointError if the file is shorter."""
        done = 0
        while done < out.nbytes:
            got = os.preadv(self.fd, [out[done:]], offset + done)
            if got <= 0:
                from ..errors import CorruptCheckpointError

                raise CorruptCheckpointError(
                    f"{self.name}: it changed since it was read (it is now shorter), so the states kept "
                    "from it undecoded are gone. Save without them (registry.discard_unclaimed()), or "
                    "load them again from a copy.",
                    path=self.name,
                )
            done += got


class FilePart:
    """One part of an entry, ``nbytes`` at ``offset`` of an ``OpenFile``, read when needed."""

    __slots__ = ("file", "nbytes", "offset")

    def __init__(self, file: OpenFile, offset: int, nbytes: int) -> None:
        self.file, self.offset, self.nbytes = file, offset, nbytes

    def read(self) -> Buffer:
        """Return the part's bytes, read now."""
        return self.read_checked(None)[0]

    def read_checked(self, crc: int | None) -> tuple[Buffer, int | None]:
        """Return the part's bytes, read now, and their CRC-32 continued from ``crc`` (see ``filled``)."""
        return filled(self.nbytes, lambda piece, start: self.file.read_into(piece, self.offset + start), crc)

    def __bytes__(self) -> bytes:
        return bytes(self.read())

    def crc32(self, crc: int = 0) -> int:
        """Return the CRC-32 of the part continued from ``crc``, read a bounded chunk at a time."""
        chunk = memoryview(bytearray(min(_CRC_CHUNK, self.nbytes)))
        for start in range(0, self.nbytes, _CRC_CHUNK):
            view = chunk[: min(_CRC_CHUNK, self.nbytes - start)]
            self.file.read_into(view, self.offset + start)
            crc = crc32(view, crc)
        return crc


# A kept part is checked this many bytes at a time: checking a large one takes no memory of its size.
_CRC_CHUNK = 8 << 20


Part = bytes | bytearray | memoryview | mmap.mmap | FilePart


def in_memory(part: Part) -> bytes | Buffer | memoryview:
    """Return ``part`` as a buffer, reading it if it is a ``FilePart``."""
    return part.read() if isinstance(part, FilePart) else part


def chained_crc(parts: tuple[Part, ...]) -> int:
    """Return the CRC-32 of the concatenation of ``parts``."""
    crc = 0
    for part in parts:
        crc = part.crc32(crc) if isinstance(part, FilePart) else crc32(part, crc)
    return crc


@attrs.frozen(eq=False)
class EncodedState:
    """A state read from a checkpoint and not decoded: its codec, exact bytes and checksum.

    Registries keep states that no callback claimed in this form, so a later save writes them back
    byte for byte, even when their classes are not importable or not allowlisted here.

    Attributes:
        codec: ``"data"`` (plain data, safe to decode from any file), ``"pickle"`` or
            ``"cloudpickle"`` (decoded from trusted files only).
        parts: the payload stream, then its out-of-band buffers (large arrays and tensors); a part
            kept from a file is a ``FilePart``, read from the file when needed (``bytes(part)``).
        checksum: CRC-32 of the parts, as recorded in the file.
        key: the key it was saved under, for messages.
        info: what the file records about the entry, such as why it was pickled.

    .. versionadded:: 0.1
    """

    codec: str
    parts: tuple[Part, ...] = attrs.field(repr=lambda p: f"<{len(p)} part(s), {_size(p)} bytes>")
    checksum: int
    _decoder: Callable[[EncodedState], Any] = attrs.field(repr=False, alias="decoder")
    key: str = ""
    info: Mapping[str, str] = attrs.field(factory=dict, repr=False)

    PLAIN_TAG: ClassVar[str] = "callstate:encoded"
    """The key that marks the plain form of an EncodedState (see ``to_plain``)."""

    def to_plain(self) -> dict[str, Any]:
        """Return this state as plain data that pickles and survives ``torch.load(weights_only=True)``.

        ``{"callstate:encoded": 1, "codec": str, "checksum": int, "key": str, "info": {str: str},
        "parts": [bytes, ...]}``: the exact bytes, so a restore or a save that meets it (anywhere a
        ``{key: state}`` mapping is accepted) treats it as this EncodedState, byte for byte.
        """
        return {
            self.PLAIN_TAG: 1,
            "codec": self.codec,
            "checksum": self.checksum,
            "key": self.key,
            "info": dict(self.info),
            "parts": [bytes(p) for p in self.parts],
        }

    @classmethod
    def from_plain(cls, value: Mapping[str, Any], *, source: str | None = None) -> EncodedState:
        """Return the EncodedState whose plain form is ``value``; it decodes as an untrusted file would.

        Raises:
            CorruptCheckpointError: ``value`` is not exactly what ``to_plain`` returns.
        """
        from ..errors import CorruptCheckpointError

        fields = {cls.PLAIN_TAG, "codec", "checksum", "key", "info", "parts"}
        tag = value.get(cls.PLAIN_TAG) if isinstance(value, Mapping) else None
        key = value.get("key") if isinstance(value, Mapping) else None
        parts = value.get("parts") if isinstance(value, Mapping) else None
        info = value.get("info") if isinstance(value, Mapping) else None
        if not (
            isinstance(value, Mapping)
            and set(value) == fields
            and type(tag) is int
            and tag == 1
            and value["codec"] in ("data", "pickle", "cloudpickle")
            and type(value["checksum"]) is int
            and 0 <= value["checksum"] < 1 << 32
            and type(key) is str
            and type(info) is dict
            and all(type(k) is str and type(v) is str for k, v in info.items())
            and type(parts) is list
            and len(parts) >= 1
            and all(type(p) is bytes for p in parts)
        ):
            # Its keys came from a file: a bounded number of them, each shown bounded and escaped.
            shown = (
                show(sorted(show(k, 60) for k in itertools.islice(value, 64))[:8], 400)
                if isinstance(value, Mapping)
                else escape(type(value).__qualname__)
            )
            raise CorruptCheckpointError(
                f"A state marked {cls.PLAIN_TAG!r} is not the plain form of an encoded state (it has "
                f"{shown}); expected the mapping EncodedState.to_plain() returns, unchanged. Remove the "
                "marker if it is an ordinary state.",
                path=source,
                key=key if type(key) is str else None,
            )
        from ._format import make_decoder

        return cls(
            codec=value["codec"],
            parts=tuple(parts),
            checksum=value["checksum"],
            decoder=make_decoder(source or "<a state_dict>", False),
            key=key,
            info=dict(info),
        )

    @property
    def size(self) -> int:
        """Total size of the parts in bytes."""
        return _size(self.parts)

    def is_intact(self) -> bool:
        """Return whether the parts still match the recorded checksum."""
        return chained_crc(self.parts) == self.checksum

    def decode(self) -> Any:
        """Return a new, decoded copy of the state, after checking its checksum.

        Raises:
            CorruptCheckpointError: the bytes do not match the checksum, or do not decode.
            UnsafeCheckpointError: the payload is a pickle and the checkpoint was not read with
                ``trusted=True``.
            UnknownTypeError: the payload holds a registered type not registered here.
        """
        return self._decoder(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EncodedState):
            return NotImplemented
        return (
            self.codec == other.codec
            and self.checksum == other.checksum
            and [bytes(p) for p in self.parts] == [bytes(p) for p in other.parts]
        )

    def __hash__(self) -> int:
        return hash((self.codec, self.checksum))


def _size(parts: tuple[Part, ...]) -> int:
    return sum(p.nbytes if isinstance(p, FilePart) else memoryview(p).nbytes for p in parts)


def recognised(value: Any, source: str | None) -> Any:
    """Return ``value``, or the ``EncodedState`` it is the plain form of (see ``EncodedState.to_plain``)."""
    if type(value) is dict and EncodedState.PLAIN_TAG in value:
        return EncodedState.from_plain(value, source=source)
    return value
