"""The bytes of an entry: memory to read them into, parts kept in a file, and their CRC-32.

A part is the payload stream or one out-of-band buffer of an entry; a part kept from a file is
read only when needed (``FilePart``). Every part is checked against the CRC-32 the file records.
"""

from __future__ import annotations

import contextlib
import functools
import mmap
import os
import weakref
import zlib
from collections.abc import Callable
from typing import Any, Protocol

from ..errors import CorruptCheckpointError


@functools.cache
def _crc32_function() -> Callable[[Any, int], int]:
    """Return ISA-L's CRC-32 if python-isal is installed (a dependency where it has wheels), else zlib's.

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


class RangedFile(Protocol):
    """Where kept parts are read from when needed: a local ``OpenFile``, or a remote object (``_io``)."""

    name: str

    @property
    def origin(self) -> str:
        """Where the file is, as a save to it names it (a real path, or a URL)."""
        ...

    def expect(self, offset: int, nbytes: int) -> None:
        """Say the next reads cover ``nbytes`` at ``offset`` (a remote file fetches them in few requests)."""
        ...

    def read_into(self, out: memoryview, offset: int) -> None:
        """Fill ``out`` with the bytes at ``offset``; raise CorruptCheckpointError if they are gone."""
        ...


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

    @property
    def origin(self) -> str:
        """The file's real path."""
        return os.path.realpath(self.name)

    def expect(self, offset: int, nbytes: int) -> None:
        """Nothing to prepare: a local read costs no request."""

    def read_into(self, out: memoryview, offset: int) -> None:
        """Fill ``out`` with the bytes at ``offset``; raise CorruptCheckpointError if the file is shorter."""
        done = 0
        while done < out.nbytes:
            got = os.preadv(self.fd, [out[done:]], offset + done)
            if got <= 0:
                raise CorruptCheckpointError(
                    f"{self.name}: it changed since it was read (it is now shorter), so the states kept "
                    "from it undecoded are gone. Save without them (registry.discard_unclaimed()), or "
                    "load them again from a copy.",
                    path=self.name,
                )
            done += got

    def read_bytes(self, offset: int, nbytes: int) -> bytes:
        """Return the ``nbytes`` at ``offset`` as a bytes object, read straight into it."""
        data = os.pread(self.fd, nbytes, offset)
        if len(data) == nbytes:
            return data
        # A short read (one read stops at 2 GiB on Linux, or the file shrank): read_into loops, and
        # says which it was.
        out = bytearray(nbytes)
        self.read_into(memoryview(out), offset)
        return bytes(out)


class FilePart:
    """One part of an entry, ``nbytes`` at ``offset`` of a ``RangedFile``, read when needed."""

    __slots__ = ("file", "nbytes", "offset")

    def __init__(self, file: RangedFile, offset: int, nbytes: int) -> None:
        self.file, self.offset, self.nbytes = file, offset, nbytes

    def read(self) -> Buffer:
        """Return the part's bytes, read now."""
        return self.read_checked(None)[0]

    def read_checked(self, crc: int | None) -> tuple[Buffer, int | None]:
        """Return the part's bytes, read now, and their CRC-32 continued from ``crc`` (see ``filled``)."""
        self.file.expect(self.offset, self.nbytes)
        return filled(self.nbytes, lambda piece, start: self.file.read_into(piece, self.offset + start), crc)

    def __bytes__(self) -> bytes:
        if isinstance(self.file, OpenFile):
            # One copy, not two (read into new memory, then copied into bytes): a payload stream
            # of 8 MB (1,000,000 packed floats) in 1.6 ms, 7.7 ms before (timeit, median of 5).
            self.file.expect(self.offset, self.nbytes)
            return self.file.read_bytes(self.offset, self.nbytes)
        return bytes(self.read())

    def crc32(self, crc: int = 0) -> int:
        """Return the CRC-32 of the part continued from ``crc``, read a bounded chunk at a time."""
        self.file.expect(self.offset, self.nbytes)
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
