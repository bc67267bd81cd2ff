"""callstate: save and restore the state of training-loop callbacks, exactly, into the right instance.

The whole library is this flat namespace, ``callstate.errors`` (every error and warning class) and
one module per framework adapter (``callstate.lightning``, ``.loop``, ``.distributed``,
``.transformers``, ``.accelerate``, ``.keras``). The private subpackages below it are its layers, imported one
way only: ``_support`` < ``_encoding`` (states <-> bytes) < ``_core`` (callbacks <-> states) < ``_io``
(files, ranks) < ``_torch`` (torch checkpoints), ``_kit`` (the resume kit) < the adapters and ``_cli``; see
docs/architecture.md.
"""

from . import errors as errors
from ._checkpoints import inspect as inspect
from ._checkpoints import load as load
from ._checkpoints import read as read
from ._core import CallbackRegistry as CallbackRegistry
from ._core import RestoreReport as RestoreReport
from ._core import Stateful as Stateful
from ._core import field as field
from ._core import identify as identify
from ._core import migration as migration
from ._core import state_key as state_key
from ._core import stateful as stateful
from ._encoding import EncodedState as EncodedState
from ._encoding import EntryInfo as EntryInfo
from ._encoding import codec_implementation as codec_implementation
from ._encoding import register_type as register_type
from ._encoding import unregister_type as unregister_type
from ._io import dumps as dumps
from ._io import loads as loads
from ._io import save as save
from ._io import save_async as save_async
from ._kit import RNGState as RNGState
from .errors import CallstateError as CallstateError
from .errors import CallstateWarning as CallstateWarning
from .errors import CheckpointError as CheckpointError
from .errors import CorruptCheckpointError as CorruptCheckpointError
from .errors import DuplicateKeyError as DuplicateKeyError
from .errors import IdentityError as IdentityError
from .errors import PickledStateWarning as PickledStateWarning
from .errors import RestoreError as RestoreError
from .errors import StateMismatchError as StateMismatchError
from .errors import UnsafeCheckpointError as UnsafeCheckpointError
from .errors import UnsupportedFormatError as UnsupportedFormatError

__all__ = [
    "CallbackRegistry",
    "CallstateError",
    "CallstateWarning",
    "CheckpointError",
    "CorruptCheckpointError",
    "DuplicateKeyError",
    "EncodedState",
    "EntryInfo",
    "IdentityError",
    "PickledStateWarning",
    "RNGState",
    "RestoreError",
    "RestoreReport",
    "StateMismatchError",
    "Stateful",
    "UnsafeCheckpointError",
    "UnsupportedFormatError",
    "codec_implementation",
    "dumps",
    "field",
    "identify",
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

# The functions and classes above are presented as callstate.X (in reprs, docs and pickles), where
# users import them; the errors are presented as callstate.errors.X by their own module.
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith(f"{__name__}._"):
        _obj.__module__ = __name__
del _name, _obj

# The adapters import torch or a framework, so they are imported on first access (PEP 562):
# ``callstate.lightning`` works after ``import callstate``, which itself imports neither.
_SUBMODULES = frozenset({"accelerate", "distributed", "keras", "lightning", "loop", "orbax", "transformers"})


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
    if name in errors.__all__:
        # callstate 0.1 exported every error here; the rarer ones now live in callstate.errors only.
        import warnings

        warnings.warn(
            f"callstate.{name} moved to callstate.errors.{name}; import it from there.",
            errors.CallstateDeprecationWarning,
            stacklevel=2,
        )
        return getattr(errors, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_SUBMODULES, "__version__"})
