"""The per-rank layout of callback states: rank keys, the manifest, and what each rank restores.

Inside one ``{"callbacks": ...}`` mapping (a callstate file, a Lightning checkpoint, DCP)::

    "Counter{'what': 'epochs'}"          global state, under its usual key
    "Timer{'name': 'fwd'}@rank0"         the per-rank state of rank 0 ...
    "Timer{'name': 'fwd'}@rank1"         ... and of rank 1, one entry each
    "callstate:distributed"              {"layout": 1, "world_size": 2, "per_rank": ["Timer{'name': 'fwd'}"]}

Used by ``callstate.distributed`` and by the framework adapters.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, MutableMapping, Sequence
from typing import Any, Literal

import attrs

from .._core import (
    MANIFEST_KEY,
    RANK_SUFFIX,
    VERSIONS_KEY,
    CallbackRegistry,
    Member,
    checked_versions,
    match,
    own,
    saved_version,
)
from .._encoding import EncodedState, recognised
from .._support import escape, show
from ..errors import CorruptCheckpointError, RankMismatchError, UnsupportedFormatError
from ._group import Group, group_of

LAYOUT_VERSION = 1
"""The version of the per-rank layout written by this module."""

Policy = Literal["error", "broadcast", "reshard"]
_POLICIES = ("error", "broadcast", "reshard")
# No job has more ranks; a manifest saying so was not written by callstate.
MAX_WORLD_SIZE = 1 << 24
_MAX_LAYOUT = 1 << 16

def rank_key(key: str, rank: int) -> str:
    """Return the key under which ``rank``'s state of the per-rank callback ``key`` is saved.

    .. versionadded:: 0.1
    """
    return f"{key}@rank{rank}"


def check_policy(policy: str) -> None:
    if policy not in _POLICIES:
        choices = ", ".join(map(repr, _POLICIES))
        raise ValueError(f"on_world_size_change={policy!r}: expected one of {choices}.")


def split(registry: CallbackRegistry, rank: int) -> tuple[dict[Hashable, Any], dict[str, Any], list[str]]:
    """Return (global states, this rank's per-rank entries under their rank keys, per-rank keys)."""
    states, keys = registry.states_to_split()
    per_rank = set(keys)
    unclaimed = registry.unclaimed
    glob: dict[Hashable, Any] = {}
    mine: dict[str, Any] = {}
    for key, state in states.items():
        if isinstance(key, str) and key in per_rank:
            mine[rank_key(key, rank)] = state
        elif key in unclaimed and isinstance(key, str) and RANK_SUFFIX.search(key):
            # A per-rank state kept from an earlier restore: it travels with this rank's entries.
            mine.setdefault(key, state)
        elif key != MANIFEST_KEY:
            glob[key] = state
    return glob, mine, keys


def _complete_carried(out: Mapping[Any, Any], known: Mapping[str, None], world_size: int) -> list[str]:
    """Return the keys of kept ``key@rank<n>`` entries in ``out`` that cover exactly this world's ranks.

    The manifest names them, so the callback that comes back later finds its state under them. Kept
    entries saved at another world size are left out of it (still kept, under their rank keys):
    naming them would give old rank ``n``'s state to new rank ``n``.
    """
    ranks: dict[str, set[int]] = {}
    for key in out:
        suffix = RANK_SUFFIX.search(key) if isinstance(key, str) else None
        if suffix is not None and key[: suffix.start()] not in known:
            ranks.setdefault(key[: suffix.start()], set()).add(int(suffix[1]))
    return [k for k, found in ranks.items() if found == set(range(world_size))]


def manifest_entry(world_size: int, keys: Sequence[str]) -> dict[str, Any]:
    """Return the manifest entry for a world of ``world_size`` ranks with per-rank ``keys``."""
    return {"layout": LAYOUT_VERSION, "world_size": world_size, "per_rank": list(keys)}


def to_wire(states: Mapping[Any, Any]) -> dict[Any, Any]:
    """Return ``states`` as they travel between ranks: kept EncodedStates in their plain form."""
    return {k: v.to_plain() if isinstance(v, EncodedState) else v for k, v in states.items()}


def from_wire(states: Mapping[Any, Any], rank: int) -> dict[Any, Any]:
    """Return states received from ``rank``, the plain forms as EncodedStates again (never trusted)."""
    source = f"<state from rank {rank}>"
    return {
        k: recognised(v, source)
        for k, v in states.items()
    }


def add_gathered(out: MutableMapping[Hashable, Any], gathered: list[Any], world_size: int) -> None:
    """Add every rank's gathered per-rank entries to ``out``, and the manifest naming their keys."""
    union: dict[str, None] = {}  # ordered, and linear to add to
    for rank, (entries, rank_keys) in enumerate(gathered):
        for key, state in from_wire(entries, rank).items():
            out.setdefault(key, state)
        union.update(dict.fromkeys(rank_keys))
    union.update(dict.fromkeys(_complete_carried(out, union, world_size)))
    if world_size > 1 or union:
        # A world of one without per-rank states is a plain callstate file: a manifest would tell a
        # later resume nothing (any world size restores global states alike), and readers would
        # see it as a state. With per-rank states it stays: a resume at another size needs it.
        out[MANIFEST_KEY] = manifest_entry(world_size, list(union))


@attrs.frozen
class Manifest:
    world_size: int
    per_rank: tuple[str, ...]


def read_manifest(states: Mapping[Any, Any], source: str | None) -> Manifest | None:
    """Return the manifest of ``states``, checked; None if there is none.

    Nothing is sized by the manifest's world_size: loops over saved ranks go over the entries present.
    """
    if MANIFEST_KEY not in states:
        return None
    value = states[MANIFEST_KEY]
    if isinstance(value, EncodedState):
        value = value.decode()
    where = f" in {show(source)}" if source else ""
    layout = value.get("layout") if isinstance(value, Mapping) else None
    # A layout far past any this callstate could be behind is damage, not a newer writer's.
    if isinstance(layout, int) and LAYOUT_VERSION < layout <= _MAX_LAYOUT:
        raise UnsupportedFormatError(
            f"Entry {MANIFEST_KEY!r}{where} uses per-rank layout {layout}; this callstate reads "
            f"up to {LAYOUT_VERSION}. Upgrade callstate.",
            found=layout,
            supported=LAYOUT_VERSION,
            path=source,
            key=MANIFEST_KEY,
        )
    world_size = value.get("world_size") if isinstance(value, Mapping) else None
    per_rank = value.get("per_rank") if isinstance(value, Mapping) else None
    if (
        type(layout) is not int
        or not 1 <= layout <= LAYOUT_VERSION
        or not isinstance(world_size, int)
        or isinstance(world_size, bool)
        or world_size < 1
        or not isinstance(per_rank, list | tuple)
        or not all(isinstance(k, str) for k in per_rank)
    ):
        raise _bad_manifest(f"is not a per-rank manifest ({show(value)})", where, source)
    if world_size > MAX_WORLD_SIZE:
        raise _bad_manifest(f"says world_size {show(world_size)} (at most {MAX_WORLD_SIZE})", where, source)
    if len(set(per_rank)) != len(per_rank):
        raise _bad_manifest("names a per-rank key twice", where, source)
    return Manifest(world_size, tuple(per_rank))


def ranks_present(states: Mapping[Any, Any], manifest: Manifest) -> dict[str, list[int]]:
    """Return per-rank key -> the saved ranks whose entries are present, ascending."""
    wanted = set(manifest.per_rank)
    ranks: dict[str, list[int]] = {k: [] for k in manifest.per_rank}
    for key in states:
        found = RANK_SUFFIX.search(key) if isinstance(key, str) else None
        if found is not None and key[: found.start()] in wanted and int(found[1]) < manifest.world_size:
            ranks[key[: found.start()]].append(int(found[1]))
    for saved in ranks.values():
        saved.sort()
    return ranks


def check_entries(manifest: Manifest, present: Mapping[str, list[int]], source: str | None) -> None:
    """Refuse a manifest naming a per-rank key of which ``present`` (of a whole checkpoint) has no rank.

    Only a whole checkpoint can tell: a rank that reads its own share may lack every entry of a
    callback that only other ranks have.
    """
    missing = [k for k in manifest.per_rank if not present.get(k)]
    if missing:
        where = f" in {escape(source)!r}" if source else ""
        raise CorruptCheckpointError(
            f"Entry {MANIFEST_KEY!r}{where} names the per-rank key {show(missing[0])} "
            f"({len(missing)} such key(s) in all), but the checkpoint holds no entry "
            f"{show(rank_key(missing[0], 0))} for any rank below its world_size {manifest.world_size}: "
            "it was altered, or its per-rank entries were dropped. Remove those keys from the "
            "manifest's 'per_rank' list, or the manifest entry to load the states as global ones.",
            path=source,
            key=MANIFEST_KEY,
        )


def _bad_manifest(problem: str, where: str, source: str | None) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"Entry {MANIFEST_KEY!r}{where} {problem}; expected "
        "{'layout': 1, 'world_size': int, 'per_rank': [str, ...]} matching the per-rank entries. "
        "Remove the entry to load the states as global ones.",
        path=source,
        key=MANIFEST_KEY,
    )


def _decoded(value: Any) -> Any:
    return value.decode() if isinstance(value, EncodedState) else own(value)


def _mismatch(manifest: Manifest, world_size: int, source: str | None, fix: str) -> RankMismatchError:
    where = f"Checkpoint {show(source)}" if source else "The checkpoint"
    return RankMismatchError(
        f"{where}: per-rank states {show(list(manifest.per_rank))} were saved by {manifest.world_size} "
        f"rank(s), this run has {world_size}. {fix}",
        saved_world_size=manifest.world_size,
        world_size=world_size,
    )


_ERROR_FIX = (
    "Resume at the saved world size, or pass on_world_size_change='broadcast' (every rank gets rank 0's "
    "state) or 'reshard' (each callback's reshard(states_by_rank, world_size) decides)."
)


@attrs.frozen
class _SavedKey:
    """What a checkpoint holds of one per-rank key: its manifest, its entries, and the ranks they are of."""

    key: str
    manifest: Manifest
    states: Mapping[Any, Any]
    present: list[int]


def _resharded(saved: _SavedKey, cb: object, reading: RankRead) -> Any:
    """Return this rank's state of ``saved.key`` from its callback's ``reshard``."""
    key, manifest, states, present = saved.key, saved.manifest, saved.states, saved.present
    g, source = reading.group, reading.source
    fn = getattr(cb, "reshard", None)
    if not callable(fn):
        raise _mismatch(
            manifest,
            g.world_size,
            source,
            f"on_world_size_change='reshard' needs {type(cb).__qualname__}.reshard(states_by_rank, "
            f"world_size) returning one state per rank, for {show(key)}; define it, or use 'broadcast'.",
        )
    if len(present) < manifest.world_size:
        raise _mismatch(
            manifest,
            g.world_size,
            source,
            f"Only the states of {show(key)} from rank(s) {present[:20]} of {manifest.world_size} are "
            "available here, so it cannot be resharded.",
        )
    by_rank = [_decoded(states[rank_key(key, j)]) for j in range(manifest.world_size)]
    result = fn(by_rank, g.world_size)
    if not isinstance(result, Sequence) or isinstance(result, str | bytes) or len(result) != g.world_size:
        got = f"{len(result)} item(s)" if isinstance(result, Sequence) else type(result).__qualname__
        raise _mismatch(
            manifest,
            g.world_size,
            source,
            f"{type(cb).__qualname__}.reshard for {show(key)} returned {got}; it must return a list of "
            f"{g.world_size} states, one per rank of this run.",
        )
    return result[g.rank]


@attrs.frozen
class RankRead:
    """How this rank reads a checkpoint's states: the record every per-rank restore passes along.

    Attributes:
        group: this rank's process group.
        policy: what to do with per-rank states saved at another world size (``Policy``).
        source: the file the states came from, for messages; None for states in memory.
        hint: what a message adds when rank 0's state is not here (how to give every rank all of them).
        whole: the states are the whole checkpoint, not this rank's share of it; every per-rank key
            of its manifest must then have an entry.
    """

    group: Group
    policy: str
    source: str | None
    hint: str = ""
    whole: bool = True


def select(members: Sequence[Member], states: Mapping[Any, Any], reading: RankRead) -> dict[Any, Any]:
    """Return what this rank restores: the global states and its own per-rank ones, under their keys.

    The entries of a per-rank key that no callback claims are passed on under their rank keys, to be
    kept as unclaimed states and saved again: each by one rank, saved rank ``j`` by rank ``j % world_size``.
    """
    g, policy, source = reading.group, reading.policy, reading.source
    states = {k: recognised(v, source) for k, v in states.items()}  # plain forms, as everywhere
    manifest = read_manifest(states, source)
    if manifest is None:
        return states
    saved = manifest.world_size
    present = ranks_present(states, manifest)
    if reading.whole:
        check_entries(manifest, present, source)
    raw = {rank_key(k, j) for k, ranks in present.items() for j in ranks}
    deliver = {k: v for k, v in states.items() if k != MANIFEST_KEY and k not in raw}
    changed = bool(manifest.per_rank) and saved != g.world_size
    if changed and policy == "error":
        raise _mismatch(manifest, g.world_size, source, _ERROR_FIX)
    claimed = {m.source: m.member.obj for m in match(members, dict.fromkeys(manifest.per_rank), legacy=False)}
    origins: dict[str, str] = {}  # a claimed per-rank key -> the rank key whose saved state it delivers
    for key in manifest.per_rank:
        if key not in claimed:
            # Kept under its rank keys, as unclaimed states, by one rank each.
            for j in present[key]:
                if j % g.world_size == g.rank:
                    deliver[rank_key(key, j)] = states[rank_key(key, j)]
            continue
        state = _state_for_this_rank(_SavedKey(key, manifest, states, present[key]), claimed[key], reading)
        if state is _ABSENT and changed:
            raise _mismatch(
                manifest, g.world_size, source, f"Rank 0's state of {show(key)} is not here.{reading.hint}"
            )
        if state is not _ABSENT:
            deliver[key] = state
            origins[key] = rank_key(key, g.rank if saved == g.world_size else 0)
    return _with_versions(deliver, states, origins, source)


def _with_versions(
    deliver: dict[Any, Any], states: Mapping[Any, Any], origins: Mapping[str, str], source: str | None
) -> dict[Any, Any]:
    """Return ``deliver`` whose versions entry names each state under the key it is delivered under.

    A per-rank state is saved under ``key@rank<n>`` and its version beside it under that key (or in
    its entry's info); delivered under ``key``, it keeps that version (a resharded state: rank 0's).
    """
    versions = checked_versions(states.get(VERSIONS_KEY, {}), source)
    delivered = {k: v for k, v in versions.items() if k in deliver}
    for key, origin in origins.items():
        version = saved_version(states[origin], versions, origin, source)
        if version != 1:
            delivered[key] = version
    deliver.pop(VERSIONS_KEY, None)
    if delivered:
        deliver[VERSIONS_KEY] = delivered
    return deliver


_ABSENT = object()


def _state_for_this_rank(saved: _SavedKey, cb: object, reading: RankRead) -> Any:
    """Return the saved state this rank's callback ``cb`` of ``saved.key`` restores, or _ABSENT."""
    g = reading.group
    if saved.manifest.world_size == g.world_size:
        return saved.states.get(rank_key(saved.key, g.rank), _ABSENT)
    if reading.policy == "reshard":
        return _resharded(saved, cb, reading)
    return saved.states.get(rank_key(saved.key, 0), _ABSENT)


# -- for framework adapters ---------------------------------------------------------------------------


def gather_in_place(states: dict[Any, Any], keys: Sequence[str], group: Any = None) -> None:
    """Rewrite a checkpoint's ``{key: state}`` mapping, on every rank, into this module's layout.

    ``states`` holds this rank's states under their keys, as a framework gathered them; ``keys`` are
    the per-rank ones. Afterwards every rank's mapping is the same: global states from rank 0,
    every rank's per-rank states under rank keys, and the manifest. Collective when a process group
    of more than one rank is initialised; in a single process it only acts if a state is per rank.
    """
    g = group_of(group)
    # Only the keys with a state here: a framework leaves out empty states (Lightning does), and a
    # manifest naming a key with no rank entry is refused on load.
    keys = [k for k in keys if k in states]
    per_rank = set(keys)
    # Per-rank states kept unclaimed from an earlier restore travel with this rank's own.
    carried = {k: v for k, v in states.items() if isinstance(k, str) and RANK_SUFFIX.search(k)}
    if not g.active and not keys and not carried:
        return
    mine = {rank_key(k, g.rank): states[k] for k in keys if k in states}
    mine.update(carried)
    gathered: list[Any] = [(to_wire(mine), keys)]
    if g.active:
        gathered = [None] * g.world_size
        g.dist.all_gather_object(gathered, (to_wire(mine), keys), group=g.group)
    glob: list[Any] = [to_wire({k: v for k, v in states.items() if k not in per_rank and k not in mine})]
    if g.active:
        g.dist.broadcast_object_list(glob, group=g.group, group_src=0)
    states.clear()
    states.update(from_wire(glob[0], 0))
    add_gathered(states, gathered, g.world_size)


def rank_view(
    members: Sequence[Member], states: Mapping[Any, Any], policy: str, group: Any = None
) -> dict[Any, Any]:
    """Return what this rank restores from a checkpoint's ``{key: state}`` mapping, read by every rank.

    A mapping without the manifest is returned as it is.

    Raises:
        RankMismatchError: the world size changed and ``policy`` cannot apply.
    """
    check_policy(policy)
    if MANIFEST_KEY not in states:
        return dict(states)
    return select(members, states, RankRead(group_of(group), policy, None))


