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

.. versionadded:: 0.1
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Hashable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any, Literal, cast

import attrs

from ._encoded import EncodedState
from ._errors import CallstateError, CorruptCheckpointError, RankMismatchError, UnsupportedFormatError
from ._files import as_registry
from ._registry import CallbackRegistry, RestoreReport, _own
from ._spec import is_stateful

__all__ = [
    "LAYOUT_VERSION",
    "MANIFEST_KEY",
    "DCPState",
    "load",
    "load_state_dict",
    "rank_key",
    "save",
    "state_dict",
]

MANIFEST_KEY = "callstate:distributed"
"""The key of the entry that records the world size and which keys are per rank."""

LAYOUT_VERSION = 1
"""The version of the per-rank layout written by this module."""

Policy = Literal["error", "broadcast", "reshard"]
_POLICIES = ("error", "broadcast", "reshard")
# A per-rank entry: a '@' never occurs in a key Lightning or callstate builds (a __qualname__, then
# a dict repr ending in '}'), so no callback can claim one by accident.
_RANK_SUFFIX = re.compile(r"@rank(\d+)\Z", re.ASCII)
# No job has more ranks; a manifest saying so was not written by callstate.
MAX_WORLD_SIZE = 1 << 24
_DCP_GLOBAL = "callstate:global"
_DCP_RANK = "callstate:rank"
_DCP_RANK_FQN = re.compile(r"(?:\A|\.)callstate:rank(\d+)\Z")

Target = CallbackRegistry | Iterable[object]


def rank_key(key: str, rank: int) -> str:
    """Return the key under which ``rank``'s state of the per-rank callback ``key`` is saved.

    .. versionadded:: 0.1
    """
    return f"{key}@rank{rank}"


# -- process group ----------------------------------------------------------------------------------


@attrs.frozen
class _Group:
    group: Any  # a torch ProcessGroup, or None for the default one
    rank: int
    world_size: int
    dist: Any  # torch.distributed, or None in a single process

    @property
    def active(self) -> bool:
        return self.dist is not None and self.world_size > 1


def _group(group: Any) -> _Group:
    dist: Any
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is installed wherever this module is tested
        dist = None
    if dist is None or not dist.is_available() or not dist.is_initialized():
        if group is not None:
            raise ValueError(
                "group= was given but torch.distributed has no initialised process group: call "
                "torch.distributed.init_process_group() first, or leave group=None."
            )
        return _Group(None, 0, 1, None)
    rank = dist.get_rank(group)
    if rank < 0:
        raise ValueError(
            "This process is not a member of group=: call callstate.distributed only on the ranks of "
            "the group."
        )
    return _Group(group, rank, dist.get_world_size(group), dist)


def _registry(target: Target) -> CallbackRegistry:
    return as_registry(
        target, why=": callstate.distributed needs the callbacks to know which states are per rank"
    )


def _check_policy(policy: str) -> None:
    if policy not in _POLICIES:
        choices = ", ".join(map(repr, _POLICIES))
        raise ValueError(f"on_world_size_change={policy!r}: expected one of {choices}.")


# -- errors across ranks ----------------------------------------------------------------------------

_Portable = tuple[type[BaseException], tuple[Any, ...], dict[str, Any]]


def _portable(exc: BaseException) -> _Portable:
    """Return what rebuilds ``exc`` in another process: its class, args and attributes."""
    attributes: dict[str, Any] = {}
    for name, value in vars(exc).items():
        if name.startswith("__"):
            continue
        try:
            pickle.dumps(value)
            attributes[name] = value
        except Exception:
            attributes[name] = repr(value)
    cls: type[BaseException] = type(exc)
    args: tuple[Any, ...] = exc.args
    if isinstance(exc, OSError) and exc.filename is not None:
        args = (exc.errno, exc.strerror, exc.filename)  # not kept in args by OSError itself
    try:
        pickle.loads(pickle.dumps((cls, args)))
    except Exception:
        cls, args = CallstateError, (f"{type(exc).__qualname__}: {exc}",)
    return cls, args, attributes


def _rebuild(portable: _Portable, rank: int) -> BaseException:
    """Return the error another rank raised, as this rank raises it."""
    cls, args, attributes = portable
    exc: BaseException
    try:
        exc = cls(*args)
    except Exception:
        # callstate's errors take their data as keyword arguments: restore it directly.
        exc = cls.__new__(cls)
        exc.args = args
    exc.__dict__.update(attributes)
    if issubclass(cls, CallstateError) and args and isinstance(args[0], str):
        exc.args = (f"On rank {rank}: {args[0]}", *args[1:])
    else:
        notes = getattr(exc, "__notes__", None)
        exc.__notes__ = [*(notes if isinstance(notes, list) else []), f"(raised on rank {rank})"]  # type: ignore[attr-defined]
    return exc


def _agree(g: _Group, error: BaseException | None) -> None:
    """Raise on every rank if any rank failed: this rank's own error, else the first other one."""
    if not g.active:
        if error is not None:
            raise error
        return
    outcomes: list[Any] = [None] * g.world_size
    mine = None
    if error is not None:
        mine = _portable(error)
    g.dist.all_gather_object(outcomes, mine, group=g.group)
    if error is not None:
        raise error
    for rank, outcome in enumerate(outcomes):
        if outcome is not None:
            raise _rebuild(outcome, rank)


# -- saving -----------------------------------------------------------------------------------------


def _split(registry: CallbackRegistry, rank: int) -> tuple[dict[Hashable, Any], dict[str, Any], list[str]]:
    """Return (global states, this rank's per-rank entries under their rank keys, per-rank keys)."""
    per_rank_keys = _per_rank_keys(registry)
    per_rank = set(per_rank_keys)
    states = registry.state_dict()
    unclaimed = registry.unclaimed
    glob: dict[Hashable, Any] = {}
    mine: dict[str, Any] = {}
    for key, state in states.items():
        if isinstance(key, str) and key in per_rank:
            mine[rank_key(key, rank)] = state
        elif key in unclaimed and isinstance(key, str) and _RANK_SUFFIX.search(key):
            # A per-rank state kept from an earlier restore: it travels with this rank's entries.
            mine.setdefault(key, state)
        elif key != MANIFEST_KEY:
            glob[key] = state
    return glob, mine, per_rank_keys


def _manifest_entry(world_size: int, per_rank_keys: Sequence[str]) -> dict[str, Any]:
    return {"layout": LAYOUT_VERSION, "world_size": world_size, "per_rank": list(per_rank_keys)}


@attrs.frozen
class _Wire:
    """An ``EncodedState`` as it travels between ranks: its bytes, without the decoder."""

    codec: str
    parts: tuple[bytes, ...]
    checksum: int
    key: str
    info: dict[str, str]

    @classmethod
    def wrap(cls, states: Mapping[Any, Any]) -> dict[Any, Any]:
        return {
            k: cls(v.codec, tuple(bytes(p) for p in v.parts), v.checksum, v.key, dict(v.info))
            if isinstance(v, EncodedState)
            else v
            for k, v in states.items()
        }

    @staticmethod
    def unwrap(states: Mapping[Any, Any], rank: int) -> dict[Any, Any]:
        from ._format import make_decoder

        decoder = make_decoder(f"<state from rank {rank}>", False)
        return {
            k: EncodedState(
                codec=v.codec, parts=v.parts, checksum=v.checksum, decoder=decoder, key=v.key, info=v.info
            )
            if isinstance(v, _Wire)
            else v
            for k, v in states.items()
        }


def _gathered(registry: CallbackRegistry, g: _Group) -> dict[Hashable, Any] | None:
    error: BaseException | None = None
    glob: dict[Hashable, Any] = {}
    mine: dict[str, Any] = {}
    keys: list[str] = []
    try:
        glob, mine, keys = _split(registry, g.rank)
    except Exception as exc:
        error = exc
    _agree(g, error)
    if g.active:
        gathered: list[Any] | None = [None] * g.world_size if g.rank == 0 else None
        g.dist.gather_object((_Wire.wrap(mine), keys), gathered, group=g.group, group_dst=0)
    else:
        gathered = [(mine, keys)]
    if g.rank != 0:
        return None
    assert gathered is not None
    out: dict[Hashable, Any] = dict(glob)
    _add_gathered(out, gathered, g.world_size)
    return out


def _add_gathered(out: MutableMapping[Hashable, Any], gathered: list[Any], world_size: int) -> None:
    """Add every rank's gathered per-rank entries to ``out``, and the manifest naming their keys."""
    union: list[str] = []
    for rank, (entries, rank_keys) in enumerate(gathered):
        for key, state in _Wire.unwrap(entries, rank).items():
            out.setdefault(key, state)
        union.extend(k for k in rank_keys if k not in union)
    out[MANIFEST_KEY] = _manifest_entry(world_size, union)


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
    return _gathered(_registry(target), _group(group))


def save(target: Target, path: str | os.PathLike[str], *, group: Any = None) -> None:
    """Write the states of every rank into the callstate file ``path``, from rank 0.

    Collective: call it on every rank. When it returns on any rank the file is complete; if
    anything failed on any rank (a ``state_dict``, the write), it raises on every rank.

    .. versionadded:: 0.1
    """
    import callstate

    g = _group(group)
    states = _gathered(_registry(target), g)
    error: BaseException | None = None
    if states is not None:
        try:
            callstate.save(cast("Mapping[str, Any]", states), path)
        except Exception as exc:
            error = exc
    _agree(g, error)


# -- restoring --------------------------------------------------------------------------------------


@attrs.frozen
class _Manifest:
    world_size: int
    per_rank: tuple[str, ...]


def _manifest(states: Mapping[Any, Any], source: str | None) -> _Manifest | None:
    """Return the manifest of ``states``, checked; None if there is none.

    Nothing is sized by the manifest's world_size: loops over saved ranks go over the entries present.
    """
    if MANIFEST_KEY not in states:
        return None
    value = states[MANIFEST_KEY]
    if isinstance(value, EncodedState):
        value = value.decode()
    where = f" in {source!r}" if source else ""
    layout = value.get("layout") if isinstance(value, Mapping) else None
    if isinstance(layout, int) and layout > LAYOUT_VERSION:
        raise UnsupportedFormatError(
            f"Entry {MANIFEST_KEY!r}{where} uses per-rank layout {value['layout']}; this callstate reads "
            f"up to {LAYOUT_VERSION}. Upgrade callstate.",
            found=value["layout"],
            supported=LAYOUT_VERSION,
            path=source,
            key=MANIFEST_KEY,
        )
    world_size = value.get("world_size") if isinstance(value, Mapping) else None
    per_rank = value.get("per_rank") if isinstance(value, Mapping) else None
    if (
        not isinstance(world_size, int)
        or isinstance(world_size, bool)
        or world_size < 1
        or not isinstance(per_rank, list | tuple)
        or not all(isinstance(k, str) for k in per_rank)
    ):
        raise _bad_manifest(f"is not a per-rank manifest ({value!r:.200})", where, source)
    if world_size > MAX_WORLD_SIZE:
        raise _bad_manifest(f"says world_size {world_size} (at most {MAX_WORLD_SIZE})", where, source)
    if len(set(per_rank)) != len(per_rank):
        raise _bad_manifest("names a per-rank key twice", where, source)
    return _Manifest(world_size, tuple(per_rank))


def _ranks_present(states: Mapping[Any, Any], manifest: _Manifest) -> dict[str, list[int]]:
    """Return per-rank key -> the saved ranks whose entries are present, ascending."""
    wanted = set(manifest.per_rank)
    ranks: dict[str, list[int]] = {k: [] for k in manifest.per_rank}
    for key in states:
        match = _RANK_SUFFIX.search(key) if isinstance(key, str) else None
        if match is not None and key[: match.start()] in wanted and int(match[1]) < manifest.world_size:
            ranks[key[: match.start()]].append(int(match[1]))
    for found in ranks.values():
        found.sort()
    return ranks


def _bad_manifest(problem: str, where: str, source: str | None) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"Entry {MANIFEST_KEY!r}{where} {problem}; expected "
        "{'layout': 1, 'world_size': int, 'per_rank': [str, ...]} matching the per-rank entries. "
        "Remove the entry to load the states as global ones.",
        path=source,
        key=MANIFEST_KEY,
    )


def _decoded(value: Any) -> Any:
    return value.decode() if isinstance(value, EncodedState) else _own(value)


def _mismatch(manifest: _Manifest, world_size: int, source: str | None, fix: str) -> RankMismatchError:
    where = f"Checkpoint {source!r}" if source else "The checkpoint"
    return RankMismatchError(
        f"{where}: per-rank states {list(manifest.per_rank)!r} were saved by {manifest.world_size} "
        f"rank(s), this run has {world_size}. {fix}",
        saved_world_size=manifest.world_size,
        world_size=world_size,
    )


_ERROR_FIX = (
    "Resume at the saved world size, or pass on_world_size_change='broadcast' (every rank gets rank 0's "
    "state) or 'reshard' (each callback's reshard(states_by_rank, world_size) decides)."
)


def _resharded(
    key: str,
    cb: object,
    manifest: _Manifest,
    states: Mapping[Any, Any],
    present: list[int],
    g: _Group,
    source: str | None,
) -> Any:
    """Return this rank's state of ``key`` from its ``reshard``; ``present``: the saved ranks here."""
    fn = getattr(cb, "reshard", None)
    if not callable(fn):
        raise _mismatch(
            manifest,
            g.world_size,
            source,
            f"on_world_size_change='reshard' needs {type(cb).__qualname__}.reshard(states_by_rank, "
            f"world_size) returning one state per rank, for {key!r}; define it, or use 'broadcast'.",
        )
    if len(present) < manifest.world_size:
        raise _mismatch(
            manifest,
            g.world_size,
            source,
            f"Only the states of {key!r} from rank(s) {present[:20]} of {manifest.world_size} are available "
            "here, so it cannot be resharded.",
        )
    by_rank = [_decoded(states[rank_key(key, j)]) for j in range(manifest.world_size)]
    result = fn(by_rank, g.world_size)
    if not isinstance(result, Sequence) or isinstance(result, str | bytes) or len(result) != g.world_size:
        got = f"{len(result)} item(s)" if isinstance(result, Sequence) else type(result).__qualname__
        raise _mismatch(
            manifest,
            g.world_size,
            source,
            f"{type(cb).__qualname__}.reshard for {key!r} returned {got}; it must return a list of "
            f"{g.world_size} states, one per rank of this run.",
        )
    return result[g.rank]


def _select(
    registry: CallbackRegistry,
    states: Mapping[Any, Any],
    g: _Group,
    policy: str,
    source: str | None,
    complete_hint: str = "",
) -> dict[Any, Any]:
    """Return what this rank restores: the global states and its own per-rank ones, under their keys.

    The entries of a per-rank key that no callback claims are passed on under their rank keys, to be
    kept as unclaimed states and saved again: each by one rank, saved rank ``j`` by rank ``j % world_size``.
    """
    manifest = _manifest(states, source)
    if manifest is None:
        return dict(states)
    saved = manifest.world_size
    present = _ranks_present(states, manifest)
    raw = {rank_key(k, j) for k, ranks in present.items() for j in ranks}
    deliver = {k: v for k, v in states.items() if k != MANIFEST_KEY and k not in raw}
    changed = bool(manifest.per_rank) and saved != g.world_size
    if changed and policy == "error":
        raise _mismatch(manifest, g.world_size, source, _ERROR_FIX)
    entries, keys = registry._stateful_entries()
    claimed = {
        m.source: m.entry.obj
        for m in registry._match(entries, keys, dict.fromkeys(manifest.per_rank), legacy=False)
    }
    for key in manifest.per_rank:
        if key not in claimed:
            for j in present[key]:
                if j % g.world_size == g.rank:
                    deliver[rank_key(key, j)] = states[rank_key(key, j)]
        elif not changed:
            if rank_key(key, g.rank) in states:
                deliver[key] = states[rank_key(key, g.rank)]
        elif policy == "reshard":
            deliver[key] = _resharded(key, claimed[key], manifest, states, present[key], g, source)
        elif rank_key(key, 0) in states:
            deliver[key] = states[rank_key(key, 0)]
        else:
            raise _mismatch(
                manifest, g.world_size, source, f"Rank 0's state of {key!r} is not here.{complete_hint}"
            )
    return deliver


def _snapshot(registry: CallbackRegistry) -> _Snapshot | None:
    try:
        states = {k: _own(obj.state_dict()) for k, obj in registry.items() if is_stateful(obj)}  # type: ignore[attr-defined]
    except Exception:
        return None  # cannot be put back; restoring still goes ahead
    return states, dict(registry.unclaimed)


_Snapshot = tuple[dict[str, Any], dict[Hashable, Any]]


def _roll_back(registry: CallbackRegistry, report: RestoreReport, before: _Snapshot | None) -> None:
    if before is None:
        return
    states, unclaimed = before
    for key in report.restored:
        registry[key].load_state_dict(states[key])  # type: ignore[attr-defined]
    registry._unclaimed.clear()
    registry._unclaimed.update(unclaimed)


def _restore(
    registry: CallbackRegistry,
    states: Mapping[Any, Any] | None,
    g: _Group,
    *,
    strict: bool,
    policy: str,
    source: str | None,
    error: BaseException | None = None,
    complete_hint: str = "",
) -> RestoreReport:
    report: RestoreReport | None = None
    before = None
    if error is None:
        assert states is not None
        try:
            deliver = _select(registry, states, g, policy, source, complete_hint)
            if g.active:
                before = _snapshot(registry)
            report = registry._load(deliver, strict=strict, atomic=True, owned=False)
        except Exception as exc:
            error = exc
    try:
        _agree(g, error)
    except BaseException:
        if error is None and report is not None:
            _roll_back(registry, report, before)
        raise
    assert report is not None
    return report


def load_state_dict(
    target: Target,
    states: Mapping[Hashable, Any],
    *,
    strict: bool = False,
    on_world_size_change: Policy = "error",
    group: Any = None,
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

    Returns:
        This rank's ``RestoreReport``.

    Raises:
        RankMismatchError: the world size changed and the policy cannot apply (on every rank).
        StateMismatchError, RestoreError: as for ``CallbackRegistry.load_state_dict``. If any rank
            fails, every rank raises and every rank's callbacks are put back as they were.

    .. versionadded:: 0.1
    """
    _check_policy(on_world_size_change)
    registry, g = _registry(target), _group(group)
    error = None
    if not isinstance(states, Mapping):
        # Raised on every rank, so that none waits for the others.
        error = TypeError(
            f"states must be the mapping of key -> state on every rank, got {type(states).__qualname__} "
            "on this one: share rank 0's state_dict() with every rank (every rank reads the checkpoint)."
        )
    return _restore(registry, states, g, strict=strict, policy=on_world_size_change, source=None, error=error)


def _share(entries: Mapping[str, Any], rank: int, world_size: int, source: str) -> dict[str, Any]:
    """Return the entries of ``entries`` that ``rank`` needs."""
    manifest = _manifest(entries, source)
    if manifest is None:
        return dict(entries)
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
) -> RestoreReport:
    """Restore every rank from the callstate file ``path`` written by ``save``.

    Rank 0 reads the file (so it needs to exist on rank 0 only) and sends every rank the entries it
    needs, still encoded; each rank checks and decodes its own. Collective: call it on every rank.
    Arguments and errors are those of ``load_state_dict``; ``trusted`` is that of
    ``callstate.load``. A file written by plain ``callstate.save`` restores as global states.

    Raises:
        CorruptCheckpointError, UnsupportedFormatError, UnsafeCheckpointError, OSError: as for
            ``callstate.load``, on every rank.

    .. versionadded:: 0.1
    """
    import callstate

    _check_policy(on_world_size_change)
    registry = _registry(target)
    g = _group(group)
    source = os.fspath(path)
    if not g.active:
        local = dict(callstate.read(source, lazy=True, trusted=trusted))
        return _restore(registry, local, g, strict=strict, policy=on_world_size_change, source=source)
    error: BaseException | None = None
    entries: dict[str, Any] = {}
    parcels: list[Any] | None = None
    if g.rank == 0:
        try:
            entries = dict(callstate.read(source, lazy=True, trusted=trusted))
            parcels = [None] + [
                ("ok", callstate.dumps(cast("Mapping[str, Any]", _share(entries, r, g.world_size, source))))
                for r in range(1, g.world_size)
            ]
        except Exception as exc:
            error = exc
            parcels = [("error", _portable(exc))] * g.world_size
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
            raise _rebuild(data, 0)
        try:
            mine = dict(callstate.read(data, lazy=True, trusted=trusted))
        except Exception as exc:
            error = exc
    return _restore(registry, mine, g, strict=strict, policy=on_world_size_change, source=source, error=error)


# -- hooks for framework adapters (callstate.lightning) ----------------------------------------------


def _per_rank_keys(registry: CallbackRegistry) -> list[str]:
    return [k for k, obj in registry.items() if is_stateful(obj) and registry.is_per_rank(k)]


def _gather_in_place(states: dict[Any, Any], registry: CallbackRegistry, group: Any = None) -> None:
    """Rewrite a checkpoint's ``{key: state}`` mapping, on every rank, into this module's layout.

    ``states`` holds this rank's states under their keys, as a framework gathered them; ``registry``
    says which are per rank. Afterwards every rank's mapping is the same: global states from rank 0,
    every rank's per-rank states under rank keys, and the manifest. Collective when a process group
    of more than one rank is initialised; in a single process it only acts if a state is per rank.
    """
    g = _group(group)
    keys = _per_rank_keys(registry)
    if not g.active and not keys:
        return
    per_rank = set(keys)
    mine = {rank_key(k, g.rank): states[k] for k in keys if k in states}
    # Per-rank states kept unclaimed from an earlier restore travel with this rank's own.
    mine.update({k: v for k, v in states.items() if isinstance(k, str) and _RANK_SUFFIX.search(k)})
    gathered: list[Any] = [(_Wire.wrap(mine), keys)]
    if g.active:
        gathered = [None] * g.world_size
        g.dist.all_gather_object(gathered, (_Wire.wrap(mine), keys), group=g.group)
    glob: list[Any] = [_Wire.wrap({k: v for k, v in states.items() if k not in per_rank and k not in mine})]
    if g.active:
        g.dist.broadcast_object_list(glob, group=g.group, group_src=0)
    states.clear()
    states.update(_Wire.unwrap(glob[0], 0))
    _add_gathered(states, gathered, g.world_size)


def _rank_view(
    registry: CallbackRegistry, states: Mapping[Any, Any], policy: str, group: Any = None
) -> dict[Any, Any]:
    """Return what this rank restores from a checkpoint's ``{key: state}`` mapping, read by every rank.

    A mapping without the manifest is returned as it is.

    Raises:
        RankMismatchError: the world size changed and ``policy`` cannot apply.
    """
    _check_policy(policy)
    if MANIFEST_KEY not in states:
        return dict(states)
    return _select(registry, states, _group(group), policy, None)


# -- torch.distributed.checkpoint -------------------------------------------------------------------


class _LoadOnly:
    """A slot in a DCP template that only a load may fill."""

    def __deepcopy__(self, memo: dict[int, Any]) -> _LoadOnly:
        return self

    def __reduce__(self) -> Any:
        from ._format import SerializationError

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
    differs, and every state is decoded by callstate's safe unpickler, not by ``torch.load``.

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
        _check_policy(on_world_size_change)
        self.registry = _registry(target)
        self.strict = strict
        self.on_world_size_change = on_world_size_change
        self.group = group
        self.checkpoint_id = checkpoint_id
        self.trusted = trusted
        self.report: RestoreReport | None = None

    def state_dict(self) -> dict[str, Any]:
        """Return this rank's entries: the global states and its own per-rank states, encoded."""
        import callstate

        g = _group(self.group)
        if self.checkpoint_id is not None:
            template: dict[str, Any] = {_DCP_GLOBAL: _LoadOnly()}
            for j in _saved_ranks(self.checkpoint_id):
                template[f"{_DCP_RANK}{j}"] = _LoadOnly()
            return template
        error: BaseException | None = None
        out: dict[str, Any] = {}
        try:
            glob, mine, keys = _split(self.registry, g.rank)
            glob[MANIFEST_KEY] = _manifest_entry(g.world_size, keys)
            out = {
                _DCP_GLOBAL: callstate.dumps(cast("Mapping[str, Any]", glob)),
                f"{_DCP_RANK}{g.rank}": callstate.dumps(mine),
            }
        except Exception as exc:
            error = exc
        _agree(g, error)
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore this rank's callbacks from what DCP read into ``state_dict()``'s entries."""
        import callstate

        g = _group(self.group)
        error: BaseException | None = None
        states: dict[Hashable, Any] = {}
        try:
            for name in sorted(state_dict):
                value = state_dict[name]
                if isinstance(value, _LoadOnly):
                    continue
                states.update(callstate.read(value, lazy=True, trusted=self.trusted))
        except Exception as exc:
            error = exc
        self.report = _restore(
            self.registry,
            states,
            g,
            strict=self.strict,
            policy=self.on_world_size_change,
            source=os.fspath(self.checkpoint_id) if self.checkpoint_id is not None else None,
            error=error,
            complete_hint=" Pass checkpoint_id= to DCPState so that every rank reads every rank's states.",
        )

    def __repr__(self) -> str:
        return f"DCPState({self.registry!r})"


for _obj in (rank_key, state_dict, save, load_state_dict, load, DCPState):
    _obj.__module__ = "callstate.distributed"
