"""Copies of states: private copies of incoming states, and the snapshot a rollback puts back."""

from __future__ import annotations

import copy
import io
import os
import pickle
import sys
from collections.abc import Iterable, Sequence
from typing import IO, TYPE_CHECKING, Any, cast

from .._encoding import new_buffer, reduce_tensor
from .._support import show, warn_user
from ..errors import CallstateWarning, RestoreError
from ._spec import rebinds_only

if TYPE_CHECKING:
    import mmap

    Buffer = bytearray | mmap.mmap


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


# Buffers at least this large (arrays, tensors) are copied into memory of their own (or spilled to a
# temporary file), not pickled in band: one copy of their bytes, decoded only on a rollback.
_LARGE = 1 << 20

ROLLBACK_MEMORY_VARIABLE = "CALLSTATE_ROLLBACK_MEMORY"
"""Environment variable: the most bytes of large buffers a rollback copy keeps in memory (0: spill all)."""

# The margin the rollback copy leaves free: an eighth of the machine's memory, and at least 512 MiB,
# for what the callbacks' load_state_dict and the rest of the process allocate meanwhile.
_MARGIN_SHARE, _MARGIN_MIN = 8, 512 << 20


def _meminfo() -> tuple[int, int] | None:
    """Return (MemAvailable, MemTotal) in bytes from /proc/meminfo, or None where there is none."""
    try:
        with open("/proc/meminfo", "rb") as f:
            fields = dict(line.split(b":", 1) for line in f if b":" in line)
        return int(fields[b"MemAvailable"].split()[0]) << 10, int(fields[b"MemTotal"].split()[0]) << 10
    except (OSError, KeyError, ValueError, IndexError):
        return None


def _sysconf() -> tuple[int, int] | None:
    """Return (free, total) physical memory in bytes from sysconf, or None where it does not tell."""
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page
    except (AttributeError, ValueError, OSError):
        return None


def rollback_memory() -> int:
    """Return how many bytes of large buffers a rollback copy may keep in memory, now.

    ``CALLSTATE_ROLLBACK_MEMORY`` (a number of bytes) if set; else the memory available
    (``MemAvailable`` of /proc/meminfo, or sysconf's free pages) less a margin of an eighth of the
    machine's memory, at least 512 MiB; 0 (spill everything) where neither can be read.
    """
    given = os.environ.get(ROLLBACK_MEMORY_VARIABLE)
    if given is not None:
        try:
            limit = int(given)
            if limit < 0:
                raise ValueError
            return limit
        except ValueError:
            warn_user(
                CallstateWarning(
                    f"{ROLLBACK_MEMORY_VARIABLE}={show(given)} is not a number of bytes (an integer, 0 "
                    "or more); the available memory decides where the rollback copy goes. Set it to "
                    "a number of bytes, or unset it."
                )
            )
    memory = _meminfo() or _sysconf()
    if memory is None:
        return 0
    available, total = memory
    return max(0, available - max(total // _MARGIN_SHARE, _MARGIN_MIN))


class _Held:
    """The large buffers of a rollback copy: in memory while they fit in ``budget``, else in a temp file.

    All or nothing: the buffer that would pass the budget moves those already copied to the file.
    """

    def __init__(self, budget: int | None) -> None:
        self.budget = budget  # None: rollback_memory(), read on the first large buffer only
        self.memory: list[Buffer] = []
        self.sizes: list[int] = []
        self.total = 0
        self.file: IO[bytes] | None = None

    def keep(self, buffer: pickle.PickleBuffer) -> bool:
        """Hold a large contiguous buffer (return False: out of band); return True for any other."""
        try:
            raw = buffer.raw()
        except BufferError:
            return True  # not contiguous: pickled in band
        if raw.nbytes < _LARGE:
            return True
        self.sizes.append(raw.nbytes)
        self.total += raw.nbytes
        if self.budget is None:
            self.budget = rollback_memory()
        if self.file is None and self.total > self.budget:
            import tempfile

            self.file = tempfile.TemporaryFile()  # noqa: SIM115 (closed by the snapshot, or close())
            for held in self.memory:
                self.file.write(held)
            self.memory = []
        if self.file is not None:
            self.file.write(raw)
        else:
            copy_ = new_buffer(raw.nbytes)
            memoryview(copy_)[:] = raw
            self.memory.append(copy_)
        return False

    def close(self) -> None:
        """Drop what is held (on a failed snapshot)."""
        if self.file is not None:
            self.file.close()
        self.memory = []


class _HeldSnapshot(Sequence[Any]):
    """Previous states pickled with their large buffers held apart (``_Held``); decoded only on rollback."""

    def __init__(self, data: bytes, held: _Held, count: int) -> None:
        self._data, self._held, self._count = data, held, count
        self._states: list[Any] | None = None
        self.where = "memory" if held.file is None else "file"

    def _buffers(self) -> list[Buffer]:
        spill = self._held.file
        if spill is None:
            return self._held.memory
        spill.seek(0)
        buffers = []
        for size in self._held.sizes:
            buffer = new_buffer(size)
            if cast("io.BufferedRandom", spill).readinto(buffer) != size:
                raise OSError("the temporary file holding the previous states was truncated")
            buffers.append(buffer)
        return buffers

    def _decoded(self) -> list[Any]:
        if self._states is None:
            self._states = pickle.loads(self._data, buffers=self._buffers())
            self._held.close()
        return self._states

    def __getitem__(self, index: Any) -> Any:
        return self._decoded()[index]

    def __del__(self) -> None:
        self._held.close()

    def __len__(self) -> int:
        return self._count


class _Pickler(pickle.Pickler):
    """A pickler that notes whether it met anything but plain data (see ``_pickled_snapshot``)."""

    plain = True

    def reducer_override(self, obj: Any) -> Any:
        # The C pickler calls this for every object but None, bools and exact ints, floats, str,
        # bytes, bytearray, dicts, sets, frozensets, lists and tuples: one call means "not plain".
        self.plain = False
        return NotImplemented


def _pickled_snapshot(states: list[Any], budget: int | None = None) -> Sequence[Any]:
    """Return private copies of ``states``: a list, or a ``_HeldSnapshot`` that decodes them on a rollback.

    Large buffers stay in memory up to ``budget`` bytes (default: ``rollback_memory()``), else they
    all go to a temporary file.
    """
    out = io.BytesIO()
    held = _Held(budget)
    pickler = _Pickler(out, protocol=5, buffer_callback=held.keep)
    torch = sys.modules.get("torch")
    if torch is not None:
        pickler.dispatch_table = {torch.Tensor: _reduce_tensor, torch.nn.Parameter: _reduce_tensor}
    try:
        pickler.dump(states)
        if not held.sizes and not pickler.plain:
            # Other objects are unpickled now: one whose pickle does not load back (a __reduce__
            # that fails on the way in) falls back to deepcopy here, not at the rollback.
            return pickle.loads(out.getbuffer())  # type: ignore[no-any-return]
        # Plain data always loads back from its pickle, so it is decoded only if a rollback needs
        # it: a load no longer unpickles the previous states, which took as long as pickle's whole
        # load (callstate.load of one callback against pickle through a file, benchmarks/codec.py's
        # file_ratios: 100,000 (int, float) tuples 3.25x -> 1.68x; 1,000,000 floats 1.89x -> 1.00x).
        if held.file is not None:
            held.file.flush()
    except BaseException:
        held.close()
        raise
    return _HeldSnapshot(out.getvalue(), held, len(states))


def kept_in(previous: Sequence[Any]) -> str:
    """Return where a snapshot holds its copies: ``"memory"``, ``"file"`` or ``"none"`` (no copy)."""
    if isinstance(previous, _HeldSnapshot):
        return previous.where
    if isinstance(previous, _Partly):
        return previous.kept_in()
    return "memory" if len(previous) else "none"


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

    def kept_in(self) -> str:
        """Where the copies are: see ``kept_in``."""
        return kept_in(self._copies)


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
