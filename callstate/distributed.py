"""Per-rank callback state over torch.distributed: one checkpoint from every rank, and a DCP Stateful.

A callback declared ``per_rank`` (``@callstate.stateful(per_rank=True)`` or
``registry.register(cb, per_rank=True)``) keeps a different state on every rank; all others are
global, identical on every rank and saved once, from rank 0. Every function here is collective:
call it on every rank of the process group. Without an initialised process group they act as a
single process of rank 0 in a world of size 1. torch is imported only when a function runs.

Layout, inside one ``{"callbacks": ...}`` mapping (a callstate file, a Lightning checkpoint, DCP)::

    "Counter{'what': 'epochs'}"          global state, under its usual key
    "Timer{'name': 'fwd'}@rank0"         the per-rank state of rank 0 ...
    "Timer{'name': 'fwd'}@rank1"         ... and of rank 1, one entry each
    "callstate:distributed"              {"layout": 1, "world_size": 2, "per_rank": ["Timer{'name': 'fwd'}"]}

If any rank fails, every rank raises, and every rank's callbacks are put back as they were: one
restore transaction per rank, rolled back when a peer failed.

.. versionadded:: 0.1
"""

from __future__ import annotations

import os
import re
from collections.abc import Hashable, Iterable, Mapping
from typing import Any, cast

from ._core import (
    MANIFEST_KEY,
    VERSIONS_KEY,
    CallbackRegistry,
    Relocation,
    RestoreReport,
    RestoreTransaction,
    Saved,
    as_registry,
    relocation_of,
)
from ._encoding import EncodedState
from ._io import (
    LAYOUT_VERSION,
    Group,
    Policy,
    RankRead,
    add_gathered,
    agree,
    check_entries,
    check_policy,
    dumps,
    group_of,
    manifest_entry,
    portable,
    rank_key,
    ranks_present,
    read,
    read_manifest,
    rebuild,
    select,
    split,
    to_wire,
)
from ._io import save as save_file
from .errors import SerializationError

__all__ = [
    "LAYOUT_VERSION",
    "MANIFEST_KEY",
    "DCPState",
    "SIDECAR_NAME",
    "dcp_sidecar",
    "load",
    "load_state_dict",
    "rank_key",
    "save",
    "state_dict",
]

_DCP_GLOBAL = "callstate:global"
_DCP_RANK = "callstate:rank"
_DCP_RANK_FQN = re.compile(r"(?:\A|\.)callstate:rank(\d+)\Z")

Target = CallbackRegistry | Iterable[object]


def _registry(target: Target) -> CallbackRegistry:
    return as_registry(target, what="callstate.distributed")


# -- saving -----------------------------------------------------------------------------------------


def _gathered(registry: CallbackRegistry, g: Group) -> dict[Hashable, Any] | None:
    error: BaseException | None = None
    glob: dict[Hashable, Any] = {}
    mine: dict[str, Any] = {}
    keys: list[str] = []
    try:
        glob, mine, keys = split(registry, g.rank)
    except Exception as exc:
        error = exc
    agree(g, error)
    if g.active:
        gathered: list[Any] | None = [None] * g.world_size if g.rank == 0 else None
        g.dist.gather_object((to_wire(mine), keys), gathered, group=g.group, group_dst=0)
    else:
        gathered = [(mine, keys)]
    if g.rank != 0:
        return None
    assert gathered is not None
    out: dict[Hashable, Any] = dict(glob)
    add_gathered(out, gathered, g.world_size)
    return out


def state_dict(target: Target, *, group: Any = None) -> dict[Hashable, Any] | None:
    """Gather every rank's states into one ``{key: state}`` mapping, returned on rank 0.

    Global states come from rank 0; each per-rank state comes from its rank, under
    ``rank_key(key, rank)``; the ``MANIFEST_KEY`` entry records the world size. Collective: call it
    on every rank. Other ranks get ``None``.

    Raises:
        DuplicateKeyError and any error of a callback's ``state_dict``, on every rank if it
        happened on any.

    .. versionadded:: 0.1
    """
    states = _gathered(_registry(target), group_of(group))
    if states is None:
        return None
    return {k: v.to_plain() if isinstance(v, EncodedState) else v for k, v in states.items()}


def save(
    target: Target,
    path: str | os.PathLike[str],
    *,
    group: Any = None,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Write the states of every rank into the callstate file ``path``, from rank 0.

    Collective: call it on every rank. When it returns on any rank the file is complete; if
    anything failed on any rank (a ``state_dict``, the write), it raises on every rank. ``path``
    may be an fsspec URL, uploaded by rank 0 (``storage_options``: see ``callstate.save``).

    .. versionadded:: 0.1
    """
    g = group_of(group)
    states = _gathered(_registry(target), g)
    error: BaseException | None = None
    if states is not None:
        try:
            save_file(cast("Mapping[str, Any]", states), path, storage_options=storage_options)
        except Exception as exc:
            error = exc
    agree(g, error)


# -- restoring --------------------------------------------------------------------------------------


def _restore(
    registry: CallbackRegistry,
    states: Mapping[Any, Any] | None,
    reading: RankRead,
    *,
    strict: bool,
    error: BaseException | None = None,
    relocate: Relocation | None = None,
) -> tuple[RestoreReport, RestoreTransaction]:
    """Restore this rank in one transaction; roll it back if another rank failed.

    Returns the report and the applied transaction, which a caller may still roll back (an adapter
    whose framework fails to load the rest of the checkpoint).
    """
    restore: RestoreTransaction | None = None
    report: RestoreReport | None = None
    if error is None:
        assert states is not None
        try:
            keyed = registry.members()
            deliver = select(keyed, states, reading)
            saved = Saved(deliver, source=reading.source, relocate=relocate)
            restore = registry.begin_restore(saved, strict=strict, keyed=keyed)
            report = restore.apply()
        except Exception as exc:
            error = exc
    try:
        agree(reading.group, error)
    except BaseException:
        if restore is not None and report is not None:
            restore.roll_back()
        raise
    assert report is not None and restore is not None
    return report, restore


def load_state_dict(
    target: Target,
    states: Mapping[Hashable, Any],
    *,
    strict: bool = False,
    on_world_size_change: Policy = "error",
    group: Any = None,
    relocate: Mapping[Any, Any] | None = None,
) -> RestoreReport:
    """Restore every rank from a mapping in this module's layout, given on every rank.

    Each rank receives the global states and its own per-rank states (saved under
    ``rank_key(key, rank)``). A mapping without a ``MANIFEST_KEY`` entry is restored as global
    states only. Collective: call it on every rank, each with the whole mapping (as when every rank
    reads the same checkpoint).

    Args:
        target: a ``CallbackRegistry`` or a list of callbacks.
        states: the ``{key: state}`` mapping, as returned by ``state_dict`` on rank 0.
        strict: see ``CallbackRegistry.load_state_dict``; judged on each rank for what it receives.
        on_world_size_change: what to do with per-rank states saved at another world size:
            ``"error"`` raises ``RankMismatchError``; ``"broadcast"`` gives every rank rank 0's
            saved state; ``"reshard"`` calls the callback's ``reshard(states_by_rank, world_size)``,
            which must return a list of ``world_size`` states, of which rank ``r`` takes item ``r``.
        relocate: ``{old prefix: new prefix}`` for the paths inside the states (see ``callstate.load``).

    Returns:
        This rank's ``RestoreReport``.

    Raises:
        RankMismatchError: the world size changed and the policy cannot apply (on every rank).
        StateMismatchError, RestoreError: as for ``CallbackRegistry.load_state_dict``. If any rank
            fails, every rank raises and every rank's callbacks are put back as they were.

    .. versionadded:: 0.1
    """
    check_policy(on_world_size_change)
    relocation = relocation_of(relocate)
    registry, g = _registry(target), group_of(group)
    error = None
    if not isinstance(states, Mapping):
        # Raised on every rank, so that none waits for the others.
        error = TypeError(
            f"states must be the mapping of key -> state on every rank, got {type(states).__qualname__} "
            "on this one: share rank 0's state_dict() with every rank (every rank reads the checkpoint)."
        )
    policy = on_world_size_change
    reading = RankRead(g, policy, None)
    report, _ = _restore(registry, states, reading, strict=strict, error=error, relocate=relocation)
    return report


def _share(entries: Mapping[str, Any], rank: int, world_size: int, source: str) -> dict[str, Any]:
    """Return the entries of ``entries`` that ``rank`` needs."""
    manifest = read_manifest(entries, source)
    if manifest is None:
        return dict(entries)
    check_entries(manifest, ranks_present(entries, manifest), source)
    if manifest.world_size != world_size:
        return dict(entries)  # broadcast, reshard and keeping strays may need any rank's entry
    others = {rank_key(k, j) for k in manifest.per_rank for j in range(manifest.world_size) if j != rank}
    return {k: v for k, v in entries.items() if k not in others}


def load(
    target: Target,
    path: str | os.PathLike[str],
    *,
    strict: bool = False,
    on_world_size_change: Policy = "error",
    group: Any = None,
    trusted: bool = False,
    relocate: Mapping[Any, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> RestoreReport:
    """Restore every rank from the callstate file ``path`` written by ``save``.

    Rank 0 reads the file (so it needs to exist on rank 0 only) and sends every rank the entries it
    needs, still encoded; each rank checks and decodes its own. Collective: call it on every rank.
    Arguments and errors are those of ``load_state_dict``; ``trusted`` and ``relocate`` are those of
    ``callstate.load``. A file written by plain ``callstate.save`` restores as global states.
    ``path`` may be an fsspec URL, read by rank 0 (``storage_options``: see ``callstate.save``).

    Raises:
        CorruptCheckpointError, UnsupportedFormatError, UnsafeCheckpointError, OSError: as for
            ``callstate.load``, on every rank.

    .. versionadded:: 0.1
    """
    return load_undoable(
        target,
        path,
        strict=strict,
        on_world_size_change=on_world_size_change,
        group=group,
        trusted=trusted,
        relocate=relocate,
        storage_options=storage_options,
    )[0]


def load_undoable(
    target: Target,
    path: str | os.PathLike[str],
    *,
    strict: bool,
    on_world_size_change: Policy,
    group: Any = None,
    trusted: bool,
    relocate: Mapping[Any, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[RestoreReport, RestoreTransaction]:
    """Do what ``load`` does; also return the applied transaction, to roll this rank back later."""
    check_policy(on_world_size_change)
    relocation = relocation_of(relocate)
    registry = _registry(target)
    g = group_of(group)
    source = os.fspath(path)
    if not g.active:
        local = dict(read(source, lazy=True, trusted=trusted, storage_options=storage_options))
        reading = RankRead(g, on_world_size_change, source)
        return _restore(registry, local, reading, strict=strict, relocate=relocation)
    error: BaseException | None = None
    entries: dict[str, Any] = {}
    parcels: list[Any] | None = None
    if g.rank == 0:
        try:
            entries = dict(read(source, lazy=True, trusted=trusted, storage_options=storage_options))
            parcels = [None] + [
                ("ok", dumps(cast("Mapping[str, Any]", _share(entries, r, g.world_size, source))))
                for r in range(1, g.world_size)
            ]
        except Exception as exc:
            error = exc
            parcels = [("error", portable(exc))] * g.world_size
    received: list[Any] = [None]
    mine: dict[str, Any] = {}
    g.dist.scatter_object_list(received, parcels, group=g.group, group_src=0)
    if g.rank == 0:
        if error is not None:
            raise error
        mine = entries
    else:
        kind, data = received[0]
        if kind == "error":
            raise rebuild(data, 0)
        try:
            mine = dict(read(data, lazy=True, trusted=trusted))
        except Exception as exc:
            error = exc
    # Each rank holds its share of the file; rank 0 checked the whole in _share.
    reading = RankRead(g, on_world_size_change, source, whole=False)
    return _restore(registry, mine, reading, strict=strict, error=error, relocate=relocation)


# -- torch.distributed.checkpoint -------------------------------------------------------------------


class _LoadOnly:
    """A slot in a DCP template that only a load may fill."""

    def __deepcopy__(self, memo: dict[int, Any]) -> _LoadOnly:
        return self

    def __reduce__(self) -> Any:
        raise SerializationError(
            "A DCPState made with checkpoint_id= is for loading only and cannot be saved: save with "
            "DCPState(registry) instead.",
            key=_DCP_RANK,
        )


def _saved_ranks(checkpoint_id: str | os.PathLike[str]) -> list[int]:
    from torch.distributed.checkpoint.filesystem import FileSystemReader

    metadata = FileSystemReader(checkpoint_id).read_metadata()
    found = (_DCP_RANK_FQN.search(fqn) for fqn in metadata.state_dict_metadata)
    return sorted({int(m.group(1)) for m in found if m is not None})


class DCPState:
    """The callbacks as a ``Stateful`` for ``torch.distributed.checkpoint`` (save, async_save, load).

    Put it in the state dict given to DCP, ``dcp.save({"model": ..., "callbacks": DCPState(registry)})``.
    Its ``state_dict()`` has two entries: ``"callstate:global"``, the global states (written by every
    rank, identical by definition, kept once by DCP) and ``"callstate:rank{r}"``, this rank's
    per-rank states. Each holds the bytes of a callstate file in this module's layout, so DCP's
    de-duplication, which keeps one copy of a key saved by several ranks, can collapse nothing that
    differs, and every state is decoded by callstate's data codec, not by ``torch.load``.

    Args:
        target: a ``CallbackRegistry`` or a list of callbacks.
        strict, on_world_size_change, trusted: for the restore, as in ``load``.
        group: the process group; ``None`` for the default one.
        checkpoint_id: the DCP checkpoint directory this object is about to restore from. Needed only
            when the world size may have changed: every rank then reads every saved rank's entry, so
            the policies can apply. Such an object cannot be saved.

    Attributes:
        report: the ``RestoreReport`` of the last load on this rank, or ``None``.

    ``state_dict()`` and ``load_state_dict()`` are collective, as DCP calls them, on every rank.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        target: Target,
        *,
        strict: bool = False,
        on_world_size_change: Policy = "error",
        group: Any = None,
        checkpoint_id: str | os.PathLike[str] | None = None,
        trusted: bool = False,
    ) -> None:
        check_policy(on_world_size_change)
        self.registry = _registry(target)
        self.strict = strict
        self.on_world_size_change = on_world_size_change
        self.group = group
        self.checkpoint_id = checkpoint_id
        self.trusted = trusted
        self.report: RestoreReport | None = None

    def state_dict(self) -> dict[str, Any]:
        """Return this rank's entries: the global states and its own per-rank states, encoded."""
        g = group_of(self.group)
        if self.checkpoint_id is not None:
            template: dict[str, Any] = {_DCP_GLOBAL: _LoadOnly()}
            for j in _saved_ranks(self.checkpoint_id):
                template[f"{_DCP_RANK}{j}"] = _LoadOnly()
            return template
        error: BaseException | None = None
        out: dict[str, Any] = {}
        try:
            glob, mine, keys = split(self.registry, g.rank)
            glob[MANIFEST_KEY] = manifest_entry(g.world_size, keys)
            if VERSIONS_KEY in glob:  # this rank's entries are written with their versions too
                mine = {**mine, VERSIONS_KEY: glob[VERSIONS_KEY]}
            out = {
                _DCP_GLOBAL: dumps(cast("Mapping[str, Any]", glob)),
                f"{_DCP_RANK}{g.rank}": dumps(mine),
            }
        except Exception as exc:
            error = exc
        agree(g, error)
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore this rank's callbacks from what DCP read into ``state_dict()``'s entries."""
        g = group_of(self.group)
        error: BaseException | None = None
        states: dict[Hashable, Any] = {}
        try:
            for name in sorted(state_dict):
                value = state_dict[name]
                if isinstance(value, _LoadOnly):
                    continue
                states.update(read(value, lazy=True, trusted=self.trusted))
        except Exception as exc:
            error = exc
        reading = RankRead(
            g,
            self.on_world_size_change,
            os.fspath(self.checkpoint_id) if self.checkpoint_id is not None else None,
            hint=" Pass checkpoint_id= to DCPState so that every rank reads every rank's states.",
            whole=self.checkpoint_id is not None,  # then every rank reads every rank's entry
        )
        self.report, _ = _restore(self.registry, states, reading, strict=self.strict, error=error)

    def __repr__(self) -> str:
        return f"DCPState({self.registry!r})"


SIDECAR_NAME = "callbacks.callstate"
"""The name of the callstate file that :func:`dcp_sidecar` puts in a DCP checkpoint's directory."""


def dcp_sidecar(checkpoint_id: str | os.PathLike[str]) -> str:
    """Return the path of the callbacks' callstate file in the DCP checkpoint directory ``checkpoint_id``.

    ``torch.distributed.checkpoint`` unpickles its own ``.metadata`` file and the envelopes of the
    values it stores as bytes, so reading a ``DCPState`` through ``dcp.load`` trusts the checkpoint's
    directory. Saved with ``save(target, dcp_sidecar(checkpoint_id))`` beside DCP's files instead
    (DCP reads only the files its metadata names), the callbacks load with
    ``load(target, dcp_sidecar(checkpoint_id))``, which reads no file of DCP's and unpickles nothing.

    Save it after ``dcp.save``, which makes the directory.

    .. versionadded:: 0.1
    """
    return os.path.join(os.fspath(checkpoint_id), SIDECAR_NAME)


# rank_key is the per-rank layout's (callstate._io), presented here, where users import it.
rank_key.__module__ = __name__
