"""``RNGState``: the random streams of a run (Python, numpy, torch, named generators) as plain data.

Frameworks save random states as pickles (torch tensors, numpy arrays), so they cannot be loaded
without trust, and they save rank 0's only. Here every stream is ints, tuples and bytes: it goes
through the data codec without pickle and through ``torch.load(weights_only=True)``, and the object
is per rank, so each rank of a distributed run gets its own streams back.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .._core import stateful
from .._support import escape, show, warn_user
from ..errors import CallstateWarning, InvalidStateError

# A library's global stream is saved only when the library is imported already: a program that
# never imported numpy never drew from numpy's stream, and importing it to save that stream would
# cost the import (half a second for torch) for nothing.
_LIBRARIES = ("numpy", "torch")

_STREAMS = frozenset({"python", "numpy", "torch", "cuda", "mps", "generators", "skipped"})


class _Keyed:
    """The key: ``RNGState``, or ``RNGState{'generators': (names...)}`` with named generators."""

    _names: tuple[str, ...]

    @property
    def state_key(self) -> str:
        if not self._names:
            return "RNGState"
        return f"RNGState{ {'generators': self._names}!r}"


def _array_to_plain(value: Any) -> Any:
    """Return a numpy bit generator's state with every array as ``("ndarray", dtype, shape, bytes)``."""
    if isinstance(value, Mapping):
        return {k: _array_to_plain(v) for k, v in value.items()}
    if type(value).__name__ == "ndarray":
        little = value.astype(value.dtype.newbyteorder("<"), copy=False)
        return ("ndarray", little.dtype.str, tuple(int(n) for n in value.shape), little.tobytes())
    if hasattr(value, "item") and not isinstance(value, int | float):  # a numpy scalar
        return value.item()
    return value


def _plain_to_array(value: Any) -> Any:
    """Undo ``_array_to_plain`` (numpy is imported: a numpy state is being restored)."""
    import numpy as np

    if isinstance(value, Mapping):
        return {k: _plain_to_array(v) for k, v in value.items()}
    if isinstance(value, tuple | list) and len(value) == 4 and value[0] == "ndarray":
        _, dtype, shape, data = value
        if not isinstance(dtype, str) or not isinstance(data, bytes | bytearray):
            raise TypeError("an array is (\"ndarray\", dtype, shape, bytes)")
        return np.frombuffer(bytes(data), dtype=np.dtype(dtype)).reshape(tuple(shape)).copy()
    return value


def _tensor_bytes(tensor: Any) -> bytes:
    return bytes(tensor.cpu().numpy().tobytes()) if hasattr(tensor, "numpy") else bytes(tensor)


def _byte_tensor(data: Any) -> Any:
    import torch

    if not isinstance(data, bytes | bytearray):
        raise TypeError(f"a torch generator state is bytes, not {type(data).__qualname__}")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()


def _python_state(value: Any) -> tuple[Any, ...]:
    """Return Python's ``random`` state as ``random.setstate`` takes it (tuples, not lists)."""
    if not isinstance(value, tuple | list) or len(value) != 3 or not isinstance(value[1], tuple | list):
        raise TypeError("Python's state is (version, internal state, gauss)")
    if value[2] is not None and type(value[2]) is not float:
        # random.setstate keeps any object as the next gauss() sample: a str would fail only there.
        raise TypeError(f"Python's gauss sample is None or a float, not {type(value[2]).__qualname__}")
    return (value[0], tuple(value[1]), value[2])


@stateful(per_rank=True)
class RNGState(_Keyed):
    """The random streams of this process, saved and restored like any callback's state.

    Saves Python's ``random``, numpy's global (legacy) stream, torch's CPU generator, every CUDA
    device's generator and the MPS one (where present), and the named ``numpy.random.Generator`` or
    ``torch.Generator`` objects given in ``generators``. numpy and torch are saved only when the
    program imported them (one it never imported has never drawn from them); restoring a stream
    imports its library, and a library that is not installed is skipped and named in ``skipped``.

    Every stream is plain data (ints, tuples, bytes): the state loads with ``trusted=False``,
    through ``torch.load(weights_only=True)``, and inside Lightning and Hugging Face checkpoints.
    It is per rank: under ``callstate.distributed`` (and the adapters) each rank saves and gets
    back its own streams. Its key is ``RNGState``, or ``RNGState{'generators': ('data',)}`` with
    named generators (their names are its identity).

    Args:
        generators: ``{name: generator}`` of ``numpy.random.Generator`` and ``torch.Generator``
            objects to save besides the global streams.

    Attributes:
        restored: the streams the last restore set (``"python"``, ``"numpy"``, ``"torch"``,
            ``"cuda:0"``, ``"mps"``, ``"generator:data"``).
        skipped: the streams the last save or restore left out, each with why.

    Raises:
        TypeError: a generator is neither a numpy ``Generator`` nor a ``torch.Generator``, or a
            name is not a str.

    .. versionadded:: 0.1
    """

    def __init__(self, *, generators: Mapping[str, Any] | None = None) -> None:
        given = dict(generators or {})
        for name, g in given.items():
            if not isinstance(name, str):
                raise TypeError(f"RNGState(generators=...) names are strs, got {name!r}.")
            if _kind(g) is None:
                raise TypeError(
                    f"RNGState(generators={{{name!r}: ...}}) takes numpy.random.Generator or "
                    f"torch.Generator objects, not {type(g).__qualname__}."
                )
        self.generators = given
        self._names = tuple(sorted(given))
        self.restored: tuple[str, ...] = ()
        self.skipped: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"RNGState(generators={list(self._names)!r})" if self._names else "RNGState()"

    # -- saving --------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Return every stream as plain data; ``"skipped"`` names the libraries not imported."""
        state: dict[str, Any] = {"python": random.getstate()}
        # sys.modules[name] is None where an import of it is blocked: not imported either.
        skipped = [f"{name} (not imported)" for name in _LIBRARIES if sys.modules.get(name) is None]
        np, torch = sys.modules.get("numpy"), sys.modules.get("torch")
        if np is not None:
            state["numpy"] = _array_to_plain(np.random.get_state(legacy=False))
        if torch is not None:
            state["torch"] = _tensor_bytes(torch.get_rng_state())
            # Only an initialised CUDA has generators that drew: saving would initialise it.
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                state["cuda"] = [_tensor_bytes(t) for t in torch.cuda.get_rng_state_all()]
            if _mps_available(torch):
                state["mps"] = _tensor_bytes(torch.mps.get_rng_state())
        state["generators"] = {name: _generator_state(g) for name, g in sorted(self.generators.items())}
        state["skipped"] = skipped
        self.skipped = tuple(skipped)
        return state

    # -- restoring -----------------------------------------------------------------------------------

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Set every saved stream; every one is checked first, so a bad state changes none.

        Raises:
            InvalidStateError: the state is not ``RNGState``'s, or a stream does not fit its
                generator (named in the message); no stream was changed.
        """
        if not isinstance(state, Mapping):
            raise self._invalid(f"expects a mapping of streams, got {type(state).__qualname__}")
        unknown = [k for k in state if k not in _STREAMS]
        if unknown:
            raise self._invalid(f"got streams {show(unknown)} it does not know ({sorted(_STREAMS)} are)")
        steps: list[tuple[str, Callable[[], None]]] = []
        skipped: list[str] = []
        for name, prepare in (
            ("python", self._python),
            ("numpy", self._numpy),
            ("torch", self._torch),
            ("cuda", self._cuda),
            ("mps", self._mps),
            ("generators", self._named),
        ):
            if name in state:
                try:
                    steps.extend(prepare(state[name], skipped))
                except InvalidStateError:
                    raise
                except Exception as exc:
                    raise self._invalid(
                        f"cannot restore its {name!r} stream ({type(exc).__name__}: {escape(str(exc), 200)})"
                    ) from exc
        for _, step in steps:  # every stream was rehearsed on a scratch generator: none fails now
            step()
        self.restored = tuple(name for name, _ in steps)
        self.skipped = tuple(skipped)
        if skipped:
            warn_user(
                CallstateWarning(
                    f"RNGState restored {list(self.restored)} but not {skipped}: the run will not draw "
                    "the same numbers as the one that saved it. Install what is missing to restore all."
                )
            )

    def reshard(self, states_by_rank: Sequence[Any], world_size: int) -> list[Any]:
        """Give rank ``r`` the streams rank ``r`` saved; a rank that did not exist keeps its own (``{}``).

        Used with ``on_world_size_change="reshard"``; ``"broadcast"`` gives every rank rank 0's.
        """
        return [states_by_rank[r] if r < len(states_by_rank) else {} for r in range(world_size)]

    def _invalid(self, problem: str) -> InvalidStateError:
        return InvalidStateError(
            f"RNGState.load_state_dict {problem}; no stream was changed. Restore a state saved by "
            "RNGState.state_dict.",
            cls=type(self),
        )

    # Each returns the steps that set its streams, after setting them on scratch generators.

    def _python(self, value: Any, skipped: list[str]) -> list[tuple[str, Callable[[], None]]]:
        python = _python_state(value)
        random.Random().setstate(python)
        return [("python", lambda: random.setstate(python))]

    def _numpy(self, value: Any, skipped: list[str]) -> list[tuple[str, Callable[[], None]]]:
        np = _library("numpy", skipped)
        if np is None:
            return []
        numpy_state = _plain_to_array(value)
        scratch = np.random.RandomState()
        scratch.set_state(numpy_state)
        _check_position(scratch.get_state(legacy=False))
        return [("numpy", lambda: np.random.set_state(numpy_state))]

    def _torch(self, value: Any, skipped: list[str]) -> list[tuple[str, Callable[[], None]]]:
        torch = _library("torch", skipped)
        if torch is None:
            return []
        tensor = _byte_tensor(value)
        torch.Generator().set_state(tensor)
        return [("torch", lambda: torch.set_rng_state(tensor))]

    def _cuda(self, value: Any, skipped: list[str]) -> list[tuple[str, Callable[[], None]]]:
        torch = _library("torch", skipped)
        if torch is None:
            return []
        if not isinstance(value, list | tuple):
            raise TypeError("the CUDA streams are a list of bytes, one per device")
        tensors = [_byte_tensor(v) for v in value]
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count < len(tensors):
            skipped.extend(f"cuda:{i} (no such device here)" for i in range(count, len(tensors)))
        steps: list[tuple[str, Callable[[], None]]] = []
        for i, t in enumerate(tensors[:count]):
            steps.append((f"cuda:{i}", _cuda_setter(torch, t, i)))
        return steps

    def _mps(self, value: Any, skipped: list[str]) -> list[tuple[str, Callable[[], None]]]:
        torch = _library("torch", skipped)
        if torch is None:
            return []
        tensor = _byte_tensor(value)
        if not _mps_available(torch):
            skipped.append("mps (no MPS device here)")
            return []
        return [("mps", lambda: torch.mps.set_rng_state(tensor))]

    def _named(self, value: Any, skipped: list[str]) -> list[tuple[str, Callable[[], None]]]:
        if not isinstance(value, Mapping):
            raise TypeError("the named generators are a mapping {name: state}")
        absent = sorted(set(self.generators) - set(value), key=str)
        extra = sorted(set(value) - set(self.generators), key=str)
        if absent or extra:
            raise self._invalid(
                f"holds generators {show(sorted(value, key=str))} but this RNGState has "
                f"{list(self._names)}: give the same generators= as the run that saved it"
            )
        steps: list[tuple[str, Callable[[], None]]] = []
        for name, g in sorted(self.generators.items()):
            steps.append((f"generator:{name}", _generator_setter(name, g, value[name])))
        return steps


def _library(name: str, skipped: list[str]) -> Any:
    """Import ``name`` to restore its stream, or record it as skipped when it is not installed."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        skipped.append(f"{name} (not installed)")
        return None


def _cuda_setter(torch: Any, tensor: Any, device: int) -> Callable[[], None]:
    return lambda: torch.cuda.set_rng_state(tensor, device)


def _mps_available(torch: Any) -> bool:
    backend = getattr(getattr(torch, "backends", None), "mps", None)
    return bool(backend is not None and backend.is_available() and hasattr(torch, "mps"))


def _kind(g: Any) -> str | None:
    """Return ``"torch"`` or ``"numpy"`` for a generator of either library (imported already), else None."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(g, torch.Generator):
        return "torch"
    np = sys.modules.get("numpy")
    if np is not None and isinstance(g, np.random.Generator):
        return "numpy"
    return None


def _check_position(state: Any) -> None:
    """Refuse a Mersenne Twister state (as numpy reads it back) whose position is outside its key.

    numpy takes any position and reads the key at it on the next draw: a crafted position reads
    outside the array and crashes the process (numpy 2.4: a segfault on the first draw).
    """
    if isinstance(state, Mapping) and state.get("bit_generator") == "MT19937":
        inner = state.get("state")
        pos = inner.get("pos") if isinstance(inner, Mapping) else None
        key = inner.get("key") if isinstance(inner, Mapping) else None
        if not isinstance(pos, int) or key is None or not 0 <= pos <= len(key):
            raise ValueError(f"a Mersenne Twister position of {show(pos)}, outside its key of 0 to 624")


def _generator_state(g: Any) -> dict[str, Any]:
    if _kind(g) == "torch":
        return {"kind": "torch", "state": _tensor_bytes(g.get_state())}
    return {"kind": "numpy", "state": _array_to_plain(g.bit_generator.state)}


def _generator_setter(name: str, g: Any, saved: Any) -> Callable[[], None]:
    """Check ``saved`` on a scratch generator like ``g``; return what sets it on ``g``."""
    if not isinstance(saved, Mapping) or saved.get("kind") != _kind(g):
        raise TypeError(f"generator {name!r} was saved as another kind than {type(g).__qualname__}")
    if saved["kind"] == "torch":
        import torch

        tensor = _byte_tensor(saved["state"])
        torch.Generator(device=g.device).set_state(tensor)
        return lambda: g.set_state(tensor)
    state = _plain_to_array(saved["state"])
    scratch = type(g.bit_generator)()
    scratch.state = state
    _check_position(scratch.state)

    def put() -> None:
        g.bit_generator.state = state

    return put
