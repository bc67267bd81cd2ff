"""Which implementation of the data codec runs: the compiled one where it is built, else the reference.

The pure-Python codec (``_encoder``, ``_decoder``) is the reference: it defines the format, and it
runs where no extension is built (no compiler at install, PyPy) and whenever the environment
variable ``CALLSTATE_PURE_PYTHON`` is set to anything but ``""`` or ``"0"`` (read once per process,
at the codec's first use). Each part of the codec may have a compiled twin, an extension module in
this package that produces the same bytes (encoder) or the same values and error classes (decoder)
as the reference for every input.

The hook, for each part: ``COMPILED`` names its extension module, and ``_codec`` (the codec's entry
point) takes the part's entry point from ``compiled(part)`` when it is not None, else the
reference's:

- ``"encode"``: ``callstate._encoding._cencode``, whose ``Encoder()`` has ``encode(state)`` returning
  ``(stream, *out-of-band buffers)`` as ``_encoder.Encoder.encode`` does;
- ``"decode"``: an extension whose ``decode(stream, buffers, *, bound_memory=True, allowance=None)``
  behaves as ``_decoder.decode``; a part is listed here once its extension exists.

Imported with callstate (``codec_implementation`` is public), so it imports no part of the codec.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

# Each part of the codec with a compiled twin, and the module (in this package) that holds it.
COMPILED: dict[str, str] = {"encode": "_cencode", "decode": "_cdecode"}

_loaded: dict[str, ModuleType | None] = {}


def pure_python() -> bool:
    """Return whether ``CALLSTATE_PURE_PYTHON`` asks for the reference codec."""
    return os.environ.get("CALLSTATE_PURE_PYTHON", "") not in ("", "0")


def compiled(part: str) -> ModuleType | None:
    """Return the extension module of ``part`` if it is built, listed and allowed, else None."""
    if part not in _loaded:
        module = None
        if part in COMPILED and not pure_python():
            try:
                module = importlib.import_module(f"{__package__}.{COMPILED[part]}")
            except ImportError:
                module = None  # not built here (no compiler, PyPy): the reference runs
        _loaded[part] = module
    return _loaded[part]


def implementations() -> dict[str, str]:
    """Return ``"c"`` or ``"python"`` for each part of the codec with a compiled twin."""
    return {part: "python" if compiled(part) is None else "c" for part in COMPILED}


def codec_implementation() -> str:
    """Return which data codec saves and loads states here: ``"c"`` (compiled) or ``"python"``.

    ``"c"`` when every part of the codec with a compiled twin runs compiled; ``"python"``, the
    reference, when the extension is not built or ``CALLSTATE_PURE_PYTHON=1`` is set.
    """
    used = set(implementations().values())
    return "c" if used == {"c"} else "python"


def describe() -> str:
    """Return the codec in use in a few words, for ``callstate --version``: ``c``, ``python`` or a mix."""
    parts = implementations()
    if len(set(parts.values())) == 1:
        return codec_implementation()
    return ", ".join(f"{kind} {part}" for part, kind in parts.items())
