"""The callstate file inside a framework's checkpoint directory, for the adapters that write one there.

``callstate.accelerate`` and ``callstate.transformers`` put ``callbacks.callstate`` into each
checkpoint directory their framework writes, in the per-rank layout of ``callstate.distributed``
(collective: every rank calls; rank 0 writes and reads the file).
"""

from __future__ import annotations

import os

from ._errors import CallstateWarning, warn_user
from ._group import group_of
from ._ranks import Policy
from ._registry import CallbackRegistry
from ._transaction import RestoreReport

CHECKPOINT_FILE = "callbacks.callstate"


def save_into(registry: CallbackRegistry, directory: str | os.PathLike[str]) -> None:
    """Write every rank's states of ``registry`` into ``directory/callbacks.callstate``."""
    from . import distributed

    distributed.save(registry, os.path.join(directory, CHECKPOINT_FILE))


def restore_from(
    registry: CallbackRegistry,
    directory: str | os.PathLike[str],
    *,
    strict: bool,
    on_world_size_change: Policy,
    trusted: bool,
    writer: str,
) -> RestoreReport:
    """Restore ``registry`` from ``directory/callbacks.callstate``, on every rank.

    A directory without the file (written before the adapter was used) restores nothing, with a
    ``CallstateWarning``, or raises ``StateMismatchError`` when ``strict``; in one process only, as
    under DDP only rank 0 reads the file. ``writer`` names what writes it, for the warning.
    """
    from . import distributed

    path = os.path.join(directory, CHECKPOINT_FILE)
    if not group_of(None).active and os.path.isdir(directory) and not os.path.exists(path):
        warn_user(
            CallstateWarning(
                f"{os.fspath(directory)}: has no {CHECKPOINT_FILE} (written without {writer}?); no callback "
                "state is restored from it."
            )
        )
        return distributed.load_state_dict(registry, {}, strict=strict)
    return distributed.load(
        registry, path, strict=strict, on_world_size_change=on_world_size_change, trusted=trusted
    )
