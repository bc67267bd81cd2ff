"""The orbax adapter: a callback registry as one item of an orbax checkpoint.

``Save(registry)`` and ``Restore(registry)`` are orbax ``CheckpointArgs``, registered with
``CallstateCheckpointHandler``, so a registry is one item of a ``CheckpointManager`` step beside
the model's state::

    mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(params), callbacks=callstate.orbax.Save(registry)))
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(params), callbacks=callstate.orbax.Restore(registry)))
    restored.callbacks                  # the RestoreReport

The handler is asynchronous: every state is captured (encoded, its arrays copied) when ``save`` is
called, and the file is written in orbax's background phase, into the step directory orbax then
commits by its own protocol (callstate writes no temp file of its own there). A restore is one
transaction: all callbacks or none, decoded by callstate's data codec (no pickle unless
``trusted=True``); a damaged or hostile item raises a ``CallstateError`` (in the chain of what
orbax raises) and changes no callback.

Several processes (``jax.process_count() > 1``): the primary process (index 0) writes the global
states and the manifest of the per-rank layout (see ``callstate.distributed``) into
``callbacks.callstate``; each process writes its per-rank states (``per_rank=True``) into
``callbacks.rank<i>.callstate`` under its ``jax.process_index()``. Every process reads the files
it needs from the (shared) step directory; a changed process count follows ``on_world_size_change``.

``checkpointable(registry)`` is the same for orbax's v1 API (``save_checkpointables``,
``load_checkpointables``).

Install with ``pip install 'callstate[orbax]'``.

.. versionadded:: 0.2
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any

from .errors import CorruptCheckpointError, MissingDependencyError

try:
    import orbax.checkpoint as _ocp  # type: ignore[import-untyped]
    from orbax.checkpoint import future as _future
    from orbax.checkpoint._src import asyncio_utils as _asyncio_utils  # type: ignore[import-untyped]
except ImportError as error:
    raise MissingDependencyError(
        "callstate.orbax needs orbax-checkpoint, which is not installed: pip install 'callstate[orbax]'.",
        name="orbax",
        extra="orbax",
    ) from error

from ._core import (
    MANIFEST_KEY,
    VERSIONS_KEY,
    CallbackRegistry,
    RestoreReport,
    Saved,
    as_registry,
    relocation_of,
)
from ._io import (
    Group,
    Policy,
    RankRead,
    add_gathered,
    capture,
    check_policy,
    manifest_entry,
    read,
    read_manifest,
    select,
    split,
)
from ._support import escape

__all__ = ["GLOBAL_FILE", "CallstateCheckpointHandler", "Restore", "Save", "checkpointable", "rank_file"]

GLOBAL_FILE = "callbacks.callstate"
"""The file of the global states (and the per-rank manifest) in the item's directory."""
_RANK_FILE = re.compile(r"callbacks\.rank(0|[1-9][0-9]{0,7})\.callstate")


def rank_file(index: int) -> str:
    """Return the name of the file of process ``index``'s per-rank states in the item's directory."""
    return f"callbacks.rank{index}.callstate"


def _processes(index: int | None, count: int | None) -> tuple[int, int]:
    if index is not None and count is not None:
        if not 0 <= index < count:
            raise ValueError(f"process_index={index!r} is not in range(process_count={count!r}).")
        return index, count
    if index is not None or count is not None:
        raise ValueError("Give process_index and process_count together, or neither (jax's are used).")
    import jax

    return jax.process_index(), jax.process_count()


@dataclasses.dataclass
class Save(_ocp.args.CheckpointArgs):  # type: ignore[misc]  # orbax is untyped
    """Save the states of ``registry`` (a ``CallbackRegistry`` or a list of callbacks) as an orbax item.

    ``process_index`` and ``process_count`` default to jax's; give both to write one process's part
    of a multi-process layout yourself.
    """

    registry: Any
    _: dataclasses.KW_ONLY
    process_index: int | None = None
    process_count: int | None = None


@dataclasses.dataclass
class Restore(_ocp.args.CheckpointArgs):  # type: ignore[misc]  # orbax is untyped
    """Restore ``registry`` from an item written with ``Save``; the item's value is the ``RestoreReport``.

    ``strict`` refuses (with ``StateMismatchError``, nothing changed) a step whose states and
    callbacks do not match one to one; ``on_world_size_change`` and ``trusted`` are those of
    ``callstate.distributed.load``. ``relocate={old prefix: new prefix}`` moves the paths inside the
    saved states that lie under an old prefix (a checkpoint directory that was moved) to the new
    one before the callbacks see them (see ``callstate.load``); it is checked when the ``Restore``
    is made (a malformed mapping raises ``TypeError`` or ``ValueError`` before orbax reads
    anything), and the report's ``relocated`` counts what moved.
    """

    registry: Any
    _: dataclasses.KW_ONLY
    strict: bool = False
    on_world_size_change: Policy = "error"
    trusted: bool = False
    relocate: Mapping[Any, Any] | None = None
    process_index: int | None = None
    process_count: int | None = None

    def __post_init__(self) -> None:
        # Checked once, here, and kept checked (a Relocation is a mapping too).
        self.relocate = relocation_of(self.relocate)


class CallstateCheckpointHandler(_ocp.AsyncCheckpointHandler):  # type: ignore[misc]  # orbax is untyped
    """The orbax handler of ``Save`` and ``Restore``: synchronous or asynchronous, as the manager runs it."""

    async def async_save(self, directory: Any, args: Save) -> list[Any]:
        """Capture every state now; return the future that writes the item's files in the background."""
        writes = _captured(args)

        async def write_files() -> None:
            for name, write in writes:
                _write_new(os.path.join(os.fspath(directory), name), write)

        return [_future.CommitFutureAwaitingContractedSignals(write_files(), name="callstate_save")]

    def save(self, directory: Any, args: Save) -> None:
        """Write the item's files before returning."""

        async def run() -> None:
            for commit in await self.async_save(directory, args):
                commit.result()

        _asyncio_utils.run_sync(run())

    def restore(self, directory: Any, args: Restore) -> RestoreReport:
        """Restore the registry from the item in ``directory``, in one transaction; return the report."""
        return _restored(os.fspath(directory), args)

    def metadata(self, directory: Any) -> None:
        """callstate items carry no orbax metadata (``callstate inspect`` reads the files)."""
        return None

    def finalize(self, directory: Any) -> None:
        """Nothing to do: the files are complete when their future is done."""

    def close(self) -> None:
        """Nothing to release."""


_ocp.args.register_with_handler(CallstateCheckpointHandler, for_save=True)(Save)
_ocp.args.register_with_handler(CallstateCheckpointHandler, for_restore=True)(Restore)


def _captured(args: Save) -> list[tuple[str, Any]]:
    """Return ``(file name, write)`` for each file this process writes, every state captured now."""
    registry = as_registry(args.registry, what="callstate.orbax.Save")
    index, count = _processes(args.process_index, args.process_count)
    glob, mine, keys = split(registry, index)
    out: list[tuple[str, Any]] = []
    if index == 0:
        glob[MANIFEST_KEY] = manifest_entry(count, keys)
        out.append((GLOBAL_FILE, capture(glob)))
    if mine:
        versions = glob.get(VERSIONS_KEY)
        # Each process names its own per-rank keys: process 0 cannot know the others' (a callback
        # only some processes have, states carried unclaimed from an earlier restore), and the
        # restore joins every file's names into the manifest, as callstate.distributed gathers them.
        own: dict[str, Any] = {MANIFEST_KEY: manifest_entry(count, keys)}
        own.update(mine)
        if versions:
            own[VERSIONS_KEY] = versions
        out.append((rank_file(index), capture(own)))
    return out


def _write_new(path: str, write: Any) -> None:
    """Write a new file in orbax's temporary step directory, flushed to disk (orbax renames the directory)."""
    with open(path, "xb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _restored(directory: str, args: Restore) -> RestoreReport:
    check_policy(args.on_world_size_change)
    registry: CallbackRegistry = as_registry(args.registry, what="callstate.orbax.Restore")
    index, count = _processes(args.process_index, args.process_count)
    source = os.path.join(directory, GLOBAL_FILE)
    states = _joined(directory, source, args.trusted)
    keyed = registry.members()
    reading = RankRead(Group(None, index, count, None), args.on_world_size_change, source)
    deliver = select(keyed, states, reading)
    saved = Saved(deliver, source=source, relocate=args.relocate)
    restore = registry.begin_restore(saved, strict=args.strict, keyed=keyed)
    return restore.apply()


def _joined(directory: str, source: str, trusted: bool) -> dict[Any, Any]:
    """Return the item's files' states in one mapping, its manifest naming every file's per-rank keys."""
    states: dict[Any, Any] = dict(read(source, lazy=True, trusted=trusted))
    manifest = read_manifest(states, source)
    gathered: list[tuple[dict[Any, Any], list[str]]] = [({}, list(manifest.per_rank) if manifest else [])]
    for name in sorted(os.listdir(directory)):
        if not _RANK_FILE.fullmatch(name):
            continue
        path = os.path.join(directory, name)
        entries = dict(read(path, lazy=True, trusted=trusted))
        own = read_manifest(entries, path)
        if manifest is not None and own is not None and own.world_size != manifest.world_size:
            raise CorruptCheckpointError(
                f"{escape(path)!r} was written by one of {own.world_size} processes, {escape(source)!r} "
                f"by one of {manifest.world_size}: the item mixes files of two saves. Restore another step.",
                path=path,
                key=MANIFEST_KEY,
            )
        entries.pop(VERSIONS_KEY, None)
        entries.pop(MANIFEST_KEY, None)
        gathered.append((entries, list(own.per_rank) if own else []))
    if manifest is None:  # not written by Save: its states as they are
        for entries, _keys in gathered:
            for key, state in entries.items():
                states.setdefault(key, state)
        return states
    add_gathered(states, gathered, manifest.world_size)
    return states


def checkpointable(registry: Any, *, relocate: Mapping[Any, Any] | None = None) -> Any:
    """Return ``registry`` as a ``StatefulCheckpointable`` of orbax's v1 API.

    Pass it to ``ocp.v1.save_checkpointables(path, {"callbacks": checkpointable(registry)})`` and
    ``load_checkpointables``; it captures the states when the save is called and restores them in
    one transaction when loaded. ``relocate={old prefix: new prefix}`` moves the paths inside the
    loaded states as ``Restore``'s does; it is checked here (a malformed mapping raises
    ``TypeError`` or ``ValueError``), and the ``last_report``'s ``relocated`` counts what moved.
    """
    checked = relocation_of(relocate)
    return _Checkpointable(as_registry(registry, what="callstate.orbax.checkpointable"), relocate=checked)


class _Checkpointable:
    """A registry as a v1 ``StatefulCheckpointable``: ``save`` and ``load`` are async, as orbax calls them."""

    def __init__(
        self, registry: CallbackRegistry, *, strict: bool = False, relocate: Mapping[Any, Any] | None = None
    ) -> None:
        self.registry = registry
        self.strict = strict
        self.relocate = relocate
        self.last_report: RestoreReport | None = None

    async def save(self, directory: Any) -> Any:
        writes = _captured(Save(self.registry))

        async def write_files() -> None:
            path = await _awaited_path(directory)
            for name, write in writes:
                _write_new(os.path.join(os.fspath(path), name), write)

        return write_files()

    async def load(self, directory: Any) -> Any:
        async def load_files() -> None:
            args = Restore(self.registry, strict=self.strict, relocate=self.relocate)
            self.last_report = _restored(os.fspath(directory), args)

        return load_files()

    def __repr__(self) -> str:
        return f"callstate.orbax.checkpointable({self.registry!r})"


async def _awaited_path(directory: Any) -> Any:
    """Return the directory's path, once created when orbax gives a path awaiting creation."""
    wait = getattr(directory, "await_creation", None)
    if wait is None:
        return directory
    return await wait()
