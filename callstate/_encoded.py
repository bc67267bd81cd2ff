"""A saved state kept in its encoded form until a callback claims it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs


@attrs.frozen(eq=False)
class EncodedState:
    """A state read from a checkpoint and not decoded: its codec name and exact payload bytes.

    Registries keep states that no callback claimed in this form, so a later save writes them back
    byte for byte, even when their classes are not importable or not allowlisted here.

    .. versionadded:: 0.1
    """

    codec: str
    payload: bytes | memoryview = attrs.field(repr=lambda p: f"<{len(p)} bytes>")
    checksum: int
    _decoder: Callable[[EncodedState], Any] = attrs.field(repr=False, alias="decoder")

    def decode(self) -> Any:
        """Return a new, decoded copy of the state.

        Raises:
            UnsafeCheckpointError: the payload needs a global outside the allowlist (or, for
                cloudpickle payloads, the checkpoint was not read with ``trusted=True``).
        """
        return self._decoder(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EncodedState):
            return NotImplemented
        return (self.codec, bytes(self.payload)) == (other.codec, bytes(other.payload))

    def __hash__(self) -> int:
        return hash((self.codec, self.checksum))


EncodedState.__module__ = "callstate"
