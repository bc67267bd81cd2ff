"""The restore transaction: the one way callstate puts saved states into callbacks.

A restore matches saved states to callbacks (by key, then alias, then a legacy class key), works
out what is missing and unexpected, refuses a strict mismatch before anything changes, decodes and
copies every claimed state, snapshots what it will change (once), applies, and puts everything back
if anything fails. It can take further participants (a model, an optimizer) that are restored after
the callbacks and rolled back with them, and it can be rolled back after it succeeded (a rank whose
peer failed). ``CallbackRegistry.load_state_dict``, ``callstate.load``, ``loop.load_checkpoint``,
the Lightning adapter and ``callstate.distributed`` all restore through it.
"""

from __future__ import annotations

import difflib
from collections.abc import Hashable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any

import attrs

from .._encoding import EncodedState, recognised
from .._support import escape, show, warn_user
from ..errors import CallstateWarning, RestoreError, StateMismatchError
from ._keys import key_text
from ._relocate import Relocation, relocation_of
from ._snapshot import describe, kept_in, own, snapshot
from ._versions import Plan, plan_all, run, saved_version, split, version_for


def _freeze_renamed(value: Mapping[str, Hashable]) -> Mapping[str, Hashable]:
    import types

    return types.MappingProxyType(dict(value))


def _freeze_counts(value: Mapping[str, int]) -> Mapping[str, int]:
    import types

    return types.MappingProxyType({k: int(n) for k, n in dict(value).items()})


def _freeze_migrated(value: Mapping[str, tuple[int, int]]) -> Mapping[str, tuple[int, int]]:
    import types

    return types.MappingProxyType({k: (int(a), int(b)) for k, (a, b) in dict(value).items()})


@attrs.frozen
class RestoreReport:
    """What a restore did.

    Attributes:
        restored: keys of the callbacks that received a state, in registration order.
        missing: keys of stateful callbacks for which no state was found.
        unexpected: keys of saved states that no callback claimed (kept in ``registry.unclaimed``).
        renamed: for callbacks found through an alias or a legacy key, their key -> the saved key.
        migrated: for callbacks whose saved state was at another version than their class's, their
            key -> ``(saved version, current version)``; the state went through the migrations.
        relocated: for callbacks whose saved state held paths moved by ``relocate=``, their key ->
            how many values and dict keys were rewritten.
        rollback_copy: where the copy of the previous states, kept to put them back on a failure, was
            held: ``"memory"``, ``"file"`` (a temporary file: its large buffers did not fit in the
            available memory less a margin, or ``CALLSTATE_ROLLBACK_MEMORY``), or ``"none"`` (no copy:
            ``atomic=False``, only ``@stateful`` callbacks, or nothing restored). It depends on the
            machine's free memory, so reports compare equal whatever it is.

    .. versionadded:: 0.1
    """

    restored: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    unexpected: tuple[Hashable, ...] = ()
    # A mappingproxy is unhashable: hash the report by its other fields (equal reports still hash equal).
    renamed: Mapping[str, Hashable] = attrs.field(factory=dict, converter=_freeze_renamed, hash=False)
    migrated: Mapping[str, tuple[int, int]] = attrs.field(
        factory=dict, converter=_freeze_migrated, hash=False
    )
    relocated: Mapping[str, int] = attrs.field(factory=dict, converter=_freeze_counts, hash=False)
    rollback_copy: str = attrs.field(default="none", eq=False)

    def __reduce__(self) -> tuple[Any, ...]:
        # A mappingproxy cannot be pickled; reports travel between processes.
        args = (
            self.restored,
            self.missing,
            self.unexpected,
            dict(self.renamed),
            dict(self.migrated),
            dict(self.relocated),
            self.rollback_copy,
        )
        return (RestoreReport, args)


@attrs.frozen
class Saved:
    """Saved states offered to a restore, and what is known of where they come from.

    Attributes:
        states: ``{key: state}``; values may be ``EncodedState`` (decoded only when claimed) or the
            plain form of one (``EncodedState.to_plain``).
        source: the file they were read from, named in messages.
        fresh: the values were read for this restore alone, so callbacks may take them without a copy.
        omits_empty: their writer leaves empty states out (Lightning does), so a callback whose
            current state is empty is not missing.
        versions: ``{key: version}`` carried beside ``states`` (a Lightning checkpoint's top-level
            entry), or None. A ``VERSIONS_KEY`` entry inside ``states`` and an ``EncodedState``'s info
            give versions too; a state named by none is at version 1.
        relocate: ``{old prefix: new prefix}`` (see ``Relocation``) applied to every claimed state
            after it is decoded and before its migrations run, or None. A callback whose key holds
            a path under a new prefix is also found under its key before the move (``renamed``).
        note: what the caller knows of where the states come from (a checkpoint written without
            callstate's file, states taken from a framework's own), or None. The restore says it
            once: first in its partial-restore warning or ``StateMismatchError``, else in a
            ``CallstateWarning`` of its own when applied, so that one resume warns once.
    """

    states: Mapping[Hashable, Any]
    source: str | None = None
    fresh: bool = False
    omits_empty: bool = False
    versions: Mapping[Hashable, int] | None = None
    relocate: Relocation | None = attrs.field(default=None, converter=relocation_of)
    note: str | None = None


@attrs.frozen(eq=False)
class Member:
    """A callback taking part in a restore, under its current key."""

    key: Any  # a str; a class only for Trainer callbacks keyed as Lightning < 1.5 did
    obj: Any
    aliases: tuple[str, ...] = ()


@attrs.frozen(eq=False)
class Match:
    """A member and the key of the saved state it claims."""

    member: Member
    source: Hashable


def _has_key(states: Mapping[Hashable, Any] | Iterable[Hashable], key: Hashable) -> bool:
    try:
        return key in states
    except TypeError:  # an unhashable candidate is in no mapping
        return False


def match(members: Sequence[Member], states: Mapping[Hashable, Any], *, legacy: bool = True) -> list[Match]:
    """Pair members with saved keys: by key, then alias, then (``legacy``) a class key.

    A class key (the ``__qualname__``, or the class itself, as Lightning < 1.5 saved) is tried only
    for a class with a single member: with two, nobody can tell whose state it was.
    """
    found: dict[int, Match] = {}
    taken: set[Hashable] = set()

    def claim(i: int, source: Hashable) -> None:
        found[i] = Match(members[i], source)
        taken.add(source)

    for i, m in enumerate(members):
        if _has_key(states, m.key):
            claim(i, m.key)
    for i, m in enumerate(members):
        alias = next((a for a in m.aliases if a in states and a not in taken), None)
        if i not in found and alias is not None:
            claim(i, alias)
    if legacy:
        for i in _lone_members(members):
            cls = type(members[i].obj)
            candidates: tuple[Any, ...] = (cls.__qualname__, cls)
            legacy_key = next((c for c in candidates if c not in taken and _has_key(states, c)), None)
            if i not in found and legacy_key is not None:
                claim(i, legacy_key)
    return [found[i] for i in sorted(found)]


def _lone_members(members: Sequence[Member]) -> list[int]:
    """Return the positions of the members that are the only one of their class."""
    by_class: dict[type, list[int]] = {}
    for i, m in enumerate(members):
        by_class.setdefault(type(m.obj), []).append(i)
    return [indices[0] for indices in by_class.values() if len(indices) == 1]


def _empty(state: Any) -> bool:
    # Lightning saves a callback's state only `if state_dict:`; mirror that truth test.
    try:
        return not state
    except Exception:
        return False


def closest(key: str, candidates: Iterable[Hashable]) -> list[str]:
    """Return up to three of ``candidates`` that look like ``key``, for "did you mean" hints."""
    pool = [c for c in candidates if isinstance(c, str)]
    return difflib.get_close_matches(key, pool, n=3, cutoff=0.5)


# A file may hold any number of keys: a message lists this many, and counts the rest.
_LISTED = 50
# ... and looks for the closest saved key of a missing one among at most this many.
_CLOSE_POOL = 200


def mismatch_message(
    missing: Sequence[str], unexpected: Sequence[Hashable], *, strict: bool, restored: int = 0
) -> str:
    """Describe missing and unexpected states, with the closest saved key for each missing one.

    The closing lines name the cause the keys show (``restored`` is how many states did match):
    an identity value that changed, a renamed class, a checkpoint that holds no callback states,
    callbacks new since the save, saved states of callbacks not here.
    """
    parts = []
    if missing:
        # "Did you mean" looks among the saved keys of the same class first, and at a bounded number
        # of them: difflib compares every pair, and a file may hold any number of keys.
        by_name: dict[str, list[Hashable]] = {}
        for k in unexpected:
            by_name.setdefault(_split_key(k)[0], []).append(k)
        lines = []
        for key in missing:
            pool = by_name.get(_split_key(key)[0]) or unexpected
            close = closest(key, pool[:_CLOSE_POOL]) if isinstance(key, str) else []
            hint = f" (closest saved: {', '.join(show(c) for c in close)})" if close else ""
            lines.append(f"  {key_text(key)}{hint}")
        parts.append(f"{len(missing)} stateful callback(s) have no saved state:\n" + "\n".join(lines))
    if unexpected:
        parts.append(
            f"{len(unexpected)} saved state(s) have no callback to claim them:\n"
            + "\n".join(f"  {key_text(k)}" for k in unexpected[:_LISTED])
            + (f"\n  ... and {len(unexpected) - _LISTED} more" if len(unexpected) > _LISTED else "")
        )
    head = "Strict restore refused; nothing was changed.\n" if strict else "Restore was partial.\n"
    fix = "".join(f"\n{line}" for line in _causes(missing, unexpected, restored))
    if not strict:
        fix += "\nUnclaimed states are kept and saved again; a callback registered later receives its own."
    return head + "\n".join(parts) + fix


def _noted(note: str | None, message: str) -> str:
    """``message`` after the caller's ``note`` on where the states come from, if there is one."""
    return message if note is None else f"{note}\n{message}"


def _split_key(key: Hashable) -> tuple[str, str]:
    """A str key's class name and the rest (its identity, ``@rank`` suffix included); ("", "") otherwise."""
    if not isinstance(key, str):
        return "", ""
    name, brace, rest = key.partition("{")
    return name, brace + rest


def _causes(missing: Sequence[str], unexpected: Sequence[Hashable], restored: int) -> list[str]:
    """The causes the keys show, each with its fix, one line each."""
    if missing and not unexpected and not restored:
        return [
            "The checkpoint holds no callback states: it was written without callstate (a plain "
            "framework checkpoint, or one saved before its adapter was added), so every callback "
            "starts fresh."
        ]
    # Indexed by class name and by identity: a file may hold any number of keys.
    by_name: dict[str, list[int]] = {}
    by_identity: dict[str, list[int]] = {}
    for i, k in enumerate(unexpected):
        name, identity = _split_key(k)
        by_name.setdefault(name, []).append(i)
        by_identity.setdefault(identity, []).append(i)
    changed = renamed = new = 0
    related: set[int] = set()
    for key in missing:
        name, identity = _split_key(key)
        same_class = by_name.get(name, []) if name else []
        same_identity = [i for i in by_identity.get(identity, []) if identity and i not in same_class]
        if same_class:
            changed += 1
            related.update(same_class)
        elif same_identity:
            renamed += 1
            related.update(same_identity)
        else:
            new += 1
    causes = []
    if changed:
        causes.append(
            f"{changed} callback(s) have a saved state of their class under another identity: an identity "
            "value changed. Pass the old key in aliases= when registering, or rename the key in the "
            "checkpoint (callstate rename)."
        )
    if renamed:
        causes.append(
            f"{renamed} callback(s) have a saved state with their identity under another class name: the "
            "class was renamed. Pass the old key in aliases= when registering, or rename the key in the "
            "checkpoint (callstate rename)."
        )
    if new:
        causes.append(
            f"{new} callback(s) have no state of their class saved: added since the save, they start fresh."
        )
    removed = len(unexpected) - len(related)
    if removed:
        causes.append(
            f"{removed} saved state(s) have no callback of their class here: removed since the save, or not "
            "registered (yet)."
        )
    return causes


@attrs.define(eq=False)
class _Step:
    """One object the transaction restores: a matched callback or a further participant."""

    key: Any
    obj: Any
    state: Any  # the incoming state, decoded and owned


class RestoreTransaction:
    """One restore of ``members`` from ``saved``, planned at construction, applied by ``apply``.

    Constructing it matches and checks (raising ``StateMismatchError`` if ``strict`` and anything is
    missing or unexpected); nothing changes until ``apply``. States nobody claims are kept in
    ``unclaimed`` (a registry's store), and the states that callbacks claim leave it.

    Args:
        saved: the states and what is known of them.
        members: the callbacks, in the order they are restored.
        strict: refuse a mismatch, changing nothing.
        atomic: snapshot before applying, and put every participant back if a ``load_state_dict``
            raises (and on ``roll_back``).
        unclaimed: where unclaimed states are kept.
        legacy: also match class keys (see ``match``).
        unclaimed_versions: where the versions of unclaimed states are kept (those their value
            does not carry itself, as an ``EncodedState`` does).

    Raises (at construction, before anything changes):
        StateMismatchError: ``strict`` and something is missing or unexpected.
        StateVersionError: a claimed state's version cannot be brought to its class's (it is newer
            and there is no downgrade, or a migration step is missing).
    """

    def __init__(
        self,
        saved: Saved,
        members: Sequence[Member],
        *,
        strict: bool,
        atomic: bool,
        unclaimed: MutableMapping[Hashable, Any],
        legacy: bool = True,
        unclaimed_versions: MutableMapping[Hashable, int] | None = None,
    ) -> None:
        if not isinstance(saved.states, Mapping):
            raise TypeError(
                f"load_state_dict expects a mapping of key -> state, got {type(saved.states).__qualname__}."
            )
        states, self._versions = split(saved.states, saved.versions, saved.source)
        self._states = states
        self._unclaimed_versions = unclaimed_versions if unclaimed_versions is not None else {}
        self._saved = saved
        self._atomic = atomic
        self._unclaimed = unclaimed
        relocation = saved.relocate
        if relocation is not None:
            # A key that holds a path (a checkpoint's filepath) moved with the run: its key before
            # the move is an alias.
            members = [Member(m.key, m.obj, (*m.aliases, *relocation.keys_before(m.key))) for m in members]
        self._matches = match(members, states, legacy=legacy)
        claimed = {id(m.member) for m in self._matches}
        sources = {m.source for m in self._matches}
        self.missing = tuple(
            m.key
            for m in members
            if id(m) not in claimed and not (saved.omits_empty and _empty(m.obj.state_dict()))
        )
        self.unexpected = tuple(k for k in states if k not in sources)
        if strict and (self.missing or self.unexpected):
            raise StateMismatchError(
                _noted(
                    saved.note,
                    mismatch_message(self.missing, self.unexpected, strict=True, restored=len(self._matches)),
                ),
                missing=self.missing,
                unexpected=self.unexpected,
            )
        self._plans = self._plan_versions()
        self._strict = strict
        self._others: list[_Step] = []
        self._done: list[_Step] = []
        self._previous: Sequence[Any] = ()
        self._rollback_copy = "none"
        self._undo: dict[Hashable, Any] | None = None
        self._relocated: dict[str, int] = {}

    def _plan_versions(self) -> dict[int, tuple[int, int, Plan]]:
        """Return, by match, the migrations each claimed state needs; raise if one has no way."""
        states, versions, source = self._states, self._versions, self._saved.source
        return plan_all(
            (i, type(m.member.obj), m.member.key, saved_version(states[m.source], versions, m.source, source))
            for i, m in enumerate(self._matches)
        )

    def include(self, name: str, obj: Any, state: Any) -> None:
        """Restore ``obj`` (a model, an optimizer) from ``state`` after the callbacks, atomically with them.

        ``state`` is handed over as given: the caller owns it.
        """
        self._others.append(_Step(name, obj, state))

    def _incoming(self) -> list[_Step]:
        """Decode and copy every claimed state: one that cannot be fails before anything changes."""
        steps = []
        states, fresh, relocation = self._states, self._saved.fresh, self._saved.relocate
        relocated: dict[str, int] = {}
        for i, m in enumerate(self._matches):
            value = recognised(states[m.source], self._saved.source)
            if isinstance(value, EncodedState):
                value = value.decode()
            elif not fresh:
                try:
                    value = own(value)
                except Exception as exc:
                    raise RestoreError(
                        f"The saved state for {key_text(m.member.key)} cannot be copied "
                        f"({escape(str(exc), 300)}); nothing was restored.",
                        key=m.member.key,
                    ) from exc
            if relocation is not None:
                value, count = relocation.apply(value, m.member.key)
                if count:
                    relocated[m.member.key] = count
            if i in self._plans:
                value = run(m.member.key, self._plans[i][2], value, self._saved.source)
            steps.append(_Step(m.member.key, m.member.obj, value))
        self._relocated = relocated
        return steps

    def apply(self) -> RestoreReport:
        """Restore every participant; on a failure put back those already restored and raise.

        Raises:
            RestoreError: a ``load_state_dict`` raised (the cause is chained); with ``atomic``, every
                participant has its previous state back (``rolled_back`` lists them).
            CorruptCheckpointError, UnsafeCheckpointError: a claimed state does not decode
                (nothing changed).
            MigrationError: a migration raised (nothing changed; the cause is chained).
        """
        kept = self._kept()
        steps = self._incoming() + self._others
        if self._atomic and steps:
            self._previous = snapshot([s.key for s in steps], [s.obj for s in steps])
            self._rollback_copy = kept_in(self._previous)
        for done, step in enumerate(steps):
            try:
                step.obj.load_state_dict(step.state)
            except Exception as exc:
                raise self._failed(steps, done, exc) from exc
            step.state = None  # the callback holds it now; keep no second reference
        self._done = steps
        self._keep_unclaimed(kept)
        note = self._saved.note
        if not self._strict and (self.missing or self.unexpected):
            restored = len(self._matches)
            message = mismatch_message(self.missing, self.unexpected, strict=False, restored=restored)
            warn_user(CallstateWarning(_noted(note, message)))
        elif note is not None:
            warn_user(CallstateWarning(note))
        return self.report

    @property
    def report(self) -> RestoreReport:
        """The ``RestoreReport`` of this restore (what it does, before ``apply``)."""
        return RestoreReport(
            restored=tuple(m.member.key for m in self._matches),
            missing=self.missing,
            unexpected=self.unexpected,
            renamed={m.member.key: m.source for m in self._matches if m.source != m.member.key},
            migrated={self._matches[i].member.key: (p[0], p[1]) for i, p in self._plans.items()},
            relocated=self._relocated,
            rollback_copy=self._rollback_copy,
        )

    def _kept(self) -> dict[Hashable, Any]:
        """Return the unclaimed states to keep, as they will be kept: checked before anything changes."""
        states, source, fresh = self._states, self._saved.source, self._saved.fresh
        kept = {}
        for k in self.unexpected:
            value = recognised(states[k], source)
            kept[k] = value if fresh else _own_unclaimed(value)
        return kept

    def _keep_unclaimed(self, kept: Mapping[Hashable, Any]) -> None:
        """Move claimed states out of the unclaimed ones and add ``kept``, logging what it replaced."""
        undo: dict[Hashable, Any] = {}  # key -> its previous value and version, or _ABSENT
        versions = self._unclaimed_versions
        for k in [*(m.member.key for m in self._matches), *(m.source for m in self._matches), *kept]:
            if k not in undo:
                undo[k] = (self._unclaimed.get(k, _ABSENT), versions.get(k, _ABSENT))
        for m in self._matches:
            for k in (m.member.key, m.source):
                self._unclaimed.pop(k, None)
                versions.pop(k, None)
        self._unclaimed.update(kept)
        for k in kept:
            version = version_for(self._versions, k)
            if version is None:
                versions.pop(k, None)
            else:
                versions[k] = version
        self._undo = undo

    def _failed(self, steps: list[_Step], done: int, exc: Exception) -> RestoreError:
        step = steps[done]
        noun = "callback" if not self._others else "callback and object"
        if self._atomic:
            rolled_back, failures = _put_back(steps[:done], self._previous, failed=step)
            how = (
                f"every {noun} restored in this call ({done}) has its previous state back"
                if not failures
                else "putting back the previous state failed too for "
                + ", ".join(failures)
                + ", so those objects are in an unknown state: recreate them"
            )
        else:
            rolled_back = []
            how = f"{done} {noun}(s) before it were restored and keep their new state"
        where = f" from {show(self._saved.source)}" if self._saved.source else ""
        return RestoreError(
            f"{describe(step.obj)}.load_state_dict raised {type(exc).__name__}: {escape(str(exc), 300)} "
            "while restoring "
            f"{key_text(step.key)}{where}; {how}. Fix the state or the callback, then restore again.",
            key=step.key,
            rolled_back=rolled_back,
        )

    def roll_back(self) -> None:
        """Give every participant of a successful ``apply`` its previous state, and the unclaimed states.

        Raises:
            RestoreError: the transaction was not atomic, or putting a state back failed.
        """
        if self._undo is None:
            return
        rolled_back: list[Hashable] = []
        failures: list[str] = []
        first: Hashable = ""
        if self._done:
            if not self._atomic:
                raise RestoreError(
                    "This restore was not atomic (atomic=False): there is no previous state to put back.",
                    key=self._done[0].key,
                )
            first = self._done[0].key
            rolled_back, failures = _put_back(self._done, self._previous, failed=None)
        for k, (before, version) in self._undo.items():
            _put(self._unclaimed, k, before)
            _put(self._unclaimed_versions, k, version)
        self._done, self._previous, self._undo = [], (), None
        if failures:
            raise RestoreError(
                "Rolling back a restore failed for " + ", ".join(failures) + "; those objects are in an "
                "unknown state: recreate them.",
                key=first,
                rolled_back=rolled_back,
            )


def _put_back(
    steps: list[_Step], previous: Sequence[Any], *, failed: _Step | None
) -> tuple[list[Hashable], list[str]]:
    """Give previous states back; return the keys put back and descriptions of those that could not be."""
    rolled_back: list[Hashable] = []
    failures: list[str] = []
    count = len(steps) + (failed is not None)
    try:
        before = [previous[i] for i in range(count)]  # a spilled snapshot is read back only here
    except Exception as exc:
        why = f"its previous state could not be read back: {type(exc).__name__}: {escape(str(exc), 300)}"
        keys = [s.key for s in steps] + ([failed.key] if failed is not None else [])
        return [], [f"{key_text(k)} ({why})" for k in keys]
    todo = list(zip(steps, before, strict=False))
    if failed is not None:
        # The one that raised may have changed before raising: put it back too, unless its state
        # shows no change (calling a failing load_state_dict again would likely fail again).
        try:
            changed = not equal(failed.obj.state_dict(), before[-1])
        except Exception:
            changed = True
        if changed:
            todo.append((failed, before[-1]))
    for step, state in reversed(todo):
        try:
            step.obj.load_state_dict(state)
            rolled_back.append(step.key)
        except Exception as exc:  # keep going: the others can still be put back
            failures.append(f"{key_text(step.key)} ({type(exc).__name__}: {escape(str(exc), 300)})")
    return rolled_back, failures


def equal(a: Any, b: Any) -> bool:
    """Return ``a == b`` as a bool; objects without a truthy ``==`` (arrays) are equal only if identical."""
    try:
        return bool(a == b)
    except Exception:
        # Arrays and other objects without a truthy ==: only identity is certain.
        return a is b


_ABSENT = object()


def _put(store: MutableMapping[Hashable, Any], key: Hashable, value: Any) -> None:
    if value is _ABSENT:
        store.pop(key, None)
    else:
        store[key] = value


def _own_unclaimed(value: Any) -> Any:
    if isinstance(value, EncodedState):
        return value
    try:
        return own(value)
    except Exception:
        # Kept as given rather than lost: an unclaimed state is only ever saved again.
        return value
