"""The callback registry: keys every callback, gathers and restores their states, loses none."""

from __future__ import annotations

import copy
import difflib
import io
import pickle
import reprlib
import sys
import types
import warnings
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from typing import IO, Any, cast

import attrs

from ._encoded import EncodedState
from ._errors import (
    CallstateError,
    CallstateWarning,
    DuplicateKeyError,
    NotRegisteredError,
    RestoreError,
    StateMismatchError,
)
from ._keys import _registries, natural_key
from ._spec import is_stateful, spec_of


def _freeze_renamed(value: Mapping[str, Hashable]) -> Mapping[str, Hashable]:
    return types.MappingProxyType(dict(value))


@attrs.frozen
class RestoreReport:
    """What a restore did.

    Attributes:
        restored: keys of the callbacks that received a state, in registration order.
        missing: keys of stateful callbacks for which no state was found.
        unexpected: keys of saved states that no callback claimed (kept in ``registry.unclaimed``).
        renamed: for callbacks found through an alias or a legacy key, their key -> the saved key.

    .. versionadded:: 0.1
    """

    restored: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    unexpected: tuple[Hashable, ...] = ()
    # A mappingproxy is unhashable: hash the report by its other fields (equal reports still hash equal).
    renamed: Mapping[str, Hashable] = attrs.field(factory=dict, converter=_freeze_renamed, hash=False)

    def __reduce__(self) -> tuple[Any, ...]:
        # A mappingproxy cannot be pickled; reports travel between processes.
        return (RestoreReport, (self.restored, self.missing, self.unexpected, dict(self.renamed)))


@attrs.define(eq=False)
class _Entry:
    obj: object
    key: str | None  # given explicitly at registration
    aliases: tuple[str, ...]
    per_rank: bool


def _public_attributes(obj: object) -> dict[str, Any]:
    cls: Any = type(obj)
    if attrs.has(cls):
        return {f.name: getattr(obj, f.name, None) for f in attrs.fields(cls)}
    try:
        found = dict(vars(obj))
    except TypeError:
        found = {}
    for klass in type(obj).__mro__:
        for name in getattr(klass, "__slots__", ()):
            if hasattr(obj, name):
                found.setdefault(name, getattr(obj, name))
    return {k: v for k, v in found.items() if not k.startswith("_")}


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:
        # Arrays and other objects without a truthy ==: only identity is certain.
        return a is b


def differing_fields(a: object, b: object) -> tuple[str, ...]:
    """Return the public attribute names whose values differ between ``a`` and ``b``."""
    attrs_a, attrs_b = _public_attributes(a), _public_attributes(b)
    names = list(attrs_a) + [n for n in attrs_b if n not in attrs_a]
    return tuple(
        n for n in names if n not in attrs_a or n not in attrs_b or not _equal(attrs_a[n], attrs_b[n])
    )


def _describe(obj: object) -> str:
    return type(obj).__qualname__


_short = reprlib.Repr()
_short.maxstring = _short.maxother = 40


def _portrait(obj: object) -> str:
    """Name ``obj`` by its class and public attributes, so two look-alikes can be told apart."""
    if type(obj).__repr__ is not object.__repr__:
        return _short.repr(obj)
    fields = ", ".join(f"{k}={_short.repr(v)}" for k, v in list(_public_attributes(obj).items())[:8])
    return f"{_describe(obj)}({fields})"


def _duplicate_error(key: str, first: tuple[int, object], second: tuple[int, object]) -> DuplicateKeyError:
    (i, a), (j, b) = first, second
    if a is b:
        return DuplicateKeyError(
            f"State key {key!r}: callback #{i} {_portrait(a)} is already registered; "
            "register each object once.",
            key=key,
            callbacks=(a, b),
        )
    differ = differing_fields(a, b)
    if differ:
        fix = (
            f"the fields that differ between them are {differ!r}: add one to identity=, "
            "or pass key= explicitly."
        )
    else:
        fix = "no public attribute differs between them: pass key= explicitly."
    return DuplicateKeyError(
        f"State key {key!r} is shared by callback #{i} {_portrait(a)} and callback #{j} {_portrait(b)}; "
        f"{fix}",
        key=key,
        callbacks=(a, b),
    )


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


def _own(state: Any) -> Any:
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
        from ._tensors import reduce_tensor

        return reduce_tensor(t)
    return t.__reduce_ex__(pickle.HIGHEST_PROTOCOL)


def _snapshot(keys: list[str], objs: list[Any]) -> Sequence[Any]:
    """Return private copies of the current states of ``objs``, to roll back to."""
    states = []
    for key, obj in zip(keys, objs, strict=True):
        try:
            states.append(obj.state_dict())
        except Exception as exc:
            raise RestoreError(
                f"State key {key!r}: {_describe(obj)}.state_dict raised {type(exc).__name__}: {exc} while "
                "its current state was kept for a rollback; nothing was restored. Fix the callback, or "
                "restore with atomic=False.",
                key=key,
            ) from exc
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


def _closest(key: str, candidates: Iterable[Hashable]) -> list[str]:
    pool = [c for c in candidates if isinstance(c, str)]
    return difflib.get_close_matches(key, pool, n=3, cutoff=0.5)


def _key_text(key: Hashable) -> str:
    if isinstance(key, type):
        return f"{key.__module__}.{key.__qualname__} (a class, as Lightning < 1.5 wrote)"
    return repr(key)


def mismatch_message(missing: Sequence[str], unexpected: Sequence[Hashable], *, strict: bool) -> str:
    """Describe missing and unexpected states, with the closest saved key for each missing one."""
    parts = []
    if missing:
        lines = []
        for key in missing:
            close = _closest(key, unexpected)
            hint = f" (closest saved: {', '.join(repr(c) for c in close)})" if close else ""
            lines.append(f"  {key!r}{hint}")
        parts.append(f"{len(missing)} stateful callback(s) have no saved state:\n" + "\n".join(lines))
    if unexpected:
        parts.append(
            f"{len(unexpected)} saved state(s) have no callback to claim them:\n"
            + "\n".join(f"  {_key_text(k)}" for k in unexpected)
        )
    head = "Strict restore refused; nothing was changed.\n" if strict else "Restore was partial.\n"
    fix = ""
    if missing:
        fix = (
            "\nThe usual cause is an identity value that changed: pass the old key in aliases= when "
            "registering, or rename the key in the checkpoint (callstate rename)."
        )
    if not strict:
        fix += "\nUnclaimed states are kept and saved again; a callback registered later receives its own."
    return head + "\n".join(parts) + fix


@attrs.define(eq=False)
class _Match:
    entry: _Entry
    key: str
    source: Hashable  # key in the saved mapping


class CallbackRegistry:
    """An ordered collection of callbacks, each with a unique state key.

    Args:
        callbacks: objects to register, in order, each under its natural key.

    .. versionadded:: 0.1
    """

    def __init__(self, callbacks: Iterable[object] = ()) -> None:
        self._entries: list[_Entry] = []
        self._unclaimed: dict[Hashable, Any] = {}
        # register() computes every key again to check for a clash, which is quadratic over a long
        # list; here each key is computed once, and register() runs only to raise that clash.
        if type(self).register is not CallbackRegistry.register:  # a subclass's register() must run
            for cb in callbacks:
                self.register(cb)
            return
        keys: set[str] = set()
        objs: set[int] = set()
        for cb in callbacks:
            key = natural_key(cb)
            if key in keys or id(cb) in objs:
                self.register(cb)  # raises DuplicateKeyError naming both, as one by one would
                continue
            keys.add(key)
            objs.add(id(cb))
            spec = spec_of(type(cb))
            per_rank = spec.per_rank if spec is not None else False
            self._entries.append(_Entry(obj=cb, key=None, aliases=(), per_rank=per_rank))

    # -- membership -------------------------------------------------------------------------------

    def _key_of(self, entry: _Entry) -> str:
        return entry.key if entry.key is not None else natural_key(entry.obj)

    def _keys_checked(self) -> list[str]:
        """Return the current key of every entry; raise DuplicateKeyError on a collision."""
        keys = [self._key_of(e) for e in self._entries]
        if len(set(keys)) != len(keys):
            seen: dict[str, int] = {}
            for j, k in enumerate(keys):
                if k in seen:
                    i = seen[k]
                    raise _duplicate_error(k, (i, self._entries[i].obj), (j, self._entries[j].obj))
                seen[k] = j
        return keys

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
            key: a key to use instead of the natural one (see ``callstate.state_key``).
            aliases: other keys its state may have been saved under (for example before an
                identity change); tried, in order, on restore when its key is not found.
            per_rank: the state differs on every rank of a distributed run (default: what
                ``@stateful(per_rank=...)`` declared, else False).

        Raises:
            DuplicateKeyError: another registered callback has the same key.
            IdentityError: the natural key cannot be computed.
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
        keys = self._keys_checked()
        for i, (e, k) in enumerate(zip(self._entries, keys, strict=True)):
            if e.obj is obj or k == new_key:
                raise _duplicate_error(new_key, (i, e.obj), (len(self._entries), obj))
        if per_rank is None:
            spec = spec_of(type(obj))
            per_rank = spec.per_rank if spec is not None else False
        if key is not None:
            _registries.add(self)  # only registries with explicit keys need asking (state_key)
        entry = _Entry(obj=obj, key=key, aliases=alias_tuple, per_rank=bool(per_rank))
        if is_stateful(obj) and self._unclaimed:
            matches = self._match([entry], [new_key], self._unclaimed, legacy=False)
            if matches:
                self._restore(matches, self._unclaimed, owned=False, atomic=True)
                del self._unclaimed[matches[0].source]
        self._entries.append(entry)
        return new_key

    def unregister(self, obj_or_key: object) -> object:
        """Remove a callback, given the object or its key, and return it.

        Raises:
            NotRegisteredError: nothing registered matches.
        """
        index = self._index(obj_or_key)
        return self._entries.pop(index).obj

    def _explicit_key(self, obj: object) -> str | None:
        for e in self._entries:
            if e.obj is obj:
                return e.key
        return None

    def _index(self, obj_or_key: object) -> int:
        if isinstance(obj_or_key, str):
            keys = self._keys_checked()
            try:
                return keys.index(obj_or_key)
            except ValueError:
                close = _closest(obj_or_key, keys)
                hint = f" Closest: {', '.join(repr(c) for c in close)}." if close else ""
                raise NotRegisteredError(
                    f"No callback is registered under key {obj_or_key!r}.{hint}", key=obj_or_key
                ) from None
        for i, e in enumerate(self._entries):
            if e.obj is obj_or_key:
                return i
        raise NotRegisteredError(
            f"{_describe(obj_or_key)} object {obj_or_key!r} is not registered.", key=obj_or_key
        )

    def __contains__(self, obj_or_key: object) -> bool:
        if isinstance(obj_or_key, str):
            return obj_or_key in self._keys_checked()
        return any(e.obj is obj_or_key for e in self._entries)

    def __getitem__(self, key: str) -> object:
        return self._entries[self._index(key)].obj

    def __iter__(self) -> Iterator[object]:
        return iter([e.obj for e in self._entries])

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        try:
            body = ", ".join(repr(k) for k in self._keys_checked())
        except CallstateError as exc:
            body = f"<keys unavailable: {type(exc).__name__}>"
        extra = f", {len(self._unclaimed)} unclaimed" if self._unclaimed else ""
        return f"CallbackRegistry([{body}]{extra})"

    def keys(self) -> list[str]:
        """Return the current key of every callback, in registration order."""
        return self._keys_checked()

    def items(self) -> list[tuple[str, object]]:
        """Return ``(key, callback)`` pairs in registration order."""
        return list(zip(self._keys_checked(), (e.obj for e in self._entries), strict=True))

    def is_per_rank(self, obj_or_key: object) -> bool:
        """Return whether the callback's state is saved separately for each rank."""
        return self._entries[self._index(obj_or_key)].per_rank

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
            return
        wanted = [keys] if isinstance(keys, str) else list(keys)
        absent = [k for k in wanted if k not in self._unclaimed]
        if absent:
            raise NotRegisteredError(
                f"Cannot discard {absent!r}: not among the unclaimed states {list(self._unclaimed)!r}.",
                key=absent[0],
            )
        for k in wanted:
            del self._unclaimed[k]

    # -- state ------------------------------------------------------------------------------------

    def state_dict(self) -> dict[Hashable, Any]:
        """Return ``{key: state}`` for every stateful callback, then every unclaimed state.

        Raises:
            DuplicateKeyError: two callbacks' current keys collide, or a callback's current key is
                that of an unclaimed state (nothing is gathered).
        """
        keys = self._keys_checked()
        for i, (entry, key) in enumerate(zip(self._entries, keys, strict=True)):
            if key in self._unclaimed and is_stateful(entry.obj):
                # Saving both under one key is impossible, and dropping either would lose a state.
                raise DuplicateKeyError(
                    f"State key {key!r} of callback #{i} {_portrait(entry.obj)} is also the key of an "
                    "unclaimed state kept from an earlier restore (its identity changed after that "
                    f"restore?): restore it with registry.load_state_dict({{{key!r}: "
                    f"registry.unclaimed[{key!r}]}}), or drop it with registry.discard_unclaimed([{key!r}]).",
                    key=key,
                    callbacks=(entry.obj,),
                )
        out: dict[Hashable, Any] = {}
        for entry, key in zip(self._entries, keys, strict=True):
            obj: Any = entry.obj
            if is_stateful(obj):
                out[key] = obj.state_dict()
        out.update(self._unclaimed)
        return out

    def _stateful_entries(self) -> tuple[list[_Entry], list[str]]:
        keys = self._keys_checked()
        pairs = [(e, k) for e, k in zip(self._entries, keys, strict=True) if is_stateful(e.obj)]
        return [e for e, _ in pairs], [k for _, k in pairs]

    def _match(
        self, entries: list[_Entry], keys: list[str], states: Mapping[Hashable, Any], *, legacy: bool = True
    ) -> list[_Match]:
        """Pair callbacks with saved keys: by key, then alias, then a legacy class key."""
        matches: dict[int, _Match] = {}
        taken: set[Hashable] = set()
        for i, (e, k) in enumerate(zip(entries, keys, strict=True)):
            if k in states:
                matches[i] = _Match(e, k, k)
                taken.add(k)
        for i, (e, k) in enumerate(zip(entries, keys, strict=True)):
            if i in matches:
                continue
            for alias in e.aliases:
                if alias in states and alias not in taken:
                    matches[i] = _Match(e, k, alias)
                    taken.add(alias)
                    break
        if legacy:
            by_class: dict[type, list[int]] = {}
            for i, e in enumerate(entries):
                by_class.setdefault(type(e.obj), []).append(i)
            for cls, indices in by_class.items():
                if len(indices) != 1 or indices[0] in matches:
                    continue
                i = indices[0]
                for candidate in (cls.__qualname__, cls):
                    if candidate not in taken and _has_key(states, candidate):
                        matches[i] = _Match(entries[i], keys[i], candidate)
                        taken.add(candidate)
                        break
        return [matches[i] for i in sorted(matches)]

    def load_state_dict(
        self, states: Mapping[Hashable, Any], *, strict: bool = False, atomic: bool = True
    ) -> RestoreReport:
        """Restore every callback whose state is in ``states``; keep the states nobody claims.

        Args:
            states: ``{key: state}``, as returned by ``state_dict()`` or found in a checkpoint's
                ``"callbacks"``. Callbacks receive copies; ``states`` is never mutated.
            strict: refuse, changing nothing, if a stateful callback has no state or a state has no
                callback. Otherwise restore what matches and warn once about the rest.
            atomic: if a ``load_state_dict`` raises, give every callback restored so far in this
                call its previous state back.

        Returns:
            A ``RestoreReport``.

        Raises:
            StateMismatchError: ``strict`` and something is missing or unexpected.
            RestoreError: a callback's ``load_state_dict`` raised (the cause is chained).
            DuplicateKeyError: two callbacks' current keys collide.

        .. versionadded:: 0.1
        """
        return self._load(states, strict=strict, atomic=atomic, owned=False)

    def _load(
        self,
        states: Mapping[Hashable, Any],
        *,
        strict: bool,
        atomic: bool,
        owned: bool,
        keep: CallbackRegistry | None = None,
        never_missing: Callable[[Any], bool] | None = None,
    ) -> RestoreReport:
        """Restore from ``states``; what nobody claims is kept in ``keep`` (default: this registry).

        A callback for which ``never_missing(callback)`` is true is not reported missing (adapters:
        Lightning never saves an empty state).
        """
        if not isinstance(states, Mapping):
            raise TypeError(
                f"load_state_dict expects a mapping of key -> state, got {type(states).__qualname__}."
            )
        entries, keys = self._stateful_entries()
        matches = self._match(entries, keys, states)
        claimed = {id(m.entry) for m in matches}
        sources = {m.source for m in matches}
        missing = tuple(
            k
            for e, k in zip(entries, keys, strict=True)
            if id(e) not in claimed and not (never_missing is not None and never_missing(e.obj))
        )
        unexpected = tuple(k for k in states if k not in sources)
        if strict and (missing or unexpected):
            raise StateMismatchError(
                mismatch_message(missing, unexpected, strict=True), missing=missing, unexpected=unexpected
            )
        self._restore(matches, states, owned=owned, atomic=atomic)
        kept = {k: (states[k] if owned else _own_unclaimed(states[k])) for k in unexpected}
        unclaimed = (keep if keep is not None else self)._unclaimed
        for m in matches:
            unclaimed.pop(m.key, None)
            unclaimed.pop(m.source, None)
        unclaimed.update(kept)
        if not strict and (missing or unexpected):
            warnings.warn(mismatch_message(missing, unexpected, strict=False), CallstateWarning, stacklevel=3)
        return RestoreReport(
            restored=tuple(m.key for m in matches),
            missing=missing,
            unexpected=unexpected,
            renamed={m.key: m.source for m in matches if m.source != m.key},
        )

    def _restore(
        self, matches: list[_Match], states: Mapping[Hashable, Any], *, owned: bool, atomic: bool
    ) -> None:
        if not matches:
            return
        objs: list[Any] = [m.entry.obj for m in matches]
        previous = _snapshot([m.key for m in matches], objs) if atomic else []
        # Decode and copy everything first: a state that cannot be decoded fails before any callback
        # has changed.
        incoming = []
        for m in matches:
            value = states[m.source]
            if isinstance(value, EncodedState):
                incoming.append(value.decode())
            elif owned:
                incoming.append(value)
            else:
                try:
                    incoming.append(_own(value))
                except Exception as exc:
                    raise RestoreError(
                        f"The saved state for {m.key!r} cannot be copied ({exc}); nothing was restored.",
                        key=m.key,
                    ) from exc
        for done, (m, obj, state) in enumerate(zip(matches, objs, incoming, strict=True)):
            try:
                obj.load_state_dict(state)
            except Exception as exc:
                if atomic:
                    rolled_back, failures = _rollback(matches[:done], objs, previous, failed=(m, obj))
                    how = (
                        f"every callback restored in this call ({done}) has its previous state back"
                        if not failures
                        else "putting back the previous state failed too for "
                        + ", ".join(failures)
                        + ", so those callbacks are in an unknown state: recreate them"
                    )
                else:
                    rolled_back = []
                    how = f"{done} callback(s) before it were restored and keep their new state"
                raise RestoreError(
                    f"{_describe(obj)}.load_state_dict raised {type(exc).__name__}: {exc} while restoring "
                    f"{m.key!r}; {how}. Fix the state or the callback, then restore again.",
                    key=m.key,
                    rolled_back=rolled_back,
                ) from exc


def _rollback(
    matches: list[_Match], objs: list[Any], previous: Sequence[Any], *, failed: tuple[_Match, Any]
) -> tuple[list[str], list[str]]:
    """Give previous states back; return the keys put back and descriptions of those that could not be."""
    rolled_back: list[str] = []
    failures: list[str] = []
    try:
        previous = list(previous)  # a spilled snapshot is read back only here, when it is needed
    except Exception as exc:
        keys = [m.key for m in matches] + [failed[0].key]
        why = f"its previous state could not be read back: {type(exc).__name__}: {exc}"
        return [], [f"{k!r} ({why})" for k in keys]
    todo = list(zip(matches, objs, previous, strict=False))
    # The callback that raised may have changed before raising: put it back too, unless its state
    # shows no change (calling a failing load_state_dict again would likely fail again).
    m, obj = failed
    before = previous[len(matches)]
    try:
        changed = not _equal(obj.state_dict(), before)
    except Exception:
        changed = True
    if changed:
        todo.append((m, obj, before))
    for m, obj, state in reversed(todo):
        try:
            obj.load_state_dict(state)
            rolled_back.append(m.key)
        except Exception as exc:  # keep going: the others can still be put back
            failures.append(f"{m.key!r} ({type(exc).__name__}: {exc})")
    return rolled_back, failures


def _own_unclaimed(value: Any) -> Any:
    if isinstance(value, EncodedState):
        return value
    try:
        return _own(value)
    except Exception:
        # Kept as given rather than lost: an unclaimed state is only ever saved again.
        return value


def _has_key(states: Mapping[Hashable, Any], key: Hashable) -> bool:
    try:
        return key in states
    except TypeError:
        return False


CallbackRegistry.__module__ = "callstate"
RestoreReport.__module__ = "callstate"
