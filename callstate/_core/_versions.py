"""State schema versions: the version of a class's state, migrations between versions, and the plan
that brings a saved state to the version its class declares today.

A class declares the version of its state with ``@callstate.stateful(version=N)`` (or, undecorated,
a class attribute ``__callstate_version__ = N``); one that declares none is at version 1, and so is
every state saved before versions existed. Versions travel beside the states, never inside them:

- in a ``{key: state}`` mapping (``registry.state_dict()``, ``callstate.read``, a ``.pt`` file's
  ``"callbacks"``, a per-rank layout): an entry ``VERSIONS_KEY`` = ``{key: N}`` naming the states
  whose version is not 1, present only when there is one (no callback key contains ``:``);
- in a callstate file: the entry's info ``{"version": "N"}``, only when N is not 1;
- in a Lightning checkpoint: a top-level ``VERSIONS_KEY`` entry, which Lightning ignores.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, TypeVar, cast

from .._encoding import EncodedState
from .._support import escape, show
from ..errors import CorruptCheckpointError, MigrationError, StateVersionError, VersionDeclarationError
from ._keys import RANK_SUFFIX, key_text
from ._spec import spec_of

VERSIONS_KEY = "callstate:versions"
"""The key of the ``{key: version}`` entry beside the states of a mapping or a Lightning checkpoint."""

INFO_KEY = "version"
"""The key of an entry's version in its info in a callstate file."""

_VERSION_ATTR = "__callstate_version__"
# A version in a file is a decimal number of at most 9 digits; nothing else is one.
_VERSION_TEXT = re.compile(r"[1-9][0-9]{0,8}", re.ASCII)
_MAX_VERSION = 10**9 - 1

Migration = Callable[[Any], Any]
_NONE = object()
_F = TypeVar("_F", bound=Migration)

# class -> {(from, to): function}; classes defined and dropped (in tests) take their migrations along.
_MIGRATIONS: weakref.WeakKeyDictionary[type, dict[tuple[int, int], Migration]] = weakref.WeakKeyDictionary()
# Classes that declared a version or have migrations: the command line finds a key's class among them.
_VERSIONED: weakref.WeakSet[type] = weakref.WeakSet()


def versions_by_class() -> Callable[[type], int]:
    """Return ``version_of``, remembering each class's answer: for one pass over many callbacks."""
    known: dict[type, int] = {}

    def version(cls: type) -> int:
        found = known.get(cls)
        if found is None:
            found = known[cls] = version_of(cls)
        return found

    return version


def check_version(value: object, what: str) -> int:
    """Return ``value`` if it is a version (an int from 1), else raise TypeError or ValueError."""
    if type(value) is not int:
        raise TypeError(f"{what} must be an int from 1, got {value!r}.")
    if not 1 <= value <= _MAX_VERSION:
        raise ValueError(f"{what} must be an int from 1 to {_MAX_VERSION}, got {value!r}.")
    return value


def declare(cls: type) -> None:
    """Record that ``cls`` declared a version, so the command line can find it by name."""
    _VERSIONED.add(cls)


def version_of(cls: type) -> int:
    """Return the version of ``cls``'s state: declared with ``@stateful(version=)``, else 1.

    An undecorated class may declare it with a class attribute ``__callstate_version__``.

    Raises:
        VersionDeclarationError: that attribute is not an int from 1.
    """
    spec = spec_of(cls)
    if spec is not None and spec.version is not None:
        return spec.version
    declared = getattr(cls, _VERSION_ATTR, None)
    if declared is None:
        return 1
    try:
        return check_version(declared, f"{cls.__module__}.{cls.__qualname__}.{_VERSION_ATTR}")
    except (TypeError, ValueError) as exc:
        raise VersionDeclarationError(
            f"{exc} Declare it as an int (__callstate_version__ = 2), or use @callstate.stateful(version=2).",
            cls=cls,
            value=declared,
        ) from None


def migration(cls: type, *, from_version: int, to_version: int | None = None) -> Callable[[_F], _F]:
    """Register the decorated function as the migration of ``cls``'s state from ``from_version``.

    The function takes a state saved at ``from_version`` and returns it at ``to_version``
    (default ``from_version + 1``; ``from_version - 1`` registers a downgrade). On restore, a state
    saved at version K of a class at version N goes through every step from K to N before its
    ``load_state_dict`` sees it. The function receives a state of its own, which it may change in
    place; it must return the new state. Subclasses use their bases' migrations for the steps they
    register none for.

    Raises:
        TypeError, ValueError: ``cls`` is not a class, a version is not an int from 1, the step is
            not one version up or down, or this step of ``cls`` has a migration already.

    .. versionadded:: 0.1
    """
    if not isinstance(cls, type):
        raise TypeError(f"callstate.migration(cls, ...) takes the class whose state it migrates: {cls!r}.")
    start = check_version(from_version, "from_version")
    end = check_version(start + 1 if to_version is None else to_version, "to_version")
    if abs(end - start) != 1:
        raise ValueError(
            f"callstate.migration({cls.__qualname__}, from_version={start}, to_version={end}): a migration "
            f"is one step, to {start + 1} (or {start - 1}, a downgrade); register each step separately."
        )

    def register(fn: _F) -> _F:
        if not callable(fn):
            raise TypeError(f"callstate.migration decorates a function, not {fn!r}.")
        steps = _MIGRATIONS.setdefault(cls, {})
        if (start, end) in steps:
            raise ValueError(
                f"{cls.__qualname__} has a migration from version {start} to {end} already "
                f"({_name(steps[start, end])}); {_name(fn)} would replace it. Register one function per step."
            )
        steps[start, end] = fn
        _VERSIONED.add(cls)
        return fn

    return register


def _name(fn: object) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _step(cls: type, start: int, end: int) -> Migration | None:
    for klass in cls.__mro__:
        fn = _MIGRATIONS.get(klass, {}).get((start, end))
        if fn is not None:
            return fn
    return None


Plan = tuple[tuple[int, int, Migration], ...]


def plan(cls: type, key: Hashable, saved: int, current: int) -> Plan:
    """Return the steps that take a state of ``cls`` from ``saved`` to ``current`` (none if equal).

    Raises:
        StateVersionError: a step has no migration (for a newer saved state: no downgrade).
    """
    direction = 1 if current >= saved else -1
    steps = []
    for start in range(saved, current, direction):
        fn = _step(cls, start, start + direction)
        if fn is None:
            raise _no_step(cls, key, saved, current, (start, start + direction))
        steps.append((start, start + direction, fn))
    return tuple(steps)


def _no_step(cls: type, key: Hashable, saved: int, current: int, step: tuple[int, int]) -> StateVersionError:
    name = cls.__qualname__
    if saved > current:
        problem = (
            f"was saved by version {saved} of {name}'s state, newer than the version {current} that "
            f"{name} declares here"
        )
        fix = (
            f"Run the code that saved it (upgrade), or register a downgrade: "
            f"@callstate.migration({name}, from_version={step[0]}, to_version={step[1]})."
        )
    else:
        problem = (
            f"was saved at version {saved} and {name} is at version {current}, but no migration "
            f"from {step[0]} to {step[1]} is registered"
        )
        fix = f"Register it: @callstate.migration({name}, from_version={step[0]}) on a function of the state."
    return StateVersionError(
        f"State {key_text(key)} {problem}; nothing was changed. {fix}",
        key=key,
        saved=saved,
        current=current,
        step=step,
    )


_Tag = TypeVar("_Tag", bound=Hashable)


def plan_all(states: Iterable[tuple[_Tag, type, Hashable, int]]) -> dict[_Tag, tuple[int, int, Plan]]:
    """Return, by tag, ``(saved, current, steps)`` for each state whose class is at another version.

    ``states`` gives ``(tag, class, key, saved version)`` for each state to bring to its class's
    version: the one planner of a restore (tags: matches) and of ``callstate migrate`` (tags: keys).

    Raises:
        StateVersionError: a state is newer than its class, or a step has no migration; every such
            state is named at once.
    """
    plans: dict[_Tag, tuple[int, int, Plan]] = {}
    problems = []
    version = versions_by_class()
    for tag, cls, key, saved in states:
        current = version(cls)
        if saved != current:
            try:
                plans[tag] = (saved, current, plan(cls, key, saved, current))
            except StateVersionError as exc:
                problems.append(exc)
    if problems:
        raise at_once(problems)
    return plans


def at_once(problems: list[StateVersionError]) -> StateVersionError:
    """Return one error naming every problem; its attributes are those of the first."""
    first = problems[0]
    if len(problems) == 1:
        return first
    others = "\n".join(f"  {p}" for p in problems[1:])
    return StateVersionError(
        f"{first}\n{len(problems) - 1} more state(s) cannot be brought to their classes' versions:\n{others}",
        key=first.key,
        saved=first.saved,
        current=first.current,
        step=first.step,
    )


def run(key: Hashable, steps: Plan, state: Any, source: str | None) -> Any:
    """Return ``state`` taken through ``steps``.

    Raises:
        MigrationError: a step raised or returned None (the cause is chained).
    """
    for start, end, fn in steps:
        try:
            state = fn(state)
        except Exception as exc:
            what = f"raised {type(exc).__name__}: {escape(str(exc), 300)}"
            raise _failed(key, source, (start, end), fn, what) from exc
        if state is None:
            raise _failed(key, source, (start, end), fn, "returned None (it must return the new state)")
    return state


def _failed(
    key: Hashable, source: str | None, step: tuple[int, int], fn: Migration, what: str
) -> MigrationError:
    where = f" from {show(source)}" if source else ""
    return MigrationError(
        f"Migrating state {key_text(key)}{where} from version {step[0]} to {step[1]}: {_name(fn)} {what}. "
        "Nothing was changed; fix the migration, then restore again.",
        key=key,
        step=step,
    )




# -- where versions travel ------------------------------------------------------------------------------


def split(
    states: Mapping[Hashable, Any], extra: object, source: str | None
) -> tuple[Mapping[Hashable, Any], dict[Hashable, int]]:
    """Return ``states`` without their ``VERSIONS_KEY`` entry, and the versions it and ``extra`` give.

    ``extra`` is a versions mapping carried elsewhere (a Lightning checkpoint's top level), or None;
    both are checked: a malformed one is a ``CorruptCheckpointError`` naming ``source``.
    """
    versions: dict[Hashable, int] = {}
    if extra is not None:
        versions.update(checked_versions(extra, source))
    try:
        inside = VERSIONS_KEY in states
    except TypeError:
        inside = False
    if not inside:
        return states, versions
    versions.update(checked_versions(states[VERSIONS_KEY], source))
    return {k: v for k, v in states.items() if k != VERSIONS_KEY}, versions


def checked_versions(value: object, source: str | None) -> dict[Hashable, int]:
    """Return ``value`` as ``{key: version}``, or raise CorruptCheckpointError naming ``source``."""
    problem = versions_problem(value)
    if problem is None:
        return dict(cast("Mapping[Hashable, int]", value))
    where = f"{escape(source)}: " if source else ""
    raise CorruptCheckpointError(
        f"{where}the entry {VERSIONS_KEY!r} {problem}, not a mapping of state key -> version (an int "
        f"from 1 to {_MAX_VERSION}). Remove it to load every state as version 1.",
        path=source,
        key=VERSIONS_KEY,
    )


def versions_problem(value: object) -> str | None:
    """Return what is wrong with ``value`` as a ``{key: version}`` mapping ("is a str"), or None."""
    if not isinstance(value, Mapping):
        return f"is a {type(value).__qualname__}"
    bad = next((v for v in value.values() if not (type(v) is int and 1 <= v <= _MAX_VERSION)), _NONE)
    if bad is _NONE:
        return None
    # Named by type or a short repr only: a hostile value's repr may be huge.
    shown = show(bad, 40) if type(bad) in (int, bool, float) else f"a {escape(type(bad).__qualname__, 40)}"
    return f"holds the version {shown}"


def refuse_entry(keys: Iterable[str], source: str | None) -> None:
    """Raise CorruptCheckpointError if a callstate file has an entry under ``VERSIONS_KEY``.

    No writer puts one there (a file keeps versions in its entries' infos): read as a mapping, it
    would pass for a versions table.
    """
    if VERSIONS_KEY in keys:
        where = f"{escape(source)}: " if source else ""
        raise CorruptCheckpointError(
            f"{where}it has an entry under the reserved key {VERSIONS_KEY!r}, which callstate never "
            "writes into a file (a file keeps versions in its entries' infos): the file was altered or "
            "crafted. Restore it from a copy.",
            path=source,
            key=VERSIONS_KEY,
        )


def info_version(info: Mapping[str, str], source: str | None, key: str) -> int:
    """Return the version an entry's info records (1 if none); raise CorruptCheckpointError if malformed."""
    version = entry_version(info)
    if version is None:
        where = f"{escape(source)}, entry {show(key)}" if source else f"Entry {show(key)}"
        raise CorruptCheckpointError(
            f"{where}: its version {show(info.get(INFO_KEY), 40)} is not a number from 1 to {_MAX_VERSION}. "
            "The file is damaged or was altered; restore it from a copy.",
            path=source,
            key=key,
        )
    return version


def entry_version(info: Mapping[str, str]) -> int | None:
    """Return the version an entry's info records (1 if none), or None if it is malformed."""
    text = info.get(INFO_KEY)
    if text is None:
        return 1
    if type(text) is not str or _VERSION_TEXT.fullmatch(text) is None:
        return None
    return int(text)


def rank_base(key: str) -> str:
    """Return ``key`` without a per-rank suffix ``@rank<n>``."""
    found = RANK_SUFFIX.search(key)
    return key if found is None else key[: found.start()]


def version_for(versions: Mapping[Hashable, int], key: Hashable) -> int | None:
    """Return the version ``versions`` gives the state under ``key``, if it names it.

    A per-rank entry ``key@rank<n>`` has the version of ``key``.
    """
    try:
        found = versions.get(key)
    except TypeError:  # an unhashable key is named by no mapping
        return None
    if found is None and isinstance(key, str) and "@" in key and RANK_SUFFIX.search(key):
        found = versions.get(rank_base(key))
    return found


def saved_version(value: Any, versions: Mapping[Hashable, int], key: Hashable, source: str | None) -> int:
    """Return the version of the saved state ``value`` under ``key``: from ``versions``, its info, else 1."""
    found = version_for(versions, key)
    if found is not None:
        return found
    if isinstance(value, EncodedState):
        return info_version(value.info, source, value.key)
    if type(value) is dict and EncodedState.PLAIN_TAG in value and type(value.get("info")) is dict:
        return info_version(value["info"], source, str(value.get("key")))
    return 1


def with_version(info: Mapping[str, str], version: int) -> dict[str, str]:
    """Return an entry's ``info`` recording ``version`` (nothing for version 1)."""
    out = {k: v for k, v in info.items() if k != INFO_KEY}
    if version != 1:
        out[INFO_KEY] = str(version)
    return out


def stamp(entries: Iterable[tuple[Any, ...]], versions: Mapping[Hashable, int]) -> list[Any]:
    """Return encoded file entries ``(key, codec, parts, crc, info)``, each recording its version in info.

    An entry ``versions`` does not name keeps the info it has (a kept state keeps its version).
    """
    out: list[Any] = []
    for entry in entries:
        version = version_for(versions, entry[0]) if versions else None
        if version is not None:
            entry = (*entry[:4], with_version(entry[4], version))
        out.append(entry)
    return out


def classes_named(name: str) -> list[type]:
    """Return the versioned classes (declared or with migrations) whose ``__qualname__`` is ``name``."""
    return [cls for cls in list(_VERSIONED) if cls.__qualname__ == name]
