"""callstate: save and restore the state of training-loop callbacks, exactly, into the right instance."""

from ._encoded import EncodedState as EncodedState
from ._errors import CallstateError as CallstateError
from ._errors import CallstateWarning as CallstateWarning
from ._errors import CheckpointError as CheckpointError
from ._errors import CorruptCheckpointError as CorruptCheckpointError
from ._errors import DuplicateKeyError as DuplicateKeyError
from ._errors import IdentityError as IdentityError
from ._errors import NotRegisteredError as NotRegisteredError
from ._errors import RankMismatchError as RankMismatchError
from ._errors import RestoreError as RestoreError
from ._errors import StateMismatchError as StateMismatchError
from ._errors import UnsafeCheckpointError as UnsafeCheckpointError
from ._errors import UnsupportedFormatError as UnsupportedFormatError
from ._keys import state_key as state_key
from ._registry import CallbackRegistry as CallbackRegistry
from ._registry import RestoreReport as RestoreReport
from ._spec import InvalidStateError as InvalidStateError
from ._spec import Stateful as Stateful
from ._spec import field as field
from ._spec import stateful as stateful

__version__ = "0.1.0.dev0"

__all__ = [
    "CallbackRegistry",
    "CallstateError",
    "CallstateWarning",
    "CheckpointError",
    "CorruptCheckpointError",
    "DuplicateKeyError",
    "EncodedState",
    "IdentityError",
    "InvalidStateError",
    "NotRegisteredError",
    "RankMismatchError",
    "RestoreError",
    "RestoreReport",
    "StateMismatchError",
    "Stateful",
    "UnsafeCheckpointError",
    "UnsupportedFormatError",
    "field",
    "state_key",
    "stateful",
]
