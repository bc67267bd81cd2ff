"""The modules ``callstate migrate --import`` imports."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence

from .._support import escape
from ._where import UsageError


def import_modules(names: Sequence[str]) -> None:
    """Import the modules that define the callback classes and register their migrations.

    The current directory is searched for them, as ``python -m`` would, but only while they are
    imported and only after every other entry of ``sys.path``: the directory being migrated may hold
    a ``decimal.py`` or a ``numpy.py``, and what callstate imports itself must never resolve to it.
    So the codec's own imports are done first (its standard-library types come with callstate, and
    numpy is imported here when it is installed), and the directory is appended, not inserted: an
    installed package always wins over a file of the same name there, and once the named modules
    are imported the directory is gone from ``sys.path`` again (a later ``import torch`` does not look in it).
    """
    import importlib
    import importlib.util

    if not names:
        return
    # The codec's standard-library types (decimal, fractions, datetime, uuid, pathlib) were imported
    # with callstate itself, before this function could change sys.path.
    if importlib.util.find_spec("numpy") is not None:
        import numpy  # noqa: F401  (what a file's arrays need, imported while the directory is not searched)
    here = os.getcwd()
    added = here not in sys.path
    if added:
        sys.path.append(here)
    try:
        for name in names:
            _import_one(name)
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(here)


def _import_one(name: str) -> None:
    import importlib

    try:
        importlib.import_module(name)
    except ImportError as exc:
        raise UsageError(
            f"--import {escape(name)}: cannot be imported ({exc}); check the name and PYTHONPATH."
        ) from exc
    except Exception as exc:  # the module's own code failed (SyntaxError too): the user's to fix
        raise UsageError(
            f"--import {escape(name)}: importing it raised {type(exc).__name__}: {exc}; fix the module."
        ) from exc
