"""The callback registry: keys every callback, gathers and restores their states, loses none."""

from __future__ import annotations

import types
import warnings
import weakref
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import attrs

from .._encoding import EncodedState
from .._support import show
from ..errors import CallstateError, DuplicateKeyError, NoStateWarning, NotRegisteredError, TargetTypeError
from ._identify import aliases_of
from ._keys import MANIFEST_KEY, natural_key
from ._portrait import duplicate_error, portrait
from ._snapshot import describe
from ._spec import is_stateful, spec_of
from ._transaction import Member, RestoreReport, RestoreTransaction, Saved, _has_key, closest
from ._versions import VERSIONS_KEY, saved_version, version_of, versions_by_class

__all__ = ["CallbackRegistry", "RestoreReport", "TargetTypeError"]


@attrs.define(eq=False)
class _Entry:
    obj: object
    key: str | None  # given explicitly at registration
    aliases: tuple[str, ...]
    per_rank: bool
    last: str | None = None  # the key computed last, under which the index holds this entry


def _not_a_list(callbacks: object, what: str, *, or_states: bool = False) -> TargetTypeError | None:
    if isinstance(callbacks, Mapping):
        return TargetTypeError(
            f"{what} takes callbacks, not a mapping ({type(callbacks).__qualname__}): to restore saved "
            "states, build the registry from the callbacks, then call registry.load_state_dict(states).",
            got=type(callbacks),
        )
    if isinstance(callbacks, str | bytes | bytearray) or not isinstance(callbacks, Iterable):
        takes = "a list of callbacks"
        if or_states:
            takes = "a registry, a list of callbacks or a mapping {key: state}"
        got = type(callbacks)
        return TargetTypeError(f"{what} takes {takes}, got {got.__qualname__}.", got=got)
    return None


# Keys of callstate's own entries beside the states: a callback saved under one would be lost.
_RESERVED = (VERSIONS_KEY, MANIFEST_KEY)


def _refuse_reserved(obj: object, keys: tuple[str, ...]) -> None:
    taken = next((k for k in keys if k in _RESERVED), None)
    if taken is not None:
        raise DuplicateKeyError(
            f"{portrait(obj)}: {taken!r} is the key of callstate's own entry beside the states, so no "
            "callback can be saved or found under it: register it with another key= (or alias).",
            key=taken,
            callbacks=(obj,),
        )


class CallbackRegistry:
    """An ordered collection of callbacks, each with a unique state key.

    Keys follow the identity fields: a callback whose identity changed after registration is
    found, saved and restored under its new key. Every operation is linear in the number of
    callbacks at most; lookups by key or object take constant time (a lookup of a key nobody has
    computes the current keys once, to be sure).

    Args:
        callbacks: objects to register, in order, each under its natural key.

    Raises:
        TargetTypeError: ``callbacks`` is a mapping, a str, or not iterable.

    .. versionadded:: 0.1
    """

    def __init__(self, callbacks: Iterable[object] = ()) -> None:
        problem = _not_a_list(callbacks, "CallbackRegistry()")
        if problem is not None:
            raise problem
        self._entries: dict[int, _Entry] = {}  # by id(obj), in registration order
        self._by_key: dict[str, _Entry] = {}  # the last computed key of every entry
        self._unclaimed: dict[Hashable, Any] = {}
        self._unclaimed_versions: dict[Hashable, int] = {}  # of plain unclaimed states, when not 1
        for cb in callbacks:
            self.register(cb)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # The entries are indexed by id(obj), which a copy (pickle, copy.deepcopy) does not keep.
        self.__dict__.update(state)
        self._entries = {id(entry.obj): entry for entry in self._entries.values()}

    # -- keys -------------------------------------------------------------------------------------

    def _refresh(self, entry: _Entry) -> str:
        """Return the current key of ``entry``, and move it in the index if it changed."""
        key = entry.key if entry.key is not None else natural_key(entry.obj)
        if key != entry.last:
            if entry.last is not None and self._by_key.get(entry.last) is entry:
                del self._by_key[entry.last]
            entry.last = key
            self._by_key.setdefault(key, entry)
        return key

    def _position(self, entry: _Entry) -> int:
        # Only for messages: positions are not kept, as unregistering would shift them all.
        return next((i for i, e in enumerate(self._entries.values()) if e is entry), len(self._entries))

    def _current_keys(self) -> list[str]:
        """Return the current key of every entry, each computed once; raise DuplicateKeyError on a clash."""
        index: dict[str, _Entry] = {}
        keys = []
        for entry in self._entries.values():
            key = entry.key if entry.key is not None else natural_key(entry.obj)
            other = index.setdefault(key, entry)
            if other is not entry:
                first = (self._position(other), other.obj)
                raise duplicate_error(key, first, (self._position(entry), entry.obj))
            keys.append(key)
        # Committed only once every key is known: a failure above leaves the index as it was.
        for entry, key in zip(self._entries.values(), keys, strict=True):
            entry.last = key
        self._by_key = index
        return keys

    def _find(self, key: str) -> _Entry | None:
        entry = self._by_key.get(key)
        if entry is not None and self._refresh(entry) == key:
            return entry
        # Not where it was last seen: some identity changed, so compute every key once.
        self._current_keys()
        return self._by_key.get(key)

    def _entry(self, obj_or_key: object) -> _Entry:
        if isinstance(obj_or_key, str):
            found = self._find(obj_or_key)
            if found is None:
                close = closest(obj_or_key, list(self._by_key))
                hint = f" Closest: {', '.join(repr(c) for c in close)}." if close else ""
                raise NotRegisteredError(
                    f"No callback is registered under key {obj_or_key!r}.{hint}", key=obj_or_key
                )
            return found
        entry = self._entries.get(id(obj_or_key))
        if entry is None or entry.obj is not obj_or_key:
            raise NotRegisteredError(
                f"{describe(obj_or_key)} object {obj_or_key!r} is not registered.", key=obj_or_key
            )
        return entry

    # -- membership -------------------------------------------------------------------------------

    def register(
        self,
        obj: object,
        *,
        key: str | None = None,
        aliases: Iterable[str] = (),
        per_rank: bool | None = None,
    ) -> str:
        """Add ``obj`` and return the key its state is saved under.

        Args:
            obj: the callback. Stateless objects may be registered too; they carry no state.
            key: a key to use instead of the natural one (see ``callstate.state_key``). It belongs
                to this registry: ``registry.key_of(obj)`` returns it, ``callstate.state_key(obj)``
                does not.
            aliases: other keys its state may have been saved under (for example before an
                identity change); tried, in order, on restore when its key is not found.
            per_rank: the state differs on every rank of a distributed run (default: what
                ``@stateful(per_rank=...)`` declared, else False).

        Raises:
            DuplicateKeyError: ``obj`` is registered already, or another callback has the same key
                (as last computed; a clash made later by an identity change is raised by the next
                save or restore), or its key or an alias is one callstate keeps its own entries under
                (``"callstate:versions"``, ``"callstate:distributed"``).
            IdentityError: the natural key cannot be computed.
            VersionDeclarationError: its class's ``__callstate_version__`` is not an int from 1.
            RestoreError: a state kept from an earlier restore was delivered and
                ``load_state_dict`` raised; ``obj`` is left as it was and not registered.

        .. versionadded:: 0.1
        """
        if key is not None and not isinstance(key, str):
            raise TypeError(f"key= must be a str, got {key!r}.")
        alias_tuple = (aliases,) if isinstance(aliases, str) else tuple(aliases)
        if not all(isinstance(a, str) for a in alias_tuple):
            raise TypeError(f"aliases= must be strs, got {alias_tuple!r}.")
        new_key = key if key is not None else natural_key(obj)
        _refuse_reserved(obj, (new_key, *alias_tuple))
        if is_stateful(obj):
            version_of(type(obj))  # a malformed declaration fails here, not at the first save
        else:
            _warn_if_declared_without_state(obj, new_key)
        twin = self._entries.get(id(obj))
        if twin is None or twin.obj is not obj:
            twin = self._by_key.get(new_key)
            if twin is not None and self._refresh(twin) != new_key:
                twin = None
        if twin is not None:
            raise duplicate_error(new_key, (self._position(twin), twin.obj), (len(self._entries), obj))
        if per_rank is None:
            spec = spec_of(type(obj))
            per_rank = spec.per_rank if spec is not None else False
        entry = _Entry(obj=obj, key=key, aliases=alias_tuple, per_rank=bool(per_rank))
        if self._unclaimed and is_stateful(obj):
            self._deliver(entry, new_key)
        self._entries[id(obj)] = entry
        entry.last = new_key
        self._by_key[new_key] = entry
        return new_key

    def _deliver(self, entry: _Entry, key: str) -> None:
        """Restore a newly registered callback from the unclaimed state under its key or an alias."""
        candidates = (key, *entry.aliases, *aliases_of(entry.obj))
        source = next((k for k in candidates if k in self._unclaimed), None)
        if source is None:
            return
        aliases = (*entry.aliases, *aliases_of(entry.obj))
        member = Member(key, entry.obj, aliases)
        versions: dict[Hashable, int] | None = None
        if source in self._unclaimed_versions:
            versions = {source: self._unclaimed_versions[source]}
        saved = Saved({source: self._unclaimed[source]}, versions=versions)
        RestoreTransaction(
            saved,
            [member],
            strict=False,
            atomic=True,
            unclaimed=self._unclaimed,
            legacy=False,
            unclaimed_versions=self._unclaimed_versions,
        ).apply()

    def unregister(self, obj_or_key: object) -> object:
        """Remove a callback, given the object or its key, and return it.

        Raises:
            NotRegisteredError: nothing registered matches.
        """
        entry = self._entry(obj_or_key)
        del self._entries[id(entry.obj)]
        if entry.last is not None and self._by_key.get(entry.last) is entry:
            del self._by_key[entry.last]
        return entry.obj

    def key_of(self, obj: object) -> str:
        """Return the key ``obj``'s state is saved under in this registry (its ``key=``, if given).

        Raises:
            NotRegisteredError: ``obj`` is not registered here.
            IdentityError: the natural key cannot be computed.

        .. versionadded:: 0.1
        """
        entry = self._entries.get(id(obj))
        if entry is None or entry.obj is not obj:
            raise NotRegisteredError(f"{describe(obj)} object {obj!r} is not registered.", key=obj)
        return self._refresh(entry)

    def __contains__(self, obj_or_key: object) -> bool:
        if isinstance(obj_or_key, str):
            return self._find(obj_or_key) is not None
        entry = self._entries.get(id(obj_or_key))
        return entry is not None and entry.obj is obj_or_key

    def __getitem__(self, key: str) -> object:
        return self._entry(key).obj

    def __iter__(self) -> Iterator[object]:
        return iter([e.obj for e in self._entries.values()])

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        try:
            body = ", ".join(repr(k) for k in self._current_keys())
        except CallstateError as exc:
            body = f"<keys unavailable: {type(exc).__name__}>"
        extra = f", {len(self._unclaimed)} unclaimed" if self._unclaimed else ""
        return f"{type(self).__name__}([{body}]{extra})"

    def keys(self) -> list[str]:
        """Return the current key of every callback, in registration order."""
        return self._current_keys()

    def items(self) -> list[tuple[str, object]]:
        """Return ``(key, callback)`` pairs in registration order."""
        keys = self._current_keys()
        return list(zip(keys, (e.obj for e in self._entries.values()), strict=True))

    def is_per_rank(self, obj_or_key: object) -> bool:
        """Return whether the callback's state is saved separately for each rank."""
        return self._entry(obj_or_key).per_rank

    # -- unclaimed --------------------------------------------------------------------------------

    @property
    def unclaimed(self) -> Mapping[Hashable, Any]:
        """Saved states that no registered callback claimed, kept to be saved again (read-only).

        Values read from a callstate file stay encoded, as ``callstate.EncodedState``.
        """
        return types.MappingProxyType(self._unclaimed)

    def discard_unclaimed(self, keys: Iterable[Hashable] | None = None) -> None:
        """Drop unclaimed states on purpose: all of them, or those under ``keys``.

        Raises:
            NotRegisteredError: a key in ``keys`` is not unclaimed (nothing is dropped).
        """
        if keys is None:
            self._unclaimed.clear()
            self._unclaimed_versions.clear()
            return
        wanted = [keys] if isinstance(keys, str) else list(keys)
        absent = [k for k in wanted if not _has_key(self._unclaimed, k)]
        if absent:
            raise NotRegisteredError(
                f"Cannot discard {show(absent)}: not among the unclaimed states "
                f"{show(list(self._unclaimed), 400)}.",
                key=absent[0],
            )
        for k in wanted:
            del self._unclaimed[k]
            self._unclaimed_versions.pop(k, None)

    # -- the seam: what the front ends (callstate.load, loop, lightning, distributed, the adapters)
    # build on. Each computes every key once; none is needed to use a registry directly.

    def states_to_write(self) -> dict[Hashable, Any]:
        """Return the states a save writes: as ``state_dict()``, but kept states as their ``EncodedState``.

        A kept state is given as it was read, to be written back byte for byte.

        Raises:
            DuplicateKeyError: as ``state_dict``.
        """
        return self._gather(plain=False)

    def states_to_split(self) -> tuple[dict[Hashable, Any], list[str]]:
        """Return ``states_to_write()`` and the keys of the per-rank callbacks among them."""
        states = self._gather(plain=False)  # computes every key, and leaves each as its entry's last
        per_rank = [
            e.last for e in self._entries.values() if e.per_rank and e.last is not None and is_stateful(e.obj)
        ]
        return states, per_rank

    def members(self) -> list[Member]:
        """Return the stateful callbacks as the members of a restore, in order, each key computed once."""
        keys = self._current_keys()
        entries = zip(self._entries.values(), keys, strict=True)
        return [
            Member(key, e.obj, (*e.aliases, *aliases_of(e.obj))) for e, key in entries if is_stateful(e.obj)
        ]

    def begin_restore(
        self, saved: Saved, *, strict: bool, atomic: bool = True, keyed: Sequence[Member] | None = None
    ) -> RestoreTransaction:
        """Plan a restore from ``saved``; what nobody claims is kept among this registry's unclaimed states.

        ``keyed`` is who takes part, when the caller has it already: ``members()``, possibly after
        callbacks the registry does not hold (a Trainer's own). Nothing changes until the returned
        transaction is applied.
        """
        return RestoreTransaction(
            saved,
            self.members() if keyed is None else keyed,
            strict=strict,
            atomic=atomic,
            unclaimed=self._unclaimed,
            unclaimed_versions=self._unclaimed_versions,
        )

    # -- state ------------------------------------------------------------------------------------

    def _gather(self, *, plain: bool) -> dict[Hashable, Any]:
        keys = self._current_keys()
        out: dict[Hashable, Any] = {}
        versions: dict[Hashable, int] = {}
        version_of = versions_by_class()
        for entry, key in zip(self._entries.values(), keys, strict=True):
            obj: Any = entry.obj
            if not is_stateful(obj):
                continue
            if key == VERSIONS_KEY:
                raise DuplicateKeyError(
                    f"State key {key!r} of callback #{self._position(entry)} {portrait(obj)} is the key "
                    "callstate keeps the versions of states under: register the callback with another key=.",
                    key=key,
                    callbacks=(obj,),
                )
            if key in self._unclaimed:
                # Saving both under one key is impossible, and dropping either would lose a state.
                raise DuplicateKeyError(
                    f"State key {key!r} of callback #{self._position(entry)} {portrait(obj)} is also the "
                    "key of an unclaimed state kept from an earlier restore (its identity changed after "
                    f"that restore?): restore it with registry.load_state_dict({{{key!r}: "
                    f"registry.unclaimed[{key!r}]}}), or drop it with "
                    f"registry.discard_unclaimed([{key!r}]).",
                    key=key,
                    callbacks=(obj,),
                )
            out[key] = obj.state_dict()
            version = version_of(type(obj))
            if version != 1:
                versions[key] = version
        for kept, value in self._unclaimed.items():
            out[kept] = value.to_plain() if plain and isinstance(value, EncodedState) else value
            version = saved_version(value, self._unclaimed_versions, kept, None)
            if version != 1:
                versions[kept] = version
        if versions:
            out[VERSIONS_KEY] = versions
        return out

    def state_dict(self) -> dict[Hashable, Any]:
        """Return ``{key: state}`` for every stateful callback, then every unclaimed state.

        When a state's version (``@stateful(version=N)``) is not 1, an entry
        ``"callstate:versions"`` maps its key to its version, after the states;
        ``load_state_dict`` reads it, and a mapping without it is at version 1.

        The result is plain data: it pickles and survives ``torch.save`` then
        ``torch.load(weights_only=True)``. A state kept encoded from a callstate file is given in
        its plain form (``EncodedState.to_plain``), which ``load_state_dict`` and ``callstate.save``
        recognise, so it round-trips byte for byte.

        Raises:
            DuplicateKeyError: two callbacks' current keys collide, or a callback's current key is
                that of an unclaimed state (nothing is gathered).
        """
        return self._gather(plain=True)

    def load_state_dict(
        self,
        states: Mapping[Hashable, Any],
        *,
        strict: bool = False,
        atomic: bool = True,
        relocate: Mapping[Any, Any] | None = None,
    ) -> RestoreReport:
        """Restore every callback whose state is in ``states``; keep the states nobody claims.

        Args:
            states: ``{key: state}``, as returned by ``state_dict()`` or found in a checkpoint's
                ``"callbacks"``. Callbacks receive copies; ``states`` is never mutated.
            strict: refuse, changing nothing, if a stateful callback has no state or a state has no
                callback. Otherwise restore what matches and warn once about the rest.
            atomic: if a ``load_state_dict`` raises, give every callback restored so far in this
                call its previous state back.
            relocate: ``{old prefix: new prefix}`` for the paths inside the claimed states (see
                ``callstate.load``).

        Returns:
            A ``RestoreReport``.

        Raises:
            StateMismatchError: ``strict`` and something is missing or unexpected.
            RestoreError: a callback's ``load_state_dict`` raised (the cause is chained).
            DuplicateKeyError: two callbacks' current keys collide.

        .. versionadded:: 0.1
        """
        saved = Saved(states, relocate=relocate)
        return self.begin_restore(saved, strict=strict, atomic=atomic).apply()


# -- for the front ends (callstate.load, loop, lightning, distributed) ---------------------------------


def as_registry(target: object, *, what: str = "callstate") -> CallbackRegistry:
    """Return ``target`` if it is a registry, else a registry of the callbacks it lists.

    Raises:
        TargetTypeError: ``target`` is neither (a mapping, a str, a number...).
    """
    if isinstance(target, CallbackRegistry):
        return target
    problem = _not_a_list(target, what)
    if problem is not None:
        raise problem
    return CallbackRegistry(target)  # type: ignore[arg-type]


def as_states(target: object, *, what: str = "callstate") -> Mapping[Hashable, Any]:
    """Return the states to write for ``target``: a registry, a list of callbacks, or ``{key: state}``.

    A registry's kept ``EncodedState``s are given as they are, to be written back byte for byte.
    """
    if isinstance(target, Mapping):
        return target
    problem = None if isinstance(target, CallbackRegistry) else _not_a_list(target, what, or_states=True)
    if problem is not None:
        raise problem
    return as_registry(target, what=what).states_to_write()


# The classes warned about already: once per class, however many instances are registered.
_warned_no_state: weakref.WeakSet[type] = weakref.WeakSet()


def _warn_if_declared_without_state(obj: object, key: str) -> None:
    """Warn (once per class) when ``@stateful`` declared an identity on a class with no state to save.

    Such a callback is registered, keyed and reported as restored, yet nothing of it is saved: a
    strict resume then "succeeds" with the callback back at its initial state.
    """
    cls = type(obj)
    if spec_of(cls) is None or cls in _warned_no_state:
        return
    _warned_no_state.add(cls)
    warnings.warn(
        NoStateWarning(
            f"{key} is declared with @callstate.stateful but has no state: neither state= nor "
            f"state_dict/load_state_dict, so nothing of it is saved or restored. Declare its state "
            f"(@callstate.stateful(identity=..., state=('field', ...)) or callstate.field(state=True) "
            f"on an attrs class), or define state_dict and load_state_dict; for a callback with no state on "
            f"purpose, declare state=().",
            key=key,
            class_name=cls.__qualname__,
        ),
        stacklevel=3,
    )
