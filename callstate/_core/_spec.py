"""Declaring what a callback is (identity) and what it keeps (state): ``stateful`` and ``field``."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar, runtime_checkable

import attrs

_T = TypeVar("_T", bound=type)
METADATA_KEY = "callstate"
SPEC_ATTR = "__callstate_spec__"


@runtime_checkable
class Stateful(Protocol):
    """An object whose state callstate saves: it has ``state_dict()`` and ``load_state_dict(state)``."""

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any, /) -> Any: ...


def is_stateful(obj: object) -> bool:
    """Return whether ``obj`` has callable ``state_dict`` and ``load_state_dict``."""
    return callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))


@attrs.frozen
class Spec:
    """What ``@stateful`` declared on a class; ``None`` means: read it from attrs field metadata."""

    identity: tuple[str, ...] | None
    state: tuple[str, ...] | None
    per_rank: bool
    version: int | None = None  # None: not declared (version 1, or the class's __callstate_version__)
    # For a class declared with declare_class: its identity fields computed from an instance, when
    # they are not attributes as they stand (Keras keeps mode="auto" where the key says "min").
    identity_of: Callable[[Any], Mapping[str, Any]] | None = attrs.field(default=None, kw_only=True)
    _resolved: dict[tuple[type, str], tuple[str, ...]] = attrs.field(factory=dict, eq=False, repr=False)

    def fields_marked(self, cls: type, what: str) -> tuple[str, ...]:
        try:
            return self._resolved[cls, what]
        except KeyError:
            pass
        if not attrs.has(cls):
            # Not cached: attrs may still turn this very class into an attrs class.
            return ()
        names = tuple(
            f.name for f in attrs.fields(cls) if f.metadata.get(METADATA_KEY, {}).get(what, False)
        )
        self._resolved[cls, what] = names
        return names

    def identity_fields(self, cls: type) -> tuple[str, ...]:
        """Return the identity attribute names for instances of ``cls``, in declared order."""
        if self.identity is not None:
            return self.identity
        return self.fields_marked(cls, "identity")

    def state_fields(self, cls: type) -> tuple[str, ...]:
        """Return the attribute names a generated ``state_dict`` saves."""
        if self.state is not None:
            return self.state
        return self.fields_marked(cls, "state")


# Declarations of classes that callstate's users do not own (a framework's built-in callbacks),
# kept here rather than set on the classes: declaring one never changes another library's class.
_DECLARED: weakref.WeakKeyDictionary[type, Spec] = weakref.WeakKeyDictionary()


def declare_class(
    cls: type, *, identity_of: Callable[[Any], Mapping[str, Any]], state: tuple[str, ...] = ()
) -> None:
    """Declare the identity (and state fields) of a class you do not own, without changing it.

    ``identity_of(instance)`` returns the identity fields, in key order; ``callstate.state_key`` of
    an instance (or of a subclass's, unless ``@stateful`` declares it) is then built from them in
    Lightning's format. A later declaration of ``cls`` replaces an earlier one.
    """
    _DECLARED[cls] = Spec(identity=None, state=state or None, per_rank=False, identity_of=identity_of)


def spec_of(cls: type) -> Spec | None:
    """Return the declaration of ``cls`` or a base class (``@stateful``, else ``declare_class``), if any."""
    spec = getattr(cls, SPEC_ATTR, None)
    if isinstance(spec, Spec):
        return spec
    if _DECLARED:
        for klass in cls.__mro__:
            found = _DECLARED.get(klass)
            if found is not None:
                return found
    return None


# load_state_dict checks everything, then rebinds fields, never writing into a value it replaces.
_GENERATED: weakref.WeakSet[Callable[..., Any]] = weakref.WeakSet()


def rebinds_only(obj: object) -> bool:
    """Return whether ``obj``'s state methods are the generated ones, which never change a previous value.

    Its previous state then stays as it was through a restore, so a rollback needs no copy of it.
    """
    methods = (getattr(obj, "state_dict", None), getattr(obj, "load_state_dict", None))
    return all(getattr(m, "__func__", None) in _GENERATED for m in methods)


def mark_generated(*methods: Callable[..., Any]) -> None:
    """Record ``methods`` as generated state methods (see ``rebinds_only``)."""
    _GENERATED.update(methods)


def field(*, identity: bool = False, state: bool = False, **kwargs: Any) -> Any:
    """Return an ``attrs.field`` marked as part of the class's identity and/or its saved state.

    Use on an attrs class decorated with a bare ``@callstate.stateful``; other keyword arguments go
    to ``attrs.field``.

    .. versionadded:: 0.1
    """
    metadata = dict(kwargs.pop("metadata", None) or {})
    metadata[METADATA_KEY] = {"identity": identity, "state": state}
    return attrs.field(metadata=metadata, **kwargs)
