"""What the framework adapters share (``callstate.transformers``, ``callstate.accelerate``): the
callstate file inside a framework's checkpoint directory, written and read through
``callstate.distributed``. Above ``distributed``, below the adapters that use it.
"""

from ._framework_dir import CHECKPOINT_FILE as CHECKPOINT_FILE
from ._framework_dir import restore_from as restore_from
from ._framework_dir import save_into as save_into

__all__ = [
    "CHECKPOINT_FILE",
    "restore_from",
    "save_into",
]
