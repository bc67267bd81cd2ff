"""The callstate file inside a framework's checkpoint directory, for the adapters that write one there.

``callstate.accelerate`` and ``callstate.transformers`` put ``callbacks.callstate`` into each
checkpoint directory their framework writes, in the per-rank layout of ``callstate.distributed``
(collective: every rank calls; rank 0 writes and reads the file).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from .._checkpoints import CHECKPOINT_FILE as CHECKPOINT_FILE
from .._core import CallbackRegistry, RestoreReport, RestoreTransaction, Saved
from .._io import Policy, group_of
from ..errors import CheckpointError


def save_into(registry: CallbackRegistry, directory: str | os.PathLike[str]) -> None:
    """Write every rank's states of ``registry`` into ``directory/callbacks.callstate``."""
    from .. import distributed

    distributed.save(registry, os.path.join(directory, CHECKPOINT_FILE))


def restore_from(
    registry: CallbackRegistry,
    directory: str | os.PathLike[str],
    *,
    strict: bool,
    on_world_size_change: Policy,
    trusted: bool,
    writer: str,
    relocate: Mapping[str, str] | None = None,
) -> tuple[RestoreReport, RestoreTransaction | None]:
    """Restore ``registry`` from ``directory/callbacks.callstate``, on every rank.

    A directory without the file (written before the adapter was used) restores nothing, with one
    ``CallstateWarning`` saying so and which callbacks start fresh, or raises ``StateMismatchError``
    when ``strict`` (saying so too); in one process only, as
    under DDP only rank 0 reads the file. ``writer`` names what writes it, for the warning.
    ``relocate`` is that of ``callstate.distributed.load`` (the adapter's, checked when it was made).

    Returns the report and the applied transaction (None when there was no file: nothing changed),
    which the caller may roll back if its framework then fails to load the checkpoint.

    Raises:
        CheckpointError: ``callbacks.callstate`` is a symbolic link to nothing (dangling, or a
            loop), before anything changes.
    """
    from .. import distributed

    path = os.path.join(directory, CHECKPOINT_FILE)
    if not group_of(None).active and os.path.isdir(directory):
        # lexists, not exists: a dangling link is a file that was meant to be there, not "no file".
        if os.path.lexists(path) and not os.path.exists(path):
            raise _broken_link(path)
        if not os.path.lexists(path):
            # Said as the restore's note: in its partial-restore warning (every callback misses its
            # state), not in a warning of its own beside it.
            note = (
                f"{os.fspath(directory)}: has no {CHECKPOINT_FILE} (written without {writer}?); no "
                "callback state is restored from it."
            )
            return registry.begin_restore(Saved({}, source=path, note=note), strict=strict).apply(), None
    return distributed.load_undoable(
        registry,
        path,
        strict=strict,
        on_world_size_change=on_world_size_change,
        trusted=trusted,
        relocate=relocate,
    )


def _broken_link(path: str) -> CheckpointError:
    try:
        target = repr(os.readlink(path))
    except OSError as exc:  # removed meanwhile, or unreadable
        target = f"an unreadable target ({exc.strerror})"
    return CheckpointError(
        f"{path}: is a symbolic link to {target}, which does not exist or loops back on itself; no "
        "callback was restored and nothing was loaded. Make the link point at the callstate file "
        "(mount what it points into), or remove the link to resume without callback states.",
        path=path,
        key=None,
    )
