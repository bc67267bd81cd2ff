"""State keys: how a callback's saved state is named, byte-for-byte as Lightning names it."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from itertools import islice
from typing import Any

from .._support import escape, show
from ..errors import IdentityError
from ._spec import spec_of

# A key in a message is shown whole up to this many characters: keys are identity reprs, longer
# than most values a message shows, and a cut key is hard to find.
_KEY_LIMIT = 1000

# A repr that names a memory address, a lambda or a local function differs between processes, so a
# key built from it could never find its state again after a restart.
_UNREPRODUCIBLE = re.compile(r" at 0x[0-9a-fA-F]+|<lambda>|<locals>")

# Values whose repr is made of their value alone, whatever characters they hold.
_PLAIN = (str, bytes, int, float, complex, bool, type(None), type(Ellipsis))

# The suffix of a per-rank key (see _ranks.rank_key): a '@' never occurs in a key Lightning or
# callstate builds (a __qualname__, then a dict repr ending in '}'), so no callback claims one by
# accident. The rank is spelled as rank_key spells it (no leading zero), so one rank has exactly
# one key: "@rank01" is no rank entry, else it and "@rank1" would both be rank 1's.
RANK_SUFFIX = re.compile(r"@rank(0|[1-9][0-9]{0,8})\Z", re.ASCII)

MANIFEST_KEY = "callstate:distributed"
"""The key of the entry that records the world size and which keys are per rank (see _ranks)."""

def _unreproducible(value: Any) -> str | None:
    """Return the repr in ``value`` (or nested in it) that differs between processes, if any."""
    if isinstance(value, _PLAIN):
        return None
    if isinstance(value, (tuple, list, set, frozenset)):
        for item in value:
            found = _unreproducible(item)
            if found is not None:
                return found
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            found = _unreproducible(k)
            if found is None:
                found = _unreproducible(v)
            if found is not None:
                return found
        return None
    text = repr(value)
    return text if _UNREPRODUCIBLE.search(text) else None


# One attribute getter per identity tuple: fetching the fields is much of the cost of a key.
_getters: dict[tuple[str, ...], Any] = {}

# Keys built from plain values (str, int, bool, None, non-zero float), by class, identity and the
# values with their types: the same values always make the same string, and formatting it is the
# rest of the cost. Zero is left out because 0.0 == -0.0 while their reprs differ.
_built: dict[tuple[Any, ...], str] = {}
_BUILT_MAX = 1 << 17


def _identity_values(obj: object, identity: tuple[str, ...]) -> tuple[Any, ...]:
    """Return the values of the ``identity`` attributes of ``obj``, naming a missing one."""
    getter = _getters.get(identity)
    if getter is None:
        getter = _getters[identity] = operator.attrgetter(*identity)
    try:
        values = getter(obj)
    except AttributeError:
        # Slow path, only to name the missing field.
        cls = type(obj)
        name = next((n for n in identity if not hasattr(obj, n)), identity[0])
        raise IdentityError(
            f"{cls.__qualname__} declares identity field {name!r}, but the instance has no attribute "
            f"{name!r}: set it in __init__ or remove it from identity=.",
            cls=cls,
            field=name,
        ) from None
    return values if len(identity) > 1 else (values,)


def check_reproducible(cls: type, fields: dict[str, Any]) -> None:
    """Raise IdentityError naming the first field whose repr differs between processes."""
    for name, value in fields.items():
        if _unreproducible(value) is not None:
            value_repr = repr(value)
            raise IdentityError(
                f"{cls.__qualname__}.{name} cannot be part of a state key: its repr {value_repr!r} "
                "changes from one process to the next, so the state could never be found again. "
                "Use a value with a stable repr (a string, a number, a name), give the class a "
                "__repr__, or leave the field out of identity=.",
                cls=cls,
                field=name,
                value_repr=value_repr,
            )


def _plain(row: tuple[Any, ...]) -> bool:
    """Whether every value is a str, int, bool, None or non-zero float: its key can be remembered."""
    for v in row:
        t = type(v)
        if not (t is str or t is int or t is bool or v is None or (t is float and v)):
            return False
    return True


def format_key(name: str, fields: dict[str, Any]) -> str:
    """Return the key in Lightning's format: the class name, then the identity fields' dict repr.

    ``Counter{'what': 'epochs'}``; ``parse_key`` reads one back.
    """
    return f"{name}{fields!r}"


def identity_key(obj: object, identity: tuple[str, ...]) -> str:
    """Return the key of ``obj`` built from its ``identity`` attributes, checking they reproduce."""
    cls = type(obj)
    row = _identity_values(obj, identity)
    memo: tuple[Any, ...] | None = None
    if _plain(row):
        memo = (cls, cls.__qualname__, identity, row, tuple(map(type, row)))
        found = _built.get(memo)
        if found is not None:
            return found
    fields = dict(zip(identity, row, strict=True))
    key = format_key(cls.__qualname__, fields)
    if "<" in key and _UNREPRODUCIBLE.search(key):
        check_reproducible(cls, fields)
    if memo is not None:
        if len(_built) >= _BUILT_MAX:
            _built.clear()
        _built[memo] = key
    return key


def computed_key(obj: object, identity_of: Callable[[Any], Mapping[str, Any]]) -> str:
    """Return the key of ``obj`` from the identity fields ``identity_of(obj)`` computes."""
    cls = type(obj)
    try:
        fields = dict(identity_of(obj))
    except AttributeError as exc:
        name = getattr(exc, "name", None) or "?"
        raise IdentityError(
            f"{cls.__qualname__}'s declared identity needs attribute {name!r}, which the instance lacks "
            f"({escape(str(exc))}): construct it as its class does, or register it with key=.",
            cls=cls,
            field=name,
        ) from None
    key = format_key(cls.__qualname__, fields)
    if "<" in key and _UNREPRODUCIBLE.search(key):
        check_reproducible(cls, fields)
    return key


def declared_key(obj: object) -> str | None:
    """Return the key from identity declared with callstate, or None if none is declared."""
    spec = spec_of(type(obj))
    if spec is None:
        return None
    if spec.identity_of is not None:
        return computed_key(obj, spec.identity_of)
    identity = spec.identity_fields(type(obj))
    if not identity:
        return None
    return identity_key(obj, identity)


def natural_key(obj: object) -> str:
    """Return the key of ``obj`` ignoring any key given at registration."""
    # declared_key is not inlined here: inlining it measured within noise (1.8 against 1.9 us a key).
    key = declared_key(obj)
    if key is not None:
        return key
    own = getattr(obj, "state_key", None)
    if own is None:
        return type(obj).__qualname__
    if not isinstance(own, str):
        raise IdentityError(
            f"{type(obj).__qualname__}.state_key is {own!r}, not a str: make it a str, or register the "
            "callback with key=.",
            cls=type(obj),
            field="state_key",
            value_repr=repr(own),
        )
    return own


def state_key(obj: object) -> str:
    """Return the key under which ``obj``'s state is saved, from the object alone.

    In order: the key from identity fields declared with callstate (Lightning's format,
    ``Counter{'what': 'epochs'}``); else the object's own ``state_key`` attribute (every Lightning
    Callback has one); else its class's ``__qualname__``. A key given with
    ``registry.register(obj, key=...)`` belongs to that registry: ask ``registry.key_of(obj)``.

    Raises:
        IdentityError: an identity field is missing or has no reproducible repr.

    .. versionadded:: 0.1
    """
    return natural_key(obj)




# -- reading keys back ------------------------------------------------------------------------------

# Longer identities are not parsed (ast.literal_eval's cost grows with them); they stay text.
_MAX_KEY_FOR_PARSE = 10_000


def parse_key(key: object) -> tuple[str, dict[str, Any] | str | None]:
    """Return the class name and identity fields of a key like ``Counter{'what': 'epochs'}``.

    The identity is a dict when the part in braces is a Python literal mapping, the raw text when
    it is not (an identity value without a literal repr), and None when the key has no braces.
    """
    # Imported here: only reading keys back (the command line) needs it, never building them.
    import ast

    if isinstance(key, type):  # a class key, as Lightning < 1.5 wrote: shown by its name
        return key.__qualname__, None
    if not isinstance(key, str):
        return show(key), None
    if key.startswith("<class ") and key.endswith(">"):  # a class key as the inert reader names it
        return key[len("<class ") : -1].rpartition(".")[2], None
    brace = key.find("{")
    if brace <= 0 or not key.endswith("}"):
        return key, None
    cls, rest = key[:brace], key[brace:]
    if len(rest) > _MAX_KEY_FOR_PARSE:
        return cls, rest
    try:
        fields = ast.literal_eval(rest)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return cls, rest
    if not isinstance(fields, dict) or not all(isinstance(k, str) for k in fields):
        return cls, rest
    return cls, fields


def identity_text(identity: dict[str, Any] | str | None) -> str:
    """Return ``parse_key``'s identity as text: ``what='epochs'``, the raw text, or ``-`` for none.

    The text is bounded and escaped (see ``_show``): the identity came from a file.
    """
    if identity is None:
        return "-"
    if isinstance(identity, str):
        return escape(identity)
    return escape(", ".join(f"{escape(k, 80)}={show(v, 80)}" for k, v in islice(identity.items(), 20)) or "-")


def key_text(key: object) -> str:
    """Show a saved key in a message: a str quoted, bounded and escaped; a class key named with its module.

    Keys come from files, so they are shown through the one formatter of untrusted values.
    """
    if isinstance(key, type):
        name = escape(f"{key.__module__}.{key.__qualname__}", _KEY_LIMIT)
        return f"{name} (a class, as Lightning < 1.5 wrote)"
    return show(key, _KEY_LIMIT)
