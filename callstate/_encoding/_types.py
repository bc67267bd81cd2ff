"""User types the data codec writes as a registered name plus plain data (``callstate.register_type``)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import attrs

from ..errors import TypeRegistrationError
from ._native import is_native

# A file stores the name's length in one byte: 200 bytes of UTF-8 leaves room below 255.
_NAME_MAX = 200


@attrs.frozen
class RegisteredType:
    """One registration: how instances of ``cls`` become plain data and come back."""

    cls: type
    name: str
    to_data: Callable[[Any], Any]
    from_data: Callable[[Any], Any]


_lock = threading.Lock()
_by_class: dict[type, RegisteredType] = {}
_by_name: dict[str, RegisteredType] = {}


def default_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_type(
    cls: type,
    *,
    to_data: Callable[[Any], Any],
    from_data: Callable[[Any], Any],
    name: str | None = None,
) -> None:
    """Let the data codec save instances of ``cls`` safely, as ``name`` plus ``to_data(obj)``.

    ``to_data(obj)`` must return plain data (what a state may hold, including other registered
    types); on load, ``from_data(data)`` rebuilds the object, and nothing else about the file can
    choose what runs. Instances of subclasses are not covered: register each class you save.
    Registering the same class again under the same name replaces its functions.

    Args:
        cls: the class.
        to_data: turns an instance into plain data.
        from_data: turns that data back into an instance.
        name: the name written into files; defaults to ``"module.QualName"``. Keep it stable: files
            name the type by it, so renaming the class need not break them.

    Raises:
        TypeRegistrationError: ``cls`` is not a class, is one the codec writes itself, or the name
            belongs to another class (nothing is registered then).

    .. versionadded:: 0.2
    """
    if not isinstance(cls, type):
        raise TypeRegistrationError(f"register_type() takes a class, not {cls!r:.80}.", cls=cls, name=name)
    if name is None:
        name = default_name(cls)
    if not isinstance(name, str) or not name or len(name.encode("utf-8", "surrogatepass")) > _NAME_MAX:
        raise TypeRegistrationError(
            f"register_type({cls.__qualname__}): name must be a non-empty str of at most {_NAME_MAX} "
            f"bytes in UTF-8, not {name!r:.80}.",
            cls=cls,
            name=None,
        )
    if not callable(to_data) or not callable(from_data):
        raise TypeRegistrationError(
            f"register_type({cls.__qualname__}): to_data and from_data must be callables.", cls=cls, name=name
        )
    if is_native(cls):
        raise TypeRegistrationError(
            f"register_type({cls.__qualname__}): callstate writes {cls.__qualname__} itself; there is "
            "nothing to register.",
            cls=cls,
            name=name,
        )
    with _lock:
        taken = _by_name.get(name)
        if taken is not None and taken.cls is not cls:
            raise TypeRegistrationError(
                f"register_type({cls.__qualname__}, name={name!r}): that name is registered for "
                f"{default_name(taken.cls)}. Give one of them another name=.",
                cls=cls,
                name=name,
            )
        previous = _by_class.get(cls)
        if previous is not None and previous.name != name:
            raise TypeRegistrationError(
                f"register_type({cls.__qualname__}, name={name!r}): it is registered as "
                f"{previous.name!r} already. Call callstate.unregister_type({cls.__qualname__}) first.",
                cls=cls,
                name=name,
            )
        entry = RegisteredType(cls, name, to_data, from_data)
        _by_class[cls] = entry
        _by_name[name] = entry


def unregister_type(cls: type) -> None:
    """Forget the registration of ``cls``; files that hold it then need it registered again.

    Raises:
        TypeRegistrationError: ``cls`` is not registered.

    .. versionadded:: 0.2
    """
    with _lock:
        entry = _by_class.pop(cls, None)
        if entry is None:
            raise TypeRegistrationError(
                f"unregister_type({getattr(cls, '__qualname__', cls)!r}): it is not registered.",
                cls=cls,
                name=None,
            )
        del _by_name[entry.name]


def by_class(cls: type) -> RegisteredType | None:
    return _by_class.get(cls)


def by_name(name: str) -> RegisteredType | None:
    return _by_name.get(name)
