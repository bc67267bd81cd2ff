"""FACE of _support."""

from ._optional import require as require
from ._report import add_note as add_note
from ._report import warn_user as warn_user

__all__ = [
    "add_note",
    "require",
    "warn_user",
]
