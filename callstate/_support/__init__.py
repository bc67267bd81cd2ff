"""FACE of _support."""

from ._optional import require as require
from ._report import add_note as add_note
from ._report import warn_user as warn_user
from ._show import escape as escape
from ._show import show as show

__all__ = [
    "add_note",
    "escape",
    "require",
    "show",
    "warn_user",
]
