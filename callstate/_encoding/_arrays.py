"""numpy arrays and torch tensors as raw bytes plus a checked description, and back.

The data codec writes an array as its dtype's name, its shape and its bytes; this module turns an
array into those three and rebuilds one from them, only when dtype x shape matches the bytes exactly.
numpy and torch are never imported here: an array to write means its library is imported already,
and a payload that holds arrays imports the library it needs when it is decoded.
"""

from __future__ import annotations

import re
import threading
from typing import TYPE_CHECKING, Any

from .._support import require, show

if TYPE_CHECKING:
    from ._parts import Buffer

# A numpy type string as ``dtype.str`` spells it: byte order, kind, item size, datetime unit.
_NUMPY_DTYPE = re.compile(r"[<>|][biufcmMSU](0|[1-9][0-9]{0,8})(\[[0-9]{0,4}[a-zA-Z]{1,3}\])?")
_NUMPY_KINDS = frozenset("biufcmMSU")
# torch dtypes that are not plain numbers laid out in memory, one per item: quantized ones carry
# scales, and bits*, int1-int7, uint1-uint7 and float4 pack several items per byte (torch itself
# cannot turn them into Python values).
_TORCH_REFUSED = re.compile(r"q(u?int\d+|uint\d+x\d+)|bits.*|u?int[1-7]|float4.*")
_TORCH_DTYPE_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
# An empty array of shape (2**40, 0) is no bytes, but its tolist() would build 2**40 lists.
MAX_EMPTY_EXTENT = 1 << 24
_torch_dtypes: dict[str, Any] = {}
_TORCH_DEVICE = re.compile(r"[a-z][a-z_]{0,15}(:[0-9]{1,3})?")
_MAX_DEVICE_INDEX = 127  # torch keeps a device index in an int8: a larger one would wrap
MAX_DIMS = 64
# Set by a background save while it captures states (see callstate._io._async): device tensors then go
# to pinned host memory, and the raw views that are already private copies are listed, so the
# capture does not copy them a second time.
CAPTURE = threading.local()


def _private(raw: memoryview) -> memoryview:
    """Note that ``raw`` is a copy no caller holds, if a capture is running; return it."""
    private = getattr(CAPTURE, "private", None)
    if private is not None:
        private.append(raw)
    return raw


class ArrayError(ValueError):
    """An array or tensor cannot be written by the data codec, or its description is invalid."""


def _numpy() -> Any:
    return require("numpy", extra="numpy", needed_for="a state that holds a numpy array")


def _torch() -> Any:
    return require("torch", extra="torch", needed_for="a state that holds a torch tensor")


# -- numpy ----------------------------------------------------------------------------------------


def numpy_dtype_name(dtype: Any) -> str:
    """Return the type string of a plain numpy dtype, or raise ArrayError for any other dtype."""
    if (
        dtype.fields is not None
        or dtype.subdtype is not None
        or dtype.hasobject
        or dtype.kind not in _NUMPY_KINDS
        or (dtype.itemsize == 0 and dtype.kind not in "SU")  # np.str_("") is '<U0'
        or dtype.metadata
        or _zero_unit(dtype)
    ):
        raise ArrayError(f"a numpy dtype {dtype.str} that is not a plain number, string or time type")
    name: str = dtype.str
    return name


def _zero_unit(dtype: Any) -> bool:
    """Whether ``dtype`` is a datetime or timedelta type whose unit is multiplied by 0 (``<m8[0Y]``).

    numpy makes such a dtype from its string, but not an array of it that can be copied, compared
    or printed (every use divides by the multiplier): ``OverflowError`` far from the read.
    """
    return dtype.kind in "mM" and _numpy().datetime_data(dtype)[1] == 0


def numpy_dtype(name: str) -> Any:
    """Return the numpy dtype named by ``name`` (a type string); refuse anything not plain."""
    if not _NUMPY_DTYPE.fullmatch(name):
        raise ArrayError(f"{show(name, 60)} is not a plain numpy type string")
    np = _numpy()
    dtype = np.dtype(name)
    if (
        dtype.str != name
        or dtype.kind not in _NUMPY_KINDS
        or dtype.hasobject
        or dtype.fields is not None
        or (dtype.itemsize == 0 and dtype.kind not in "SU")
    ):
        raise ArrayError(f"{name!r} is not a plain numpy type string")
    if _zero_unit(dtype):
        raise ArrayError(f"{name!r}: a time unit multiplied by 0, which numpy cannot compute with")
    return dtype


def numpy_parts(array: Any) -> tuple[str, tuple[int, ...], bool, memoryview]:
    """Return ``(dtype name, shape, fortran, raw bytes)`` of an ndarray, without copying when contiguous."""
    np = _numpy()
    name = numpy_dtype_name(array.dtype)
    fortran = bool(array.flags.f_contiguous and not array.flags.c_contiguous and array.ndim > 1)
    data = array.T if fortran else array
    if not data.flags.c_contiguous:
        data = data.copy(order="C")  # not ascontiguousarray: it makes a 0-d array 1-d
        return name, tuple(data.shape), fortran, _private(_raw(data.reshape(-1).view(np.uint8)))
    return name, tuple(data.shape), fortran, _raw(data.reshape(-1).view(np.uint8))


def _raw(flat_bytes: Any) -> memoryview:
    return memoryview(flat_bytes).cast("B")


def _count(shape: tuple[int, ...]) -> int:
    if len(shape) > MAX_DIMS:
        raise ArrayError(f"{len(shape)} dimensions (at most {MAX_DIMS})")
    n = extent = 1
    for dim in shape:
        n *= dim
        extent *= max(dim, 1)
    if n == 0 and extent > MAX_EMPTY_EXTENT:
        raise ArrayError(f"an empty array of shape {shape}, whose other dimensions hold {extent} items")
    return n


def _check_size(what: str, itemsize: int, shape: tuple[int, ...], nbytes: int) -> None:
    expected = _count(shape) * itemsize
    if expected != nbytes:
        raise ArrayError(
            f"{what} of shape {shape} needs {expected} bytes, and {nbytes} are stored"
        )


def _check_code_points(dtype: Any, buffer: bytes | Buffer) -> None:
    # numpy stores str items as UCS-4; one beyond U+10FFFF makes every later use raise SystemError.
    if buffer and _numpy().frombuffer(buffer, dtype=dtype.str[0] + "u4").max() > 0x10FFFF:
        raise ArrayError("a str array holds a code point beyond U+10FFFF")


_BOOL_CHUNK = 1 << 20


def _check_bools(buffer: Buffer) -> None:
    # Any byte but 0 and 1 in a bool array is a value no bool can have. Checked a bounded piece at a
    # time: a mapped buffer has no translate, and a copy of it all would double the memory.
    for start in range(0, len(buffer), _BOOL_CHUNK):
        if bytes(buffer[start : start + _BOOL_CHUNK]).translate(None, b"\x00\x01"):
            raise ArrayError("a bool array holds bytes other than 0 and 1")


def numpy_array(name: str, shape: tuple[int, ...], fortran: bool, buffer: Buffer) -> Any:
    """Rebuild an ndarray that owns ``buffer`` (a private copy of the stored bytes)."""
    np = _numpy()
    dtype = numpy_dtype(name)
    if dtype.itemsize == 0:
        raise ArrayError(f"a numpy array of zero-sized items ({name})")
    _check_size("a numpy array", dtype.itemsize, shape, len(buffer))
    if dtype.kind == "b":
        _check_bools(buffer)
    elif dtype.kind == "U":
        _check_code_points(dtype, buffer)
    array = np.frombuffer(buffer, dtype=dtype).reshape(shape) if buffer else np.empty(shape, dtype=dtype)
    return array.T if fortran else array


def numpy_scalar(name: str, raw: bytes) -> Any:
    """Rebuild a numpy scalar (``np.float32(1.5)``, ...) from its bytes."""
    np = _numpy()
    dtype = numpy_dtype(name)
    _check_size("a numpy scalar", dtype.itemsize, (), len(raw))
    if dtype.kind == "b":
        _check_bools(bytearray(raw))
    elif dtype.kind == "U":
        _check_code_points(dtype, raw)
    if dtype.itemsize == 0:
        return dtype.type()  # np.str_("") or np.bytes_(b"")
    return np.frombuffer(raw, dtype=dtype)[0]


# -- torch ----------------------------------------------------------------------------------------


def _plain_torch_dtypes() -> dict[str, Any]:
    """Return name -> dtype for torch's plain dtypes, read from the module's own namespace.

    A name from a file is looked up here, never with getattr(torch, name): that can import
    submodules or call deprecated functions.
    """
    if not _torch_dtypes:
        torch = _torch()
        for value in list(vars(torch).values()):
            if isinstance(value, torch.dtype):
                name = str(value).removeprefix("torch.")
                if _TORCH_DTYPE_NAME.fullmatch(name) and not _TORCH_REFUSED.fullmatch(name):
                    _torch_dtypes[name] = value
    return _torch_dtypes


def torch_dtype_name(dtype: Any) -> str:
    """Return the name of a plain torch dtype (``"float32"``); refuse quantized and packed ones."""
    name = str(dtype).removeprefix("torch.")
    if _plain_torch_dtypes().get(name) is not dtype:
        raise ArrayError(f"a tensor of dtype {dtype}, which is not a plain number type")
    return name


def torch_dtype(name: str) -> Any:
    """Return the plain torch dtype called ``name``."""
    dtype = _plain_torch_dtypes().get(name)
    if dtype is None:
        raise ArrayError(f"{show(name, 60)} is not a torch dtype callstate decodes")
    return dtype


def torch_parts(tensor: Any) -> tuple[str, tuple[int, ...], bool, bool, memoryview]:
    """Return ``(dtype name, shape, requires_grad, is_parameter, raw bytes)`` of a dense CPU copy."""
    torch = _torch()
    if type(tensor) not in (torch.Tensor, torch.nn.Parameter):
        raise ArrayError(f"a torch.Tensor subclass, {type(tensor).__qualname__}")
    if tensor.layout is not torch.strided or tensor.is_quantized or tensor.is_nested:
        raise ArrayError(f"a {tensor.layout} tensor (not dense: convert it with .to_dense())")
    name = torch_dtype_name(tensor.dtype)
    data = tensor.detach()
    on_device = data.device.type != "cpu"
    if on_device:
        data = _to_host(torch, data)
    contiguous = data.contiguous()
    copied = on_device or contiguous is not data
    shape = tuple(contiguous.shape)
    if contiguous.numel() == 0:
        raw = memoryview(b"")
    else:
        raw = _raw(contiguous.reshape(-1).view(torch.uint8).numpy())
        if copied:
            _private(raw)
    return name, shape, bool(tensor.requires_grad), isinstance(tensor, torch.nn.Parameter), raw


def _to_host(torch: Any, data: Any) -> Any:
    """Return a CPU copy of a device tensor; in pinned memory while a background save captures it."""
    if getattr(CAPTURE, "private", None) is None or data.device.type != "cuda":
        return data.cpu()
    # Pinned memory takes the device's copy at full speed (no staging through pageable memory).
    host = torch.empty(data.shape, dtype=data.dtype, device="cpu", pin_memory=True)
    host.copy_(data)
    return host


def torch_tensor(
    name: str, shape: tuple[int, ...], requires_grad: bool, is_parameter: bool, buffer: Buffer
) -> Any:
    """Rebuild a CPU tensor that owns ``buffer``."""
    torch = _torch()
    dtype = torch_dtype(name)
    _check_size("a torch tensor", dtype.itemsize, shape, len(buffer))
    if dtype is torch.bool:
        _check_bools(buffer)
    if not buffer:
        tensor = torch.empty(shape, dtype=dtype)
    else:
        tensor = torch.frombuffer(buffer, dtype=torch.uint8).view(dtype).reshape(shape)
    if is_parameter:
        return torch.nn.Parameter(tensor, requires_grad=requires_grad)
    if requires_grad:
        tensor.requires_grad_(True)
    return tensor


def torch_device(text: str) -> Any:
    """Return ``torch.device(text)`` for a device string such as ``"cpu"`` or ``"cuda:1"``."""
    if not _TORCH_DEVICE.fullmatch(text) or int(text.partition(":")[2] or 0) > _MAX_DEVICE_INDEX:
        raise ArrayError(f"{show(text, 60)} is not a torch device")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some device types are deprecated: a file is no place to say so
        return _torch().device(text)


def torch_size(dims: list[int]) -> Any:
    """Return ``torch.Size(dims)``."""
    return _torch().Size(dims)
