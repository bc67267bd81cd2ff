"""The data codec's decoder: the reading core and the builders of every tag, dispatched on the tag byte."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ._allowance import Allowance
from ._build_arrays import ARRAY_READERS, ArrayBuilder
from ._build_containers import CONTAINER_READERS, ContainerBuilder
from ._build_library import LIBRARY_READERS, LibraryBuilder
from ._build_scalars import SCALAR_READERS, ScalarBuilder
from ._reader import MEMO_READERS, PENDING
from ._tags import DecodeError

if TYPE_CHECKING:
    from ._parts import Buffer


class Decoder(ScalarBuilder, ContainerBuilder, LibraryBuilder, ArrayBuilder):
    """Decodes one payload; every read is checked against the bytes present."""

    def _read(self, depth: int) -> Any:
        pos = self.pos
        if pos >= self.end:
            raise DecodeError("the payload ends before its value")
        self.pos = pos + 1
        return _READERS[self.data[pos]](self, depth)

    def _bad(self, depth: int) -> Any:
        raise DecodeError(f"unknown tag {self.data[self.pos - 1]:#04x} at offset {self.pos - 1}")


# The builder of each tag byte; a byte that is no tag is refused.
_READERS: list[Callable[[Decoder, int], Any]] = [Decoder._bad] * 256
for _readers in (MEMO_READERS, SCALAR_READERS, CONTAINER_READERS, LIBRARY_READERS, ARRAY_READERS):
    for _tag, _reader in _readers.items():
        _READERS[_tag] = _reader


class CompiledDecoder(Decoder):
    """A Decoder whose reads go to the compiled decoder (``callstate._encoding._cdecode``).

    The compiled ``read`` builds plain data itself and hands every other tag back to the builders
    here, on this object: the memo, nesting heights, hash-cost table and allowance are shared.
    """

    def __init__(self, read: Callable[[Decoder, int], Any], stream: bytes, buffers: Sequence[Buffer],
                 *, bound_memory: bool = True, allowance: Allowance | None = None) -> None:
        """Decode ``stream`` as Decoder does, reading each value with ``read``."""
        super().__init__(stream, buffers, bound_memory=bound_memory, allowance=allowance)
        self._compiled = read

    def _read(self, depth: int) -> Any:
        return self._compiled(self, depth)


def compiled_setup() -> tuple[Any, ...]:
    """Return what the compiled decoder uses of this side, fetched once on its first decode.

    The Decoder class it makes, the builders by tag, the marker of a memo slot being built,
    DecodeError, the size class of an empty dict's header, and the reference ``decode``.
    """
    return CompiledDecoder, _READERS, PENDING, DecodeError, (sys.getsizeof({}) + 15) & ~15, decode


def decode(
    stream: bytes,
    buffers: Sequence[Buffer],
    *,
    bound_memory: bool = True,
    allowance: Allowance | None = None,
) -> Any:
    """Return the value a payload holds; raise DecodeError (or UnknownType) if it is malformed.

    It draws from ``allowance``, the allowance of the whole read (by default, one for this payload
    alone); ``bound_memory=False`` (for trusted files) makes that default lift the memory bound of
    ALLOC_FACTOR. Every other bound holds.

    Raises:
        Oversized: the read's allowance would be exceeded.
    """
    return Decoder(stream, buffers, bound_memory=bound_memory, allowance=allowance).decode()
