"""jax arrays, and typed PRNG key arrays, as a dtype name, a shape, a key implementation and raw bytes.

A ``jax.Array`` is written as the bytes of its host copy (gathered from its shards on this
process); a typed key array (``jax.random.key``) as its key data (``jax.random.key_data``) and the
name of its implementation, so ``jax.random.wrap_key_data`` gives it back. Raw uint32 keys
(``jax.random.PRNGKey``) are plain arrays. Decoded arrays are on jax's default device.

jax is never imported here to write: a jax array to write means jax is imported already. A payload
that holds one imports jax when it is decoded.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from .._support import require, show
from ._arrays import ArrayError, _check_bools, _check_size, _private, _raw

if TYPE_CHECKING:
    from ._parts import Buffer

# The dtypes written, by the name jax and numpy give them: numpy's plain numbers, and ml_dtypes'.
# A name from a file is looked up in the table these make, never with getattr.
_NUMPY_NAMES = (
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "complex64", "complex128",
)
_ML_NAMES = (
    "bfloat16", "float8_e3m4", "float8_e4m3", "float8_e4m3b11fnuz", "float8_e4m3fn", "float8_e4m3fnuz",
    "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu",
    # One item per byte with the upper bits unused: each byte read must be one such a type writes.
    "int2", "int4", "uint2", "uint4", "float4_e2m1fn", "float6_e2m3fn", "float6_e3m2fn",
)
_SUB_BYTE = frozenset({"int2", "int4", "uint2", "uint4", "float4_e2m1fn", "float6_e2m3fn", "float6_e3m2fn"})
# The PRNG implementations jax ships, by the name jax.random.key_impl gives.
KEY_IMPLS = frozenset({"threefry2x32", "threefry4x32", "rbg", "unsafe_rbg", "philox2x32", "philox4x32"})
_dtypes: dict[str, Any] = {}


def is_jax_type(cls: type) -> bool:
    """Return whether ``cls`` is a jax array type (an array, a key array, a tracer); never imports jax."""
    if not cls.__module__.startswith(("jax", "jaxlib")):
        return False
    jax = sys.modules.get("jax")
    return jax is not None and issubclass(cls, (jax.Array, jax.core.Tracer))


def _jax() -> Any:
    return require("jax", extra="jax", needed_for="a state that holds a jax array")


def _table() -> dict[str, Any]:
    if not _dtypes:
        np = _jax().numpy
        import ml_dtypes  # jax's own dependency: installed with it

        found = {name: np.dtype(name) for name in _NUMPY_NAMES}
        types = vars(ml_dtypes)
        found.update({name: np.dtype(types[name]) for name in _ML_NAMES if name in types})
        _dtypes.update(found)
    return _dtypes


def jax_parts(array: Any) -> tuple[str, tuple[int, ...], str, memoryview]:
    """Return ``(dtype name, shape, key implementation or "", raw bytes)`` of a jax array."""
    jax = sys.modules["jax"]
    if isinstance(array, jax.core.Tracer):
        raise ArrayError(
            "a traced jax value (state_dict() ran inside jit, grad or vmap): return concrete arrays"
        )
    if not array.is_fully_addressable:
        raise ArrayError(
            "a jax array sharded across processes: return this process's part (or an array "
            "replicated with jax.experimental.multihost_utils.process_allgather) from state_dict()"
        )
    impl = ""
    if jax.dtypes.issubdtype(array.dtype, jax.dtypes.prng_key):
        impl = str(jax.random.key_impl(array))
        if impl not in KEY_IMPLS:
            raise ArrayError(f"a key array of the PRNG implementation {impl!r}, not one of jax's own")
        array = jax.random.key_data(array)
    import numpy

    # On the CPU, a read-only view of the array's own buffer (a background capture copies it once).
    host = numpy.asarray(array)
    name = host.dtype.name
    if _table().get(name) != host.dtype:
        raise ArrayError(f"a jax array of dtype {host.dtype}, which is not a plain number type")
    shape = tuple(host.shape)
    if host.size == 0:
        return name, shape, impl, memoryview(b"")
    flat = numpy.ascontiguousarray(host)
    raw = _raw(flat.reshape(-1).view(numpy.uint8))
    return name, shape, impl, raw if flat is host else _private(raw)


def jax_array(name: str, shape: tuple[int, ...], impl: str, buffer: Buffer) -> Any:
    """Rebuild a jax array (a typed key array when ``impl`` is given) on the default device."""
    jax = _jax()
    import numpy

    dtype = _table().get(name)
    if dtype is None:
        raise ArrayError(f"{show(name, 60)} is not a jax dtype callstate decodes")
    if impl and impl not in KEY_IMPLS:
        raise ArrayError(f"{show(impl, 60)} is not a PRNG implementation of jax's")
    if jax.dtypes.canonicalize_dtype(dtype) != dtype:
        raise ArrayError(
            f"a jax array of dtype {name}, which jax here would turn into "
            f"{jax.dtypes.canonicalize_dtype(dtype)}: enable 64-bit types before restoring "
            "(jax.config.update('jax_enable_x64', True))"
        )
    _check_size("a jax array", dtype.itemsize, shape, len(buffer))
    if name == "bool":
        _check_bools(buffer)
    host = numpy.frombuffer(buffer, dtype=dtype).reshape(shape) if buffer else numpy.empty(shape, dtype)
    if name in _SUB_BYTE and host.size:
        # An item whose unused upper bits are set has no value of the type: refuse it, not its garbage.
        again = host.astype(numpy.float32).astype(dtype)
        if again.view(numpy.uint8).tobytes() != host.view(numpy.uint8).tobytes():
            raise ArrayError(f"a {name} array holds bytes that are not {name} values")
    array = jax.device_put(host)
    if not impl:
        return array
    try:
        return jax.random.wrap_key_data(array, impl=impl)
    except (TypeError, ValueError) as exc:
        problem = show(str(exc), 120)
        raise ArrayError(f"key data of shape {shape} is not a {impl} key array ({problem})") from None
