"""The two decoders of the data codec side by side: what each gives for the same bytes, compared.

Shared by tests/test_cdecode*.py and fuzz/fuzz_codec_diff.py. ``outcome`` decodes with one decoder
and describes the result so that two descriptions are equal exactly when the decoders agree: the
value (its pickle, which holds types, float bits and which objects are shared), or the error's class
and message; and, either way, what is left of the allowance.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from typing import Any

from exact import same

from callstate._encoding import Allowance
from callstate._encoding._decoder import decode as reference

try:  # collected alike where it is not built (the unpacked sdist); each comparison then fails, saying so
    from callstate._encoding import _cdecode
except ImportError:
    _cdecode = None


def _compiled(*args: Any, **kwargs: Any) -> Any:
    if _cdecode is None:
        raise AssertionError("the compiled decoder is not built: run `make test` or `python setup.py build_ext --inplace`")
    return _cdecode.decode(*args, **kwargs)


DECODERS: dict[str, Callable[..., Any]] = {"python": reference, "c": _compiled}


def _describe(value: Any) -> Any:
    try:
        return ("value", pickle.dumps(value, protocol=5))
    except Exception:  # a value pickle cannot write: its repr then
        return ("value", type(value).__name__, repr(value))


def outcome(name: str, stream: bytes, buffers: Sequence[bytes], *, bound_memory: bool = True) -> tuple[Any, ...]:
    """Return what decoding ``stream`` with the decoder ``name`` gives, comparably, and the value.

    The hashing left is compared only while some is left: once a read has overspent it, it is
    refused, and the C side counts costs past 2**61 as 2**61.
    """
    allowance = Allowance(len(stream) + sum(len(b) for b in buffers), bound_memory=bound_memory)
    value = None
    try:
        value = DECODERS[name](stream, [bytearray(b) for b in buffers], allowance=allowance)
    except RecursionError:  # not comparable by message (the C side uses less of the stack)
        result: Any = ("error", "RecursionError")
    except Exception as exc:  # every error is compared, by class and message
        result = ("error", type(exc).__name__, str(exc))
    else:
        result = _describe(value)
    return result, allowance.memory, max(allowance.hashing, -1), value


def disagreement(stream: bytes, buffers: Sequence[bytes] = (), *, bound_memory: bool = True) -> str | None:
    """Return how the two decoders disagree on ``stream``, or None if they agree."""
    python = outcome("python", stream, buffers, bound_memory=bound_memory)
    c = outcome("c", stream, buffers, bound_memory=bound_memory)
    if python[:3] == c[:3]:
        return None
    if python[1:3] == c[1:3] and python[0][0] == c[0][0] == "value" and same(python[3], c[3]):
        return None  # tensors pickle with the ids of their storages: compared exactly instead
    return f"python: {str(python[:3])[:600]}\nc:      {str(c[:3])[:600]}"
