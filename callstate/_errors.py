"""The error and warning classes of callstate: one root, each refining a builtin."""

from __future__ import annotations

import contextlib
import pickle
import sys
from collections.abc import Hashable, Sequence
from typing import Any


class CallstateError(Exception):
    """Root of every error callstate raises."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Errors cross process boundaries (distributed runs, multiprocessing). The default pickling
        # calls cls(*args) and so loses the keyword-only data, or fails: rebuild from args, then
        # restore the attributes.
        return (_rebuild, (type(self), self.args), self.__dict__)


def _rebuild(cls: type[CallstateError], args: tuple[Any, ...]) -> CallstateError:
    return cls.__new__(cls, *args)


class CallstateWarning(UserWarning):
    """Root of every warning callstate emits."""


class IdentityError(CallstateError, ValueError):
    """An identity field is missing, or its value has no reproducible repr."""

    def __init__(self, message: str, *, cls: type, field: str, value_repr: str | None = None) -> None:
        super().__init__(message)
        self.cls = cls
        self.field = field
        self.value_repr = value_repr


class DuplicateKeyError(CallstateError, ValueError):
    """Two callbacks would be saved under one state key."""

    def __init__(self, message: str, *, key: str, callbacks: Sequence[object]) -> None:
        super().__init__(message)
        self.key = key
        self.callbacks = tuple(callbacks)


class StateMismatchError(CallstateError, KeyError):
    """A strict restore found callbacks without a state, or states without a callback."""

    def __init__(self, message: str, *, missing: Sequence[str], unexpected: Sequence[Hashable]) -> None:
        super().__init__(message)
        self.missing = tuple(missing)
        self.unexpected = tuple(unexpected)

    def __str__(self) -> str:
        # KeyError would show the repr of the message; we want it readable.
        return str(self.args[0])


class NotRegisteredError(CallstateError, KeyError):
    """No registered callback has the given key, or the object is not registered."""

    def __init__(self, message: str, *, key: object) -> None:
        super().__init__(message)
        self.key = key

    def __str__(self) -> str:
        return str(self.args[0])


class RestoreError(CallstateError, RuntimeError):
    """A callback's ``load_state_dict`` raised; the cause is chained as ``__cause__``."""

    def __init__(self, message: str, *, key: Hashable, rolled_back: Sequence[Hashable] = ()) -> None:
        super().__init__(message)
        self.key = key
        self.rolled_back = tuple(rolled_back)


class CheckpointError(CallstateError):
    """Base of the errors about a checkpoint file: reading it, or writing it."""

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.key = key


class CorruptCheckpointError(CheckpointError, ValueError):
    """A file or byte string is truncated, altered or is not a callstate checkpoint."""


class UnsupportedFormatError(CheckpointError, ValueError):
    """A checkpoint was written by a newer format version than this callstate reads."""

    def __init__(
        self, message: str, *, found: int, supported: int, path: str | None = None, key: str | None = None
    ) -> None:
        super().__init__(message, path=path, key=key)
        self.found = found
        self.supported = supported


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
    """A payload reached for a global outside the allowlist; nothing was run.

    ``.kept_from`` is the file a pickled state was kept from, when that file was read without trust
    and the state then saved into this one (refused even with ``trusted=True``); else None.
    """

    def __init__(
        self,
        message: str,
        *,
        global_name: str,
        path: str | None = None,
        key: str | None = None,
        kept_from: str | None = None,
    ) -> None:
        super().__init__(message, path=path, key=key)
        self.global_name = global_name
        self.kept_from = kept_from


class CheckpointWriteError(CheckpointError, OSError):
    """A checkpoint could not be written (a full or read-only disk, an I/O error, a directory in the way).

    The file that was at ``path`` is as it was, and no temp file is left. Also the ``OSError`` it comes
    from: ``errno``, ``strerror`` and ``filename`` are those of the failure.
    """

    def __init__(self, message: str, *, path: str, errno: int | None, strerror: str | None = None) -> None:
        super().__init__(message, path=path)
        self.errno = errno
        self.strerror = strerror
        self.filename = path

    def __str__(self) -> str:
        # OSError's own str would show only "[Errno n] strerror: filename", not the fix.
        return str(self.args[0]) if self.args else ""

    def __reduce__(self) -> tuple[Any, ...]:
        # OSError keeps errno and strerror outside __dict__: rebuild from all of them.
        return (_write_error, (str(self), self.path, self.errno, self.strerror), self.__dict__)


def _write_error(message: str, path: str, errno: int | None, strerror: str | None) -> CheckpointWriteError:
    return CheckpointWriteError(message, path=path, errno=errno, strerror=strerror)


class RankMismatchError(CallstateError, ValueError):
    """A checkpoint's per-rank states were saved at another world size."""

    def __init__(self, message: str, *, saved_world_size: int, world_size: int) -> None:
        super().__init__(message)
        self.saved_world_size = saved_world_size
        self.world_size = world_size


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
    import sys
    import warnings

    package = __name__.rpartition(".")[0]
    frame, level = sys._getframe(1), 2  # stacklevel 1 would be this function
    while frame is not None:
        top = frame.f_globals.get("__name__", "").partition(".")[0]
        if top != package and top not in _FRAMEWORKS:
            break
        frame, level = frame.f_back, level + 1  # type: ignore[assignment]
    warnings.warn(warning, stacklevel=level)


def _public_module(*objects: Any) -> None:
    for obj in objects:
        obj.__module__ = "callstate"


_public_module(
    CallstateError,
    CallstateWarning,
    IdentityError,
    DuplicateKeyError,
    StateMismatchError,
    NotRegisteredError,
    RestoreError,
    CheckpointError,
    CorruptCheckpointError,
    UnsupportedFormatError,
    UnsafeCheckpointError,
    CheckpointWriteError,
    RankMismatchError,
)
