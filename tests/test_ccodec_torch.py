"""Torch values through both implementations of the data codec: the same bytes from the compiled
encoder as from the reference, and equal values from both decoders (tags P, Z, V, W)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from exact import same
from hypothesis import given, settings
from hypothesis import strategies as st

from callstate._encoding import _codec, _decoder, _encoder

try:  # collected alike where it is not built; each test then fails, saying so
    from callstate._encoding import _cdecode, _cencode
except ImportError:
    _cdecode = _cencode = None

DTYPES = [
    torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
    torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128,
]


def agree(value: Any) -> Any:
    """Assert both encoders write the same parts for ``value`` and both decoders read them to equal
    values, equal to ``value``; return the decoded value."""
    if _cencode is None or _cdecode is None:
        pytest.fail("the compiled codec is not built: run `make test` or `python setup.py build_ext --inplace`")
    python = tuple(bytes(p) for p in _encoder.Encoder().encode(value))
    assert tuple(bytes(p) for p in _cencode.Encoder().encode(value)) == python
    stream, *buffers = python
    reads = [decode(stream, [bytearray(b) for b in buffers]) for decode in (_decoder.decode, _cdecode.decode)]
    assert same(reads[0], reads[1]), reads
    assert same(value, reads[0]), (value, reads[0])
    return reads[0]


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    """A tensor of any written dtype and small shape: contiguous or a view, parameter or not."""
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(st.lists(st.integers(0, 4), max_size=3))
    n = 1
    for d in shape:
        n *= d
    raw = draw(st.binary(min_size=n * 16, max_size=n * 16))
    base = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
    t = base[: n * torch.empty((), dtype=dtype).element_size()].view(dtype).reshape(shape).clone()
    if dtype.is_floating_point and draw(st.booleans()):
        t = torch.nan_to_num(t)  # a finite start, so that a parameter's grad flag is all that differs
        return torch.nn.Parameter(t) if draw(st.booleans()) else t.requires_grad_(True)
    if len(shape) >= 2 and draw(st.booleans()):
        return t.transpose(0, 1)  # not contiguous: written as its contiguous copy
    return t


torch_values = st.one_of(
    tensors(),
    st.lists(st.integers(0, 5), max_size=4).map(torch.Size),
    st.sampled_from([torch.device("cpu"), torch.device("meta")]),
    st.sampled_from(DTYPES),
)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(max_size=3), st.lists(torch_values, max_size=3), max_size=3))
def test_torch_values_encode_to_the_same_bytes_and_decode_alike(state: dict[str, Any]) -> None:
    """Tensors of every dtype (views, parameters, grad flags), sizes, devices and dtypes: the same
    bytes from both encoders, equal values from both decoders."""
    agree(state)


def test_shared_and_out_of_band_tensors_agree() -> None:
    """A tensor met twice is one memo slot in both, and a large one goes out of band in both."""
    small = torch.arange(6.0).reshape(2, 3)
    big = torch.arange(_codec.OUT_OF_BAND_MIN // 4 + 1, dtype=torch.float32)
    out = agree({"a": [small, small, big], "b": big, "param": torch.nn.Parameter(small.clone())})
    assert out["a"][0] is out["a"][1] and out["a"][2] is out["b"]
    assert len(_encoder.Encoder().encode(big)) == 2  # the stream, then big's buffer
