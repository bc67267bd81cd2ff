"""callstate: save and restore the state of training-loop callbacks, exactly, into the right instance."""

from ._async import save_async as save_async
from ._encoded import EncodedState as EncodedState
from ._errors import CallstateError as CallstateError
from ._errors import CallstateWarning as CallstateWarning
from ._errors import CheckpointError as CheckpointError
from ._errors import CheckpointWriteError as CheckpointWriteError
from ._errors import CorruptCheckpointError as CorruptCheckpointError
from ._errors import DuplicateKeyError as DuplicateKeyError
from ._errors import IdentityError as IdentityError
from ._errors import NotRegisteredError as NotRegisteredError
from ._errors import RankMismatchError as RankMismatchError
from ._errors import RestoreError as RestoreError
from ._errors import StateMismatchError as StateMismatchError
from ._errors import UnsafeCheckpointError as UnsafeCheckpointError
from ._errors import UnsupportedFormatError as UnsupportedFormatError
from ._files import dumps as dumps
from ._files import inspect as inspect
from ._files import load as load
from ._files import loads as loads
from ._files import read as read
from ._files import save as save
from ._format import EntryInfo as EntryInfo
from ._format import PickledStateWarning as PickledStateWarning
from ._format import SerializationError as SerializationError
from ._format import UnknownTypeError as UnknownTypeError
from ._keys import state_key as state_key
from ._optional import MissingDependencyError as MissingDependencyError
from ._registry import CallbackRegistry as CallbackRegistry
from ._registry import TargetTypeError as TargetTypeError
from ._spec import InvalidStateError as InvalidStateError
from ._spec import Stateful as Stateful
from ._spec import field as field
from ._spec import stateful as stateful
from ._transaction import RestoreReport as RestoreReport
from ._types import TypeRegistrationError as TypeRegistrationError
from ._types import register_type as register_type
from ._types import unregister_type as unregister_type
from ._versions import MigrationError as MigrationError
from ._versions import StateVersionError as StateVersionError
from ._versions import VersionDeclarationError as VersionDeclarationError
from ._versions import migration as migration

# The adapters import torch or a framework, so they are imported on first access (PEP 562):
# ``callstate.lightning`` works after ``import callstate``, which itself imports neither.
_SUBMODULES = frozenset({"accelerate", "distributed", "lightning", "loop", "transformers"})


def __getattr__(name: str) -> object:
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    if name == "__version__":
        # From the installed metadata, so one version number (pyproject.toml's) exists; read on
        # first use because importlib.metadata costs about as much as the rest of the import.
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version(__name__)
        except PackageNotFoundError:  # imported from a source tree that was never installed
            return "0+unknown"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_SUBMODULES, "__version__"})

__all__ = [
    "CallbackRegistry",
    "CallstateError",
    "CallstateWarning",
    "CheckpointError",
    "CheckpointWriteError",
    "CorruptCheckpointError",
    "DuplicateKeyError",
    "EncodedState",
    "EntryInfo",
    "IdentityError",
    "InvalidStateError",
    "MigrationError",
    "MissingDependencyError",
    "NotRegisteredError",
    "PickledStateWarning",
    "RankMismatchError",
    "RestoreError",
    "RestoreReport",
    "SerializationError",
    "StateMismatchError",
    "StateVersionError",
    "Stateful",
    "TargetTypeError",
    "TypeRegistrationError",
    "UnknownTypeError",
    "UnsafeCheckpointError",
    "UnsupportedFormatError",
    "VersionDeclarationError",
    "dumps",
    "field",
    "inspect",
    "load",
    "loads",
    "migration",
    "read",
    "register_type",
    "save",
    "save_async",
    "state_key",
    "stateful",
    "unregister_type",
]
