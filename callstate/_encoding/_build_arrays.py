"""The data codec's builders of numpy arrays, scalars and dtypes, torch tensors, sizes, devices, dtypes,
and jax arrays.

Each is built by ``callstate._encoding._arrays`` (jax arrays by ``_jax``) from a checked
description; its library is imported only when a payload holds one.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _arrays, _jax
from ._reader import SLOT, Reader
from ._tags import (
    INLINE,
    JAX_ARRAY,
    NDARRAY,
    NUMPY_DTYPE,
    NUMPY_SCALAR,
    OUT_OF_BAND,
    TENSOR,
    TORCH_DEVICE,
    TORCH_DTYPE,
    TORCH_SIZE,
    DecodeError,
)

if TYPE_CHECKING:
    from ._parts import Buffer


class ArrayBuilder(Reader):
    """Builds numpy and torch values; an array's data is its bytes in the stream or an out-of-band buffer."""

    def _shape(self) -> tuple[int, ...]:
        ndim = self.data[self._take(1)]
        if ndim > _arrays.MAX_DIMS:
            raise DecodeError(f"{ndim} dimensions (at most {_arrays.MAX_DIMS})")
        start = self._take(8 * ndim)
        return struct.unpack_from(f"<{ndim}Q", self.data, start)

    def _buffer(self) -> Buffer:
        kind = self.data[self._take(1)]
        if kind == INLINE:
            raw = self._raw()
            self._charge(64 + len(raw))
            return bytearray(raw)
        if kind != OUT_OF_BAND:
            raise DecodeError(f"unknown array data kind {kind}")
        index = self._u32()
        if index >= len(self.buffers) or self.used[index]:
            raise DecodeError(f"out-of-band buffer {index} does not exist or is used twice")
        self.used[index] = True
        return self.buffers[index]

    def _array_call(self, function: Callable[..., Any], *args: Any) -> Any:
        try:
            return function(*args)
        except _arrays.ArrayError as exc:
            raise DecodeError(str(exc)) from None

    def _ndarray(self, depth: int) -> Any:
        self._charge(SLOT + 256)  # the array with its shape and strides
        slot = self._slot()
        name, shape = self._name(), self._shape()
        fortran = self.data[self._take(1)]
        if fortran > 1:
            raise DecodeError(f"unknown array order {fortran}")
        value = self._array_call(_arrays.numpy_array, name, shape, bool(fortran), self._buffer())
        self.memo[slot] = value
        return value

    def _numpy_scalar(self, depth: int) -> Any:
        self._charge(48)
        name = self._name()
        n = self._u32()
        start = self._take(n)
        self._charge(40 + 2 * n)  # the slice, and a str_ or bytes_ scalar of it
        return self._array_call(_arrays.numpy_scalar, name, self.data[start : start + n])

    def _numpy_dtype(self, depth: int) -> Any:
        self._charge(160)  # a new dtype object each time (str and datetime dtypes are not cached)
        return self._array_call(_arrays.numpy_dtype, self._name())

    def _tensor(self, depth: int) -> Any:
        self._charge(SLOT + 1024)
        slot = self._slot()
        name, shape = self._name(), self._shape()
        flags = self.data[self._take(1)]
        if flags > 3:
            raise DecodeError(f"unknown tensor flags {flags}")
        value = self._array_call(
            _arrays.torch_tensor, name, shape, bool(flags & 1), bool(flags & 2), self._buffer()
        )
        self.memo[slot] = value
        return value

    def _jax_array(self, depth: int) -> Any:
        # The array, and the device buffer it is copied into (the host array is dropped after).
        self._charge(SLOT + 1024)
        slot = self._slot()
        name, shape, impl = self._name(), self._shape(), self._name()
        value = self._array_call(_jax.jax_array, name, shape, impl, self._buffer())
        self.memo[slot] = value
        return value

    def _torch_size(self, depth: int) -> Any:
        self._charge(128)
        n = self._count(8)
        if n > _arrays.MAX_DIMS:
            raise DecodeError(f"a torch.Size of {n} dimensions")
        dims = list(struct.unpack_from(f"<{n}q", self.data, self._take(8 * n)))
        value = self._array_call(_arrays.torch_size, dims)
        self._record(value, 1 + n, 1 + n)
        return value

    def _torch_device(self, depth: int) -> Any:
        self._charge(64)
        return self._array_call(_arrays.torch_device, self._name())

    def _torch_dtype(self, depth: int) -> Any:
        return self._array_call(_arrays.torch_dtype, self._name())


# The tags built here, each by its builder (callstate._encoding._decoder dispatches on them).
ARRAY_READERS: dict[int, Callable[[ArrayBuilder, int], Any]] = {
    NDARRAY: ArrayBuilder._ndarray, NUMPY_SCALAR: ArrayBuilder._numpy_scalar,
    NUMPY_DTYPE: ArrayBuilder._numpy_dtype,
    TENSOR: ArrayBuilder._tensor, TORCH_SIZE: ArrayBuilder._torch_size,
    TORCH_DEVICE: ArrayBuilder._torch_device, TORCH_DTYPE: ArrayBuilder._torch_dtype,
    JAX_ARRAY: ArrayBuilder._jax_array,
}
