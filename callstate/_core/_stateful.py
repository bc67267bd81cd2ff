"""The ``@callstate.stateful`` decorator: a class's declaration, and the methods and key it generates.

The declaration itself (``Spec``) is in ``_spec``, which the keys and versions read; this module
builds on both, so it sits above them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar, overload

import attrs

from ..errors import InvalidStateError
from ._keys import declared_key
from ._spec import METADATA_KEY, SPEC_ATTR, Spec, mark_generated, spec_of
from ._versions import check_version, declare

_T = TypeVar("_T", bound=type)


def _names(value: Iterable[str] | None, what: str, cls: type) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        raise TypeError(
            f"@callstate.stateful({what}={value!r}) on {cls.__qualname__}: {what}= takes a tuple of "
            f"attribute names; write {what}=({value!r},)."
        )
    names = tuple(value)
    bad = [n for n in names if not isinstance(n, str) or not n.isidentifier()]
    if bad:
        raise TypeError(
            f"@callstate.stateful({what}=...) on {cls.__qualname__}: {bad!r} are not attribute names."
        )
    if len(set(names)) != len(names):
        raise TypeError(f"@callstate.stateful({what}={names!r}) on {cls.__qualname__} repeats a name.")
    return names


def _pending_state_fields(cls: type) -> bool:
    """Return whether ``cls``, not yet an attrs class, holds ``callstate.field(state=True)``s.

    Happens when ``@stateful`` sits below ``@attrs.define``: attrs turns the class into an attrs
    class afterwards, and the generated methods read the fields then.
    """
    if attrs.has(cls):
        return False
    for value in vars(cls).values():
        metadata = getattr(value, "metadata", None)
        if isinstance(metadata, Mapping) and metadata.get(METADATA_KEY, {}).get("state", False):
            return True
    return False


def _make_state_key_property() -> property:
    def state_key(self: Any) -> str:
        key = declared_key(self)
        if key is not None:
            return key
        # No identity declared: defer to what the class would have had without the decorator.
        found = False
        for klass in type(self).__mro__:
            attr = klass.__dict__.get("state_key")
            if found and attr is not None:
                value = attr.__get__(self, type(self)) if hasattr(attr, "__get__") else attr
                return value  # type: ignore[no-any-return]
            if attr is prop:
                found = True
        return type(self).__qualname__

    state_key.__doc__ = "The key this callback's state is saved under (see ``callstate.state_key``)."
    prop = property(state_key)
    return prop


def _make_state_methods(cls: type, spec: Spec) -> tuple[Callable[..., Any], Callable[..., Any]]:
    def state_dict(self: Any) -> dict[str, Any]:
        names = spec.state_fields(type(self))
        try:
            return {name: getattr(self, name) for name in names}
        except AttributeError as exc:
            raise InvalidStateError(
                f"{type(self).__qualname__} declares state fields {names!r}, but an instance lacks one "
                f"({exc}): set every state field in __init__.",
                cls=type(self),
            ) from exc

    def load_state_dict(self: Any, state: Mapping[str, Any]) -> None:
        names = spec.state_fields(type(self))
        if not isinstance(state, Mapping):
            raise InvalidStateError(
                f"{type(self).__qualname__}.load_state_dict expects a mapping of {names!r}, got "
                f"{type(state).__qualname__}.",
                cls=type(self),
            )
        unknown = [k for k in state if k not in names]
        if unknown:
            # Named without repr() of anything but short strs: a state read from a file may hold keys
            # whose repr is huge (a shared frozenset DAG), and this message must not walk them.
            shown = [k[:60] if isinstance(k, str) else f"<a {type(k).__qualname__}>" for k in unknown[:10]]
            raise InvalidStateError(
                f"{type(self).__qualname__}.load_state_dict got fields {shown!r} that are not among its "
                f"declared state {names!r}: add them to state=, or drop them from the saved state.",
                cls=type(self),
                unknown=unknown,
            )
        for name in names:
            if name in state:
                object.__setattr__(self, name, state[name])

    state_dict.__qualname__ = f"{cls.__qualname__}.state_dict"
    load_state_dict.__qualname__ = f"{cls.__qualname__}.load_state_dict"
    mark_generated(state_dict, load_state_dict)
    return state_dict, load_state_dict


# The generated state methods: state_dict returns a new dict of the fields' values, and
@overload
def stateful(cls: _T, /) -> _T: ...


@overload
def stateful(
    *,
    identity: Iterable[str] | None = None,
    state: Iterable[str] | None = None,
    per_rank: bool | None = None,
    version: int | None = None,
) -> Callable[[_T], _T]: ...


def stateful(
    cls: _T | None = None,
    /,
    *,
    identity: Iterable[str] | None = None,
    state: Iterable[str] | None = None,
    per_rank: bool | None = None,
    version: int | None = None,
) -> _T | Callable[[_T], _T]:
    """Declare a callback class's identity and, optionally, its state.

    Args:
        identity: attribute names that tell instances of the class apart. The class gets a
            ``state_key`` property, ``Name{'field': value, ...}``, exactly as Lightning's
            ``Callback._generate_state_key`` builds it. On an attrs class, fields made with
            ``callstate.field(identity=True)`` are used when ``identity`` is not given.
        state: attribute names to save; ``state_dict``/``load_state_dict`` are generated from them.
            The class must define neither. On an attrs class, ``callstate.field(state=True)`` works too.
        per_rank: the state differs between the ranks of a distributed run and is saved for each.
        version: the version of the state's shape (default: the base class's, else 1). Raise it
            when the state changes shape, and register a ``callstate.migration`` for each step: a
            state saved at an older version is migrated before ``load_state_dict`` sees it.

    Returns:
        The class itself, decorated.

    .. versionadded:: 0.1
    """

    if version is not None:
        check_version(version, "@callstate.stateful(version=...)")

    def wrap(klass: _T) -> _T:
        if not isinstance(klass, type):
            raise TypeError(f"@callstate.stateful decorates a class, not {klass!r}.")
        parent = spec_of(klass)
        if version is not None:
            declare(klass)
        ident = _names(identity, "identity", klass)
        st = _names(state, "state", klass)
        spec = Spec(
            identity=ident if ident is not None else (parent.identity if parent else None),
            state=st if st is not None else (parent.state if parent else None),
            per_rank=per_rank if per_rank is not None else (parent.per_rank if parent else False),
            version=version if version is not None else (parent.version if parent else None),
            # A subclass of a class declared with declare_class keeps its computed identity.
            identity_of=parent.identity_of if parent is not None and ident is None else None,
        )
        setattr(klass, SPEC_ATTR, spec)
        klass.state_key = _make_state_key_property()  # type: ignore[attr-defined]
        wants_state = (
            st is not None or bool(spec.fields_marked(klass, "state")) or _pending_state_fields(klass)
        )
        if wants_state:
            own = [m for m in ("state_dict", "load_state_dict") if m in klass.__dict__]
            if own:
                raise TypeError(
                    f"@callstate.stateful(state=...) on {klass.__qualname__} generates state_dict and "
                    f"load_state_dict, but the class defines {own}: remove state=, or remove those methods."
                )
            sd, lsd = _make_state_methods(klass, spec)
            klass.state_dict = sd  # type: ignore[attr-defined]
            klass.load_state_dict = lsd  # type: ignore[attr-defined]
        return klass

    if cls is not None:
        return wrap(cls)
    return wrap
