"""Every error and warning class of callstate: one root, each error refining a builtin and carrying its data.

``CallstateError`` is the root of every error, ``CallstateWarning`` of every warning. Each error also
subclasses the builtin it refines (``CorruptCheckpointError`` is a ``ValueError``), so code that
catches the builtin keeps working, and carries the data it is about (``.path``, ``.key``, ...) as
attributes, which survive pickling across processes. The ones users catch most are also in the
top-level namespace (``callstate.CorruptCheckpointError``).
"""

from __future__ import annotations

import pickle
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

__all__ = [
    "CallstateDeprecationWarning",
    "CallstateError",
    "CallstateWarning",
    "CheckpointError",
    "CheckpointNotFoundError",
    "CheckpointWriteError",
    "ComparisonStoppedError",
    "CorruptCheckpointError",
    "DuplicateKeyError",
    "IdentityError",
    "InvalidStateError",
    "MigrationError",
    "MissingDependencyError",
    "NotRegisteredError",
    "NoStateWarning",
    "PathTypeError",
    "PickledStateWarning",
    "RankMismatchError",
    "RelocationError",
    "RestoreError",
    "SerializationError",
    "StateMismatchError",
    "StateVersionError",
    "TargetTypeError",
    "TypeRegistrationError",
    "UnknownTypeError",
    "UnsafeCheckpointError",
    "UnsupportedFormatError",
    "UnsupportedLightningError",
    "UnsupportedTrainerError",
    "VersionDeclarationError",
]


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


class CallstateDeprecationWarning(CallstateWarning, DeprecationWarning):
    """A name or behaviour of callstate that still works but will go: the message says what replaces it."""


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


class ComparisonStoppedError(CallstateError, RuntimeError):
    """Comparing two states would take more steps than the size of what they were read from allows.

    Attributes:
        where: the path inside the states at which the comparison stopped.
        steps: the steps it was allowed.
    """

    def __init__(self, message: str, *, where: str, steps: int) -> None:
        super().__init__(message)
        self.where, self.steps = where, steps


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


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A remote checkpoint (``s3://...``, any fsspec URL) does not exist: no such object, or no such
    bucket (``.path`` is the URL). Also the ``FileNotFoundError`` a missing local file raises.
    """

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message, path=path)
        self.errno = 2  # ENOENT
        self.filename = path

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_not_found, (str(self), self.path), self.__dict__)


def _not_found(message: str, path: str) -> CheckpointNotFoundError:
    return CheckpointNotFoundError(message, path=path)


class RankMismatchError(CallstateError, ValueError):
    """A checkpoint's per-rank states were saved at another world size."""

    def __init__(self, message: str, *, saved_world_size: int, world_size: int) -> None:
        super().__init__(message)
        self.saved_world_size = saved_world_size
        self.world_size = world_size


class RelocationError(CallstateError, ValueError):
    """Moving the paths of a saved state (``relocate=``) failed: two dict keys became one.

    Attributes:
        key: the state's key.
        path: the path two keys were moved onto, or None.

    .. versionadded:: 0.1
    """

    def __init__(self, message: str, *, key: Hashable, path: str | None) -> None:
        super().__init__(message)
        self.key = key
        self.path = path


class InvalidStateError(CallstateError, ValueError):
    """A state given to a generated ``load_state_dict`` does not fit the class's declared state."""

    def __init__(self, message: str, *, cls: type, unknown: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.cls = cls
        self.unknown = tuple(unknown)


class MigrationError(CallstateError, RuntimeError):
    """A migration raised, or returned None, while bringing a saved state to its class's version.

    The cause is chained as ``__cause__``. Nothing was changed: migrations run before any callback is.

    Attributes:
        key: the state's key.
        step: the step that failed, ``(from, to)``.

    .. versionadded:: 0.1
    """

    def __init__(self, message: str, *, key: Hashable, step: tuple[int, int]) -> None:
        super().__init__(message)
        self.key = key
        self.step = step


class MissingDependencyError(CallstateError, ModuleNotFoundError):
    """A feature needs a package that is not installed; the message gives the install command."""

    def __init__(self, message: str, *, name: str, extra: str) -> None:
        super().__init__(message, name=name)
        self.extra = extra


class NoStateWarning(CallstateWarning):
    """A class declared ``@stateful`` for its identity has no state to save (``.key``, ``.class_name``)."""

    def __init__(self, message: str, *, key: str, class_name: str) -> None:
        super().__init__(message)
        self.key = key
        self.class_name = class_name


class PickledStateWarning(CallstateWarning):
    """A state was saved with pickle, so loading it will need ``trusted=True`` (``.key``, ``.reason``)."""

    def __init__(self, message: str, *, key: str, reason: str) -> None:
        super().__init__(message)
        self.key = key
        self.reason = reason


class SerializationError(CallstateError, TypeError):
    """A state could be serialized neither by pickle nor by cloudpickle."""

    def __init__(self, message: str, *, key: str) -> None:
        super().__init__(message)
        self.key = key


class StateVersionError(CallstateError, ValueError):
    """A saved state's version cannot be brought to its class's: it is newer, or a migration step is missing.

    Attributes:
        key: the state's key.
        saved: the version it was saved at.
        current: the version its class declares here.
        step: the missing step ``(from, to)``.

    .. versionadded:: 0.1
    """

    def __init__(
        self, message: str, *, key: Hashable, saved: int, current: int, step: tuple[int, int]
    ) -> None:
        super().__init__(message)
        self.key = key
        self.saved = saved
        self.current = current
        self.step = step


class PathTypeError(CallstateError, TypeError):
    """A checkpoint path was given as something that is not a path (``str``, ``os.PathLike``) or a URL.

    Attributes:
        got: the type that was given.
    """

    def __init__(self, message: str, *, got: type) -> None:
        super().__init__(message)
        self.got = got


class TargetTypeError(CallstateError, TypeError):
    """Something given as the callbacks is neither a registry, nor a list of callbacks (nor states).

    Attributes:
        got: the type that was given.
    """

    def __init__(self, message: str, *, got: type) -> None:
        super().__init__(message)
        self.got = got


class TypeRegistrationError(CallstateError, ValueError):
    """``callstate.register_type`` was given a class or name it cannot take (``.cls``, ``.name``)."""

    def __init__(self, message: str, *, cls: object, name: str | None) -> None:
        super().__init__(message)
        self.cls = cls
        self.name = name


class UnknownTypeError(CheckpointError, LookupError):
    """A state holds a registered type (``.type_name``) that is not registered in this process."""

    def __init__(
        self, message: str, *, type_name: str, path: str | None = None, key: str | None = None
    ) -> None:
        super().__init__(message, path=path, key=key)
        self.type_name = type_name


class UnsupportedLightningError(CallstateError, RuntimeError):
    """This Lightning lacks an internal that ``CallstateCallback`` needs to restore in Lightning's order.

    Attributes:
        version: the Lightning version.
        internal: the missing internal, as a dotted name.

    .. versionadded:: 0.1
    """

    def __init__(self, message: str, *, version: str, internal: str) -> None:
        super().__init__(message)
        self.version = version
        self.internal = internal


class UnsupportedTrainerError(CallstateError, RuntimeError):
    """The Trainer cannot save or restore through ``CallstateCallback`` as it is set up.

    Attributes:
        trainer: the Trainer's class name.
        needs: what is missing or in the way (a class, a method, a setting).

    .. versionadded:: 0.1
    """

    def __init__(self, message: str, *, trainer: str, needs: str) -> None:
        super().__init__(message)
        self.trainer = trainer
        self.needs = needs


class VersionDeclarationError(CallstateError, TypeError, ValueError):
    """A class's ``__callstate_version__`` is not a version (an int from 1 to 999999999).

    A TypeError for a value of another type (``"2"``), a ValueError for an int out of range; raised
    when the callback is registered, before any save or restore.

    Attributes:
        cls: the class.
        value: what it declares.

    .. versionadded:: 0.1
    """

    def __init__(self, message: str, *, cls: type, value: object) -> None:
        super().__init__(message)
        self.cls = cls
        self.value = value


# Every class here is presented as callstate.errors.X, in tracebacks, reprs and pickles, whichever
# name it is imported by: the one place __module__ is set.
for _name in __all__:
    globals()[_name].__module__ = __name__
