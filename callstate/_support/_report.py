"""Telling the user: warnings at the user's own line, and notes added to an exception."""

from __future__ import annotations

import contextlib
import sys
import warnings

# Frameworks whose code runs between the user's call and callstate's (``trainer.fit`` -> Lightning
# -> callstate.lightning): their frames are skipped too, so the warning names the user's call.
_FRAMEWORKS = frozenset(
    {
        *("lightning", "pytorch_lightning", "lightning_fabric", "torch"),
        *("transformers", "accelerate", "ignite", "torchtnt"),
    }
)


def legacy_add_note(exc: BaseException, note: str) -> None:
    """Add ``note`` to ``exc.__notes__`` as PEP 678 does, for Python 3.10, which has no add_note."""
    # Code reading __notes__ (and the exceptiongroup backport's traceback) finds it the same way.
    notes = getattr(exc, "__notes__", None)
    if not isinstance(notes, list):
        notes = []
    notes.append(note)
    with contextlib.suppress(AttributeError, TypeError):
        exc.__notes__ = notes  # type: ignore[attr-defined]


def add_note(exc: BaseException, note: str) -> None:
    """Add ``note`` to ``exc``, shown under its traceback (``exc.__notes__`` on Python 3.10)."""
    if sys.version_info >= (3, 11):
        exc.add_note(note)
    else:  # pragma: no cover - exercised on Python 3.10 only
        legacy_add_note(exc, note)


def warn_user(warning: Warning) -> None:
    """Issue ``warning`` at the first caller outside callstate and the frameworks that called it.

    It then points at the user's line: ``registry.load_state_dict(...)``, or ``trainer.fit(...)``.
    """
    package = __name__.partition(".")[0]
    frame, level = sys._getframe(1), 2  # stacklevel 1 would be this function
    while frame is not None:
        top = frame.f_globals.get("__name__", "").partition(".")[0]
        if top != package and top not in _FRAMEWORKS:
            break
        frame, level = frame.f_back, level + 1  # type: ignore[assignment]
    warnings.warn(warning, stacklevel=level)


