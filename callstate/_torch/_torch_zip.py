"""The zip of a torch checkpoint, checked against its own bytes before anything in it is read.

No compressed, encrypted, duplicate or overlapping member; each within the file, with its local
header where the directory says; an end record that torch.load's reader and Python's zipfile read
alike; the layout torch.save writes (one folder, a data.pkl and a version record, small records).
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from typing import IO, Any

from .._support import escape, show
from ..errors import CallstateError, CorruptCheckpointError

# A data.pkl larger than this is refused: the pickle is read whole into memory (torch.load does too)
# and its opcodes walked; 256 MiB is tens of millions of Python objects, where a state would hold a tensor.
MAX_PICKLE = 256 * 2**20


# Small records that torch.load parses (version, byteorder, ...) are read only up to this size.
_MAX_SMALL_RECORD = 64


_STORED = zipfile.ZIP_STORED


# The general-purpose flags of a plain stored member: sizes after the data (bit 3), UTF-8 names (bit 11).
_PLAIN_FLAGS = 0x8 | 0x800


_ZIP_MAGIC = b"PK\x03\x04"


class TorchZip:
    """A torch.save zip, checked against its own bytes, with the records torch.load would use.

    Attributes:
        zip: the open zip file.
        prefix: the archive's folder (``"archive/"``), taken from its first member as torch does.
        records: ``{storage key: zip member}``.
        pickle: the bytes of ``data.pkl``.
    """

    def __init__(self, file: IO[bytes], name: str) -> None:
        head = file.read(len(_ZIP_MAGIC))
        file.seek(0)
        if head != _ZIP_MAGIC:
            corrupt(
                name,
                "is not a readable torch checkpoint: it does not start as a zip file, and callstate "
                "reads torch.save's zip format only (torch >= 1.6); check the path, or re-save it with "
                "torch.save",
            )
        try:
            self.zip = zipfile.ZipFile(file)
        except (zipfile.BadZipFile, OSError, ValueError, OverflowError, EOFError, NotImplementedError) as exc:
            raise CorruptCheckpointError(
                f"{escape(name)}: a damaged torch checkpoint ({escape(str(exc), 300)}): it is truncated or "
                "altered; restore it from a copy.",
                path=name,
            ) from None
        try:
            self._check(file, name)
        except CallstateError:
            self.zip.close()
            raise
        except (
            OSError, EOFError, NotImplementedError, UnicodeDecodeError, zipfile.BadZipFile, ValueError,
            OverflowError,
        ) as exc:
            # A flag zipfile does not read, or an offset the checks below missed: the file was altered.
            # Offsets are checked before each seek (the directory's by _within, the members' against the
            # directory's start); this is the backstop.
            self.zip.close()
            raise CorruptCheckpointError(
                f"{escape(name)}: a damaged torch checkpoint ({type(exc).__name__}: "
                f"{escape(str(exc), 300)}): it is truncated or "
                "altered; restore it from a copy.",
                path=name,
            ) from None
        except BaseException:
            self.zip.close()
            raise

    def _check(self, file: IO[bytes], name: str) -> None:
        infos = self.zip.infolist()
        _check_members(infos, file, name, self.zip.start_dir)
        first = infos[0].filename
        if "/" not in first:
            corrupt(name, f"its first member {show(first)} is in no folder, which torch.load refuses")
        self.prefix = first[: first.index("/") + 1]
        outside = [i.filename for i in infos if not i.filename.startswith(self.prefix)]
        if outside:
            corrupt(
                name,
                f"members outside its folder {show(self.prefix)} ({show(outside[:3])}), which torch.load "
                "refuses",
            )
        names = {i.filename.lower(): i.filename for i in infos}  # duplicates by case were refused above
        for needed in ("data.pkl", "version|.data/version"):
            if not any((self.prefix + n).lower() in names for n in needed.split("|")):
                corrupt(
                    name, f"a zip file without {escape(self.prefix + needed.split('|')[0])} is not a torch "
                          "checkpoint"
                )
        if (self.prefix + "constants.pkl").lower() in names:
            corrupt(
                name,
                "a TorchScript archive, which torch.load(weights_only=True) refuses; "
                "load it with torch.jit.load",
            )
        self._check_small_records(names, name)
        data = self.prefix + "data/"
        self.records = {n[len(data) :]: n for low, n in names.items() if low.startswith(data.lower())}
        pkl = self.zip.getinfo(names[(self.prefix + "data.pkl").lower()])
        if pkl.file_size > MAX_PICKLE:
            corrupt(
                name,
                f"its pickle is {pkl.file_size} bytes, more than the {MAX_PICKLE} callstate reads; "
                "keep large data in tensors",
            )
        try:
            self.pickle = self.zip.read(pkl)
        except (zipfile.BadZipFile, OSError) as exc:
            corrupt(name, f"its pickle is damaged ({escape(str(exc), 300)}); restore it from a copy")

    def _check_small_records(self, names: dict[str, str], name: str) -> None:
        """Check the records torch.load parses before the pickle, as it parses them."""
        checks: dict[str, Callable[[bytes], bool]] = {
            "version": lambda b: b.strip().isdigit(),
            ".data/version": lambda b: b.strip().isdigit(),
            "byteorder": lambda b: b in (b"little", b"big"),
            ".storage_alignment": lambda b: b.strip().isdigit(),
        }
        for record, ok in checks.items():
            member = names.get((self.prefix + record).lower())
            if member is None:
                continue
            info = self.zip.getinfo(member)
            value = self.zip.read(info) if info.file_size <= _MAX_SMALL_RECORD else b""
            if not ok(value):
                corrupt(
                    name, f"its record {escape(member)} holds {show(value[:_MAX_SMALL_RECORD])}, which "
                          "torch.load refuses"
                )

    def record_sizes(self) -> dict[str, int]:
        """``{storage key: bytes in its record}``."""
        return {k: self.zip.getinfo(n).file_size for k, n in self.records.items()}


def _check_members(infos: list[zipfile.ZipInfo], file: IO[bytes], name: str, start_dir: int) -> None:
    """Refuse an empty zip, duplicate names, and members that are compressed, encrypted or beyond the file."""
    if not infos:
        corrupt(name, "an empty zip file is not a torch checkpoint")
    # torch.load finds members ignoring case (miniz), so names that differ only in case are duplicates too.
    seen: set[str] = set()
    duplicates: set[str] = set()
    for info in infos:
        low = info.filename.lower()
        if low in seen:
            duplicates.add(info.filename)
        seen.add(low)
    if duplicates:
        corrupt(
            name,
            f"the zip holds several members named {show(sorted(duplicates)[:3])}; readers disagree on which "
            "one counts (torch.load takes another than Python's zipfile), so it was refused. Re-save it with "
            "torch.save",
        )
    total = 0
    for info in infos:
        if info.compress_type != _STORED or info.flag_bits & ~_PLAIN_FLAGS:
            corrupt(
                name,
                f"its member {escape(info.filename)} is compressed or encrypted, which torch.save never "
                "writes; re-save it with torch.save",
            )
        end = info.header_offset + 30 + len(info.orig_filename.encode()) + info.compress_size
        if info.header_offset < 0:
            # zipfile subtracts a zip64 directory offset past the real one from every member's offset.
            corrupt(
                name,
                f"its member {escape(info.filename)} would start {-info.header_offset} bytes before the file "
                "(its zip64 end record is altered)",
            )
        # miniz refuses a member on another disk; zipfile reads it from this one.
        if info.file_size != info.compress_size or end > start_dir or info.volume:
            corrupt(
                name,
                f"its member {escape(info.filename)} declares {info.file_size} bytes, more than the file "
                "holds; it is truncated or altered",
            )
        total += info.compress_size
    if total > start_dir:
        corrupt(name, "its members overlap (they declare more bytes than the file holds); it was altered")
    _check_end_record(file, name, len(infos))
    _check_local_headers(infos, file, name)


def _check_local_headers(infos: list[zipfile.ZipInfo], file: IO[bytes], name: str) -> None:
    """Refuse a member without its local header where the directory says (torch.load reads them all)."""
    for info in infos:
        file.seek(info.header_offset)
        header = file.read(30 + len(info.orig_filename.encode()))
        if header[:4] != _ZIP_MAGIC or header[30:] != info.orig_filename.encode():
            corrupt(
                name,
                f"its member {escape(info.filename)} has no local header where the directory says; it was "
                "altered",
            )


def _check_end_record(file: IO[bytes], name: str, members: int) -> None:
    """Refuse an end record that miniz (torch.load) would read otherwise than Python's zipfile."""
    end_record = zipfile._EndRecData(file)  # type: ignore[attr-defined]
    if end_record is None:
        return
    disks = (zipfile._ECD_DISK_NUMBER, zipfile._ECD_DISK_START)  # type: ignore[attr-defined]
    counts = (zipfile._ECD_ENTRIES_THIS_DISK, zipfile._ECD_ENTRIES_TOTAL)  # type: ignore[attr-defined]
    if any(end_record[i] for i in disks) or len({end_record[i] for i in counts}) > 1:
        corrupt(name, "its zip end record names several disks, which torch.load refuses; it was altered")
    # miniz takes the number of members from the end record, zipfile from the directory; and miniz
    # refuses an entry whose declared lengths run past the directory, which zipfile cuts short.
    if end_record[zipfile._ECD_ENTRIES_TOTAL] != members or not _entries_fit(file, end_record, members):  # type: ignore[attr-defined]
        corrupt(
            name,
            "its zip directory holds another number of members than its end record says; "
            "readers would disagree on its contents",
        )


def _entries_fit(file: IO[bytes], end_record: list[Any], members: int) -> bool:
    """Whether the directory's entries, at their declared lengths, fill it exactly."""
    size, start = end_record[zipfile._ECD_SIZE], end_record[zipfile._ECD_OFFSET]  # type: ignore[attr-defined]
    # Both come from the file as they stand (8 bytes each in a zip64 record): checked before the seek.
    if not _within(file, start, size):
        return False
    file.seek(start)
    directory = file.read(size)
    at = 0
    for _ in range(members):
        if directory[at : at + 4] != b"PK\x01\x02" or at + 46 > len(directory):
            return False
        at += 46 + sum(int.from_bytes(directory[at + i : at + i + 2], "little") for i in (28, 30, 32))
    return bool(at == size)


def _within(file: IO[bytes], start: int, size: int) -> bool:
    """Whether ``size`` bytes from ``start`` lie in the file (numbers read from it may be any value)."""
    here = file.tell()
    length = file.seek(0, 2)
    file.seek(here)
    return start >= 0 and size >= 0 and start + size <= length


def corrupt(name: str, problem: str) -> Any:
    raise CorruptCheckpointError(f"{escape(name)}: {problem}.", path=name)
