"""A saved state kept in its encoded form until a callback claims it."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from typing import Any

import attrs


def chained_crc(parts: tuple[bytes | bytearray | memoryview, ...]) -> int:
    """Return the CRC-32 of the concatenation of ``parts``."""
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
    return crc


@attrs.frozen(eq=False)
class EncodedState:
    """A state read from a checkpoint and not decoded: its codec, exact bytes and checksum.

    Registries keep states that no callback claimed in this form, so a later save writes them back
    byte for byte, even when their classes are not importable or not allowlisted here.

    Attributes:
        codec: ``"data"`` (plain data, safe to decode from any file), ``"pickle"`` or
            ``"cloudpickle"`` (decoded from trusted files only).
        parts: the payload stream, then its out-of-band buffers (large arrays and tensors).
        checksum: CRC-32 of the parts, as recorded in the file.
        key: the key it was saved under, for messages.
        info: what the file records about the entry, such as why it was pickled.

    .. versionadded:: 0.1
    """

    codec: str
    parts: tuple[bytes | bytearray | memoryview, ...] = attrs.field(
        repr=lambda p: f"<{len(p)} part(s), {sum(memoryview(x).nbytes for x in p)} bytes>"
    )
    checksum: int
    _decoder: Callable[[EncodedState], Any] = attrs.field(repr=False, alias="decoder")
    key: str = ""
    info: Mapping[str, str] = attrs.field(factory=dict, repr=False)

    @property
    def size(self) -> int:
        """Total size of the parts in bytes."""
        return sum(memoryview(p).nbytes for p in self.parts)

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


EncodedState.__module__ = "callstate"
