"""Pickling torch tensors as raw out-of-band buffers, so they are written and read without copies.

Imported only when torch is already imported: callstate never imports torch itself.
"""

from __future__ import annotations

import pickle
import sys
from typing import Any

from .._support import show


def _torch() -> Any:
    return sys.modules["torch"]


def reduce_tensor(t: Any) -> tuple[Any, tuple[Any, ...]]:
    """Return a pickle reduction of a dense tensor whose data is one out-of-band buffer."""
    torch = _torch()
    if t.layout is not torch.strided or t.is_quantized or t.is_nested:
        raise pickle.PicklingError(
            f"callstate saves dense tensors only, not a {t.layout} tensor; convert it with .to_dense() "
            "in state_dict()."
        )
    is_param = isinstance(t, torch.nn.Parameter)
    if type(t) not in (torch.Tensor, torch.nn.Parameter):
        raise pickle.PicklingError(
            f"callstate saves torch.Tensor and nn.Parameter, not the subclass {type(t).__qualname__}; "
            "return a plain tensor from state_dict()."
        )
    data = t.detach()
    if data.device.type != "cpu":
        data = data.cpu()
    data = data.contiguous()
    dtype = str(data.dtype).removeprefix("torch.")
    shape = tuple(data.shape)
    if data.numel() == 0:
        raw: Any = b""
    else:
        raw = pickle.PickleBuffer(data.reshape(-1).view(torch.uint8).numpy())
    return rebuild_tensor, (raw, dtype, shape, bool(t.requires_grad), is_param)


def rebuild_tensor(raw: Any, dtype: str, shape: tuple[int, ...], requires_grad: bool, is_param: bool) -> Any:
    """Rebuild a CPU tensor from its raw bytes (called by the unpickler)."""
    import torch  # a payload that holds tensors needs torch, like torch.load does

    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise pickle.UnpicklingError(f"unknown torch dtype {show(dtype, 60)}")
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise pickle.UnpicklingError(f"bad tensor shape {show(shape, 120)}")
    view = memoryview(raw)
    if view.nbytes == 0:
        t = torch.empty(shape, dtype=torch_dtype)
    else:
        if view.readonly:
            view = memoryview(bytearray(view))
        t = torch.frombuffer(view, dtype=torch.uint8).view(torch_dtype).reshape(shape)
    if is_param:
        return torch.nn.Parameter(t, requires_grad=bool(requires_grad))
    if requires_grad:
        t.requires_grad_(True)
    return t


rebuild_tensor.__module__ = "callstate._tensors"
