"""Copies of states: private copies of incoming states, and the snapshot a rollback puts back."""

from __future__ import annotations

import copy
import io
import pickle
import sys
from collections.abc import Iterable, Sequence
from typing import IO, Any, cast

from .._encoding import reduce_tensor
from ..errors import RestoreError
from ._spec import rebinds_only


def describe(obj: object) -> str:
    """Name ``obj`` by its class, for messages."""
    return type(obj).__qualname__


# Exact types (subclasses may add mutable attributes) whose instances cannot change.
_ATOMS = frozenset({str, bytes, int, float, complex, bool, type(None), range})


def _immutable(value: Any, depth: int = 0) -> bool:
    """Return whether ``value`` can be handed out without a copy: nothing in it can change."""
    kind = type(value)
    if kind in _ATOMS:
        return True
    if kind in (tuple, frozenset) and depth < 8:
        return all(_immutable(v, depth + 1) for v in value)
    return False


_CONTAINERS = (dict, list, tuple, set, frozenset)


def _parts(value: Any) -> Iterable[Any] | None:
    """Return what a plain container holds, or None for anything else."""
    if type(value) is dict:
        return [*value.keys(), *value.values()]
    if type(value) in _CONTAINERS:
        return cast("Iterable[Any]", value)
    return None


def _storage(value: Any) -> int | None:
    """Return the address of a tensor's storage (views of one tensor share it), else None."""
    if type(value).__module__ != "torch" or type(value).__name__ not in ("Tensor", "Parameter"):
        return None
    return int(value.untyped_storage().data_ptr()) or id(value)


def share_objects(states: Iterable[Any]) -> bool:
    """Return whether two of ``states`` may hold one mutable object (then each needs a copy of its own).

    Walks plain containers and tensors, without copying anything; any other object (whose insides
    this cannot see) counts as shared. A ``torch.load`` gives two states one object when they were
    one object, or held one, when saved (pickle's memo).
    """
    owners: dict[object, int] = {}
    for index, state in enumerate(states):
        pending = [state]
        while pending:
            value = pending.pop()
            if type(value) in _ATOMS:
                continue
            parts = _parts(value)
            storage = _storage(value) if parts is None else None
            if parts is None and storage is None:
                return True
            mark: object = id(value) if parts is not None else ("storage", storage)
            if mark in owners:
                if owners[mark] != index:
                    return True
                continue  # held twice within this state (or a cycle): walked already
            owners[mark] = index
            if parts is not None:
                pending.extend(parts)
    return False


def own(state: Any) -> Any:
    """Return a copy of ``state`` that shares no mutable object with it (``state`` if immutable)."""
    if _immutable(state):
        return state
    try:
        return pickle.loads(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:
        return copy.deepcopy(state)


# Buffers at least this large (arrays, tensors) are kept in a temporary file rather than in memory
# while a restore runs: a rollback copy of a large state must not double its memory.
_SPILL_MIN = 1 << 20


class _SpilledSnapshot(Sequence[Any]):
    """Previous states pickled with their large buffers in a temporary file; decoded only on rollback."""

    def __init__(self, data: bytes, spill: IO[bytes], sizes: list[int], count: int) -> None:
        self._data, self._spill, self._sizes, self._count = data, spill, sizes, count
        self._states: list[Any] | None = None

    def _decoded(self) -> list[Any]:
        if self._states is None:
            self._spill.seek(0)
            buffers = []
            for size in self._sizes:
                buffer = bytearray(size)
                if cast("io.BufferedRandom", self._spill).readinto(buffer) != size:
                    raise OSError("the temporary file holding the previous states was truncated")
                buffers.append(buffer)
            self._states = pickle.loads(self._data, buffers=buffers)
            self._spill.close()
        return self._states

    def __getitem__(self, index: Any) -> Any:
        return self._decoded()[index]

    def __del__(self) -> None:
        self._spill.close()

    def __len__(self) -> int:
        return self._count


def _pickled_snapshot(states: list[Any]) -> Sequence[Any]:
    """Return private copies of ``states``: a list, or a spilled snapshot if they hold large buffers."""
    out = io.BytesIO()
    sizes: list[int] = []
    spill: list[IO[bytes]] = []

    def keep(buffer: pickle.PickleBuffer) -> bool:
        try:
            raw = buffer.raw()
        except BufferError:
            return True  # not contiguous: pickled in band
        if raw.nbytes < _SPILL_MIN:
            return True
        if not spill:
            import tempfile

            spill.append(tempfile.TemporaryFile())  # noqa: SIM115 (closed by _SpilledSnapshot)
        spill[0].write(raw)
        sizes.append(raw.nbytes)
        return False

    pickler = pickle.Pickler(out, protocol=5, buffer_callback=keep)
    torch = sys.modules.get("torch")
    if torch is not None:
        pickler.dispatch_table = {torch.Tensor: _reduce_tensor, torch.nn.Parameter: _reduce_tensor}
    try:
        pickler.dump(states)
        if not spill:
            return pickle.loads(out.getbuffer())  # type: ignore[no-any-return]
        spill[0].flush()
    except BaseException:
        if spill:
            spill[0].close()
        raise
    return _SpilledSnapshot(out.getvalue(), spill[0], sizes, len(states))


def _reduce_tensor(t: Any) -> Any:
    """Reduce a plain CPU tensor to one raw buffer (spilled if large); any other one as torch does."""
    torch = sys.modules["torch"]
    if (
        type(t) in (torch.Tensor, torch.nn.Parameter)
        and t.device.type == "cpu"
        and t.layout is torch.strided
        and t.grad_fn is None
        and not (t.is_quantized or t.is_conj() or t.is_neg())
        and t.is_contiguous()
    ):
        return reduce_tensor(t)
    return t.__reduce_ex__(pickle.HIGHEST_PROTOCOL)


def snapshot(keys: list[str], objs: list[Any]) -> Sequence[Any]:
    """Return the current states of ``objs``, to roll back to: private copies where a rollback needs them.

    An object whose state methods are callstate's generated ones (``@callstate.stateful(state=...)``)
    keeps its previous values through a restore (its ``load_state_dict`` only rebinds fields), so its
    state is kept as it is, with no copy: a large one costs neither a second copy nor a temp file.
    """
    states = []
    for key, obj in zip(keys, objs, strict=True):
        try:
            states.append(obj.state_dict())
        except Exception as exc:
            raise RestoreError(
                f"State key {key!r}: {describe(obj)}.state_dict raised {type(exc).__name__}: {exc} while "
                "its current state was kept for a rollback; nothing was restored. Fix the callback, or "
                "restore with atomic=False.",
                key=key,
            ) from exc
    copied = [i for i, obj in enumerate(objs) if not rebinds_only(obj)]
    if len(copied) == len(objs):
        return _copies(keys, states)
    copies = _copies([keys[i] for i in copied], [states[i] for i in copied]) if copied else []
    return _Partly(states, {i: n for n, i in enumerate(copied)}, copies)


class _Partly(Sequence[Any]):
    """Previous states: the copies of some (by position), the others as they were given."""

    def __init__(self, states: list[Any], copied: dict[int, int], copies: Sequence[Any]) -> None:
        self._states, self._copied, self._copies = states, copied, copies

    def __getitem__(self, index: Any) -> Any:
        n = self._copied.get(index)
        return self._states[index] if n is None else self._copies[n]

    def __len__(self) -> int:
        return len(self._states)


def _copies(keys: list[str], states: list[Any]) -> Sequence[Any]:
    """Return private copies of ``states``."""
    # One pickle for all is much faster than one deepcopy each; the copies only serve a rollback.
    try:
        return _pickled_snapshot(states)
    except Exception:
        pass
    copies = []
    for key, state in zip(keys, states, strict=True):
        try:
            copies.append(copy.deepcopy(state))
        except Exception as exc:
            raise RestoreError(
                f"State key {key!r}: the current state cannot be copied to roll back to "
                f"({type(exc).__name__}: {exc}); nothing was restored. Make its state_dict() copyable, "
                "or restore with atomic=False.",
                key=key,
            ) from exc
    return copies
