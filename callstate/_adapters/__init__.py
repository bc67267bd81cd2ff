"""FACE of _adapters."""

from ._framework_dir import CHECKPOINT_FILE as CHECKPOINT_FILE
from ._framework_dir import restore_from as restore_from
from ._framework_dir import save_into as save_into

__all__ = [
    "CHECKPOINT_FILE",
    "restore_from",
    "save_into",
]
