"""The ground floor: what every layer uses to talk to the user, and nothing about callbacks or files.

``show``/``escape`` (every value that came from a file, in a message: bounded and escaped),
``warn_user``/``add_note`` (warnings at the user's own line, notes on exceptions), ``require`` (an
optional dependency, or an error saying what to install). Imports only ``callstate.errors``.
"""

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
