"""Decoding the entries of a callstate file: checked against their checksums, refused without trust.

Every entry of one read draws from that read's ``Allowance``; a pickle is decoded only from a
file read with ``trusted=True``, and a pickle kept from another file only with ``trust_kept=True``.
"""

from __future__ import annotations

import io
import itertools
import mmap
import pickle
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .._support import escape, show
from ..errors import (
    CallstateError,
    CorruptCheckpointError,
    MissingDependencyError,
    UnknownTypeError,
    UnsafeCheckpointError,
)
from ._allowance import Allowance, Oversized, list_bytes
from ._encoded import EncodedState
from ._format import KEPT, NO_INFO, RawEntry, corrupt, oversized, register_hint
from ._parts import Buffer, FilePart, RangedFile, crc32, filled

# Per entry kept undecoded: its EncodedState, a slot in the mapping, the tuple of FileParts; per
# part, a FilePart (sys.getsizeof: 72) and its slot in the tuple.
_KEPT_ENTRY = 256


_KEPT_PART = 80


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
            f"{register_hint(shown)} before saving it again, or load with trusted=True only if you "
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
        raise corrupt(name, "its payload does not match its checksum", key)
    return stream, buffers


def decode_parts(
    codec: str,
    parts: tuple[Any, ...],
    *,
    trusted: bool,
    name: str,
    key: str,
    crc: int | None = None,
    info: Mapping[str, str] = NO_INFO,
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
    from . import _codec  # see _writing._encode_one: not imported with callstate

    if not parts:
        raise corrupt(name, "it has no payload", key)
    # The private copies: the stream and the list of buffers (gone once decoded), and each buffer
    # with its structures (see _checked_copies), which arrays and tensors then own.
    copies = 40 + _part_size(parts[0]) + list_bytes(len(parts))
    try:
        allowance.charge(copies + (sum(128 + _part_size(p) for p in parts[1:]) if len(parts) > 1 else 0))
    except Oversized as exc:
        raise oversized(name, exc, key) from None
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
        raise oversized(name, exc, key) from None
    except _codec.DecodeError as exc:
        raise corrupt(name, f"its payload is malformed ({escape(str(exc), 300)})", key) from None
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
        raise corrupt(name, "its payload does not match its checksum", entry.key)


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
    file: RangedFile | None = None,
    *,
    trust_kept: bool = False,
    allowance: Allowance | None = None,
) -> dict[str, EncodedState]:
    """Wrap raw entries as EncodedStates that decode (and check themselves) on demand.

    With ``file``, their parts are ``FilePart``s read from it when needed, not views of the map.
    With ``allowance`` (the read's), what they take and what decoding them builds is drawn from it.
    """
    origin = file.origin if file is not None else None
    decoder = make_decoder(name, trusted, trust_kept=trust_kept, origin=origin, allowance=allowance)
    out: dict[str, EncodedState] = {}
    for e in entries:
        if allowance is not None:
            try:
                allowance.charge(_KEPT_ENTRY + _KEPT_PART * len(e.parts))
            except Oversized as exc:
                raise oversized(name, exc, e.key) from None
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


def from_plain(value: Mapping[str, Any], *, source: str | None = None) -> EncodedState:
    """Return the EncodedState whose plain form is ``value``; it decodes as an untrusted file would.

    Raises:
        CorruptCheckpointError: ``value`` is not exactly what ``to_plain`` returns.
    """
    fields = {EncodedState.PLAIN_TAG, "codec", "checksum", "key", "info", "parts"}
    tag = value.get(EncodedState.PLAIN_TAG) if isinstance(value, Mapping) else None
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
            f"A state marked {EncodedState.PLAIN_TAG!r} is not the plain form of an encoded state (it has "
            f"{shown}); expected the mapping EncodedState.to_plain() returns, unchanged. Remove the "
            "marker if it is an ordinary state.",
            path=source,
            key=key if type(key) is str else None,
        )
    return EncodedState(
        codec=value["codec"],
        parts=tuple(parts),
        checksum=value["checksum"],
        decoder=make_decoder(source or "<a state_dict>", False),
        key=key,
        info=dict(info),
    )


def recognised(value: Any, source: str | None) -> Any:
    """Return ``value``, or the ``EncodedState`` it is the plain form of (see ``EncodedState.to_plain``)."""
    if type(value) is dict and EncodedState.PLAIN_TAG in value:
        return from_plain(value, source=source)
    return value
