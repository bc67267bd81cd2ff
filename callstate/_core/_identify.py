"""``identify``: more identity fields for callbacks you do not own, one instance or a whole class.

Lightning keys ``ModelCheckpoint`` by ``monitor``, ``mode`` and its intervals only, so two that
differ in ``filename`` collide, and its maintainers keep the key as it is. ``identify(ckpt,
"filename")`` gives that one instance a key with the field added, in Lightning's format; its class's
``state_key`` is wrapped once so that every reader of ``state_key`` (the Trainer's duplicate check,
its saving and loading, callstate) sees the new key, and instances not identified keep theirs. The
key the object had before is an alias, so checkpoints saved before still resume.
"""

from __future__ import annotations

from typing import Any, TypeVar

import attrs

from ..errors import IdentityError
from ._keys import check_reproducible
from ._spec import spec_of

_T = TypeVar("_T")

# Where an instance keeps its identify() record: in its own __dict__, so copies and pickles keep it.
_RECORD = "__callstate_identify__"


@attrs.frozen
class _Identity:
    fields: tuple[str, ...]
    aliases: tuple[str, ...]


_by_class: dict[type, _Identity] = {}  # the class-level form
_originals: dict[int, Any] = {}  # id(wrapping property) -> the state_key it wraps (None: __qualname__)
_wrappers: list[property] = []  # keeps the wrapping properties, so their ids stay theirs


def _record(obj: object) -> _Identity | None:
    found = getattr(obj, "__dict__", {}).get(_RECORD)
    if isinstance(found, _Identity):
        return found
    if _by_class:
        for klass in type(obj).__mro__:
            if klass in _by_class:
                return _by_class[klass]
    return None


def _base_key(obj: object, original: Any) -> Any:
    if original is None:
        return type(obj).__qualname__
    return original.__get__(obj, type(obj)) if hasattr(original, "__get__") else original


def _joined(base: Any, obj: object, identity: _Identity) -> Any:
    """Return ``base`` (``Name{...}``) with ``identity``'s fields added inside its braces."""
    if not isinstance(base, str):
        return base
    extra = {name: getattr(obj, name) for name in identity.fields}
    check_reproducible(type(obj), extra)
    text = repr(extra)
    if base.endswith("{}"):
        return base[:-2] + text
    if base.endswith("}") and "{" in base:
        return f"{base[:-1]}, {text[1:]}"
    return base + text


def _install(cls: type) -> None:
    """Wrap ``cls``'s ``state_key`` (once) so that identified instances get their longer key."""
    current = cls.__dict__.get("state_key")
    if isinstance(current, property) and id(current) in _originals:
        return
    original: Any = None
    for klass in cls.__mro__:
        if "state_key" in klass.__dict__:
            original = klass.__dict__["state_key"]
            break
    if isinstance(original, property) and id(original) in _originals:
        original = _originals[id(original)]  # a base class's wrapper: wrap what it wraps

    def state_key(self: Any) -> Any:
        base = _base_key(self, original)
        identity = _record(self)
        return base if identity is None else _joined(base, self, identity)

    state_key.__doc__ = "The key this callback's state is saved under, with callstate.identify's fields."
    prop = property(state_key)
    _originals[id(prop)] = original
    _wrappers.append(prop)
    cls.state_key = prop  # type: ignore[attr-defined]


def aliases_of(obj: object) -> tuple[str, ...]:
    """Return the keys an identified object's state may have been saved under: its key before, its aliases."""
    if not _wrappers:
        return ()
    identity = _record(obj)
    if identity is None:
        return ()
    prop = next((k.__dict__["state_key"] for k in type(obj).__mro__ if "state_key" in k.__dict__), None)
    original = _originals.get(id(prop)) if isinstance(prop, property) else None
    base = _base_key(obj, original)
    return (*((base,) if isinstance(base, str) else ()), *identity.aliases)


def identify(obj: _T, *fields: str, aliases: tuple[str, ...] | list[str] = ()) -> _T:
    """Add identity ``fields`` to the key of one callback, or of every instance of a class.

    For callbacks whose class you do not own (Lightning's ``ModelCheckpoint``, ``EarlyStopping``):
    ``callstate.identify(ckpt, "filename")`` makes the key
    ``ModelCheckpoint{'monitor': 'val_loss', ..., 'filename': 'best'}``, the key Lightning itself
    would build with the field added. Lightning's Trainer sees it too (its duplicate check, its
    saving and loading). With a class, every instance of it (and of its subclasses) gets the fields.

    The key the object had before is an alias, tried when a restore finds no state under the new
    key (through ``callstate``'s restores and ``CallstateCallback``), so checkpoints saved before
    still resume; ``aliases`` adds more.

    Args:
        obj: the callback, or a class.
        fields: attribute names to add to the key, in order.
        aliases: other keys its state may have been saved under.

    Returns:
        ``obj``.

    Raises:
        TypeError: no field, a field that is not an attribute name, an object without ``__dict__``,
            or a class whose identity is declared with ``@callstate.stateful`` (add the field there).
        IdentityError: an instance lacks a field, or a field's repr differs between processes.

    .. versionadded:: 0.1
    """
    if not fields or not all(isinstance(f, str) and f.isidentifier() for f in fields):
        raise TypeError(f"callstate.identify takes attribute names after the object, got {fields!r}.")
    alias_tuple = (aliases,) if isinstance(aliases, str) else tuple(aliases)
    if not all(isinstance(a, str) for a in alias_tuple):
        raise TypeError(f"callstate.identify(aliases=...) takes strs, got {alias_tuple!r}.")
    cls = obj if isinstance(obj, type) else type(obj)
    spec = spec_of(cls)
    if spec is not None and spec.identity_fields(cls):
        raise TypeError(
            f"{cls.__qualname__} declares its identity with @callstate.stateful: add {fields!r} to its "
            "identity= instead of calling callstate.identify."
        )
    identity = _Identity(tuple(fields), alias_tuple)
    if isinstance(obj, type):
        _install(obj)
        _by_class[obj] = identity
        return obj
    if not hasattr(obj, "__dict__"):
        raise TypeError(f"callstate.identify needs an object with a __dict__; {cls.__qualname__} has none.")
    missing = [f for f in fields if not hasattr(obj, f)]
    if missing:
        raise IdentityError(
            f"callstate.identify({cls.__qualname__}, {missing[0]!r}): the instance has no attribute "
            f"{missing[0]!r}; give the names of its attributes.",
            cls=cls,
            field=missing[0],
        )
    check_reproducible(cls, {f: getattr(obj, f) for f in fields})
    _install(cls)
    vars(obj)[_RECORD] = identity
    return obj
