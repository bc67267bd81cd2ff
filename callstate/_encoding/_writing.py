"""Encoding states into the entries of a callstate file: with the data codec, or pickled with a warning.

A state kept undecoded from another file is written back byte for byte, marked with where it came
from when it is a pickle read without trust (see ``written_info``).
"""

from __future__ import annotations

import io
import pickle
import sys
from collections.abc import Hashable, Mapping
from typing import Any

from .._support import show, warn_user
from ..errors import CorruptCheckpointError, PickledStateWarning, SerializationError
from ._encoded import EncodedState
from ._format import KEPT, MAX_INFO_ITEMS, MAX_INFO_TEXT, Entry, register_hint, registrable
from ._parts import chained_crc, crc32, in_memory
from ._reading import FileDecoder, recognised
from ._tensors import reduce_tensor

# The callstate info items a save writes itself; an entry's other items make way for the mark.
_OWN_INFO = ("pickled", "format", "version", KEPT)


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
            alternative = (
                "register the type with callstate.register_type()"
                if registrable(reason)
                else "leave it out of the state by naming the attributes to save: "
                "@callstate.stateful(state=[...])"
            )
            raise SerializationError(
                f"The state of {show(key)} cannot be saved: it holds {reason}, which callstate's data codec "
                f"does not write; pickle says {first_error!r} and cloudpickle says {exc!r}. Return plain "
                "data (numbers, strings, lists, dicts, arrays, tensors) from its state_dict(), or "
                f"{alternative}.",
                key=key,
            ) from exc


def _pickled(key: str, reason: str) -> None:
    warn_user(
        PickledStateWarning(
            f"State {show(key)} holds {reason}, which callstate's data codec does not write, so it was "
            f"saved with pickle: loading it will need trusted=True. {register_hint(reason)}.",
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
    mark, once there, stays. A state in plain form (``from_plain``) is always marked.
    """
    info = dict(state.info)
    if state.codec == "data" or KEPT in info:
        return info
    decoder = state.decoder
    if isinstance(decoder, FileDecoder) and (
        decoder.trusted or (decoder.origin is not None and decoder.origin == dest)
    ):
        return info
    if len(info) >= MAX_INFO_ITEMS:  # another writer's items: the mark matters more
        info = {k: v for k, v in info.items() if k in _OWN_INFO}
    source = decoder.name if isinstance(decoder, FileDecoder) else "<an EncodedState made in memory>"
    room = MAX_INFO_TEXT - len(KEPT)
    info[KEPT] = source if len(source) <= room else "..." + source[-(room - 3) :]
    return info
