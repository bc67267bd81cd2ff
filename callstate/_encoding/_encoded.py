"""A saved state kept in its encoded form until a callback claims it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import attrs

from ._parts import FilePart, Part, chained_crc


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
    decoder: Callable[[EncodedState], Any] = attrs.field(repr=False)
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
        return self.decoder(self)

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
