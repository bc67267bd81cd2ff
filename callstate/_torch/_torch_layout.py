"""Where callback states sit in a torch checkpoint: its ``"callbacks"`` mapping, checked.

Shared by the loader (``_torch_io``, after ``torch.load``) and the inert reader (``_torch_reader``,
without it), so both check a checkpoint the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import islice
from typing import Any

from .._support import show
from ..errors import CorruptCheckpointError

# The entry of a torch checkpoint that holds the callbacks' states, in Lightning's and callstate.loop's.
CALLBACKS = "callbacks"
# What a checkpoint with callback states is, as messages name it when told nothing more precise.
CHECKPOINTS = "a Lightning checkpoint or a callstate.loop.save_checkpoint file"


def callbacks_of(
    checkpoint: object, name: str | None, *, required: bool, expected: str = CHECKPOINTS
) -> Mapping[Any, Any]:
    """Return a torch checkpoint's ``"callbacks"`` mapping, ``{key: state}``, once checked.

    Args:
        checkpoint: what ``torch.load`` returned for the file (or what stands for it).
        name: the file, named in messages and as the errors' ``path``; None for an object in memory.
        required: whether a checkpoint without ``"callbacks"`` is refused; if not, it gives ``{}``
            (a Lightning checkpoint saved with weights only has none).
        expected: what the file should be, for the messages (``"a Lightning checkpoint"``).

    Raises:
        CorruptCheckpointError: ``checkpoint`` is not a mapping, its ``"callbacks"`` is not a mapping,
            or, ``required``, it has no ``"callbacks"``; ``.path`` is ``name``, ``.key`` is
            ``"callbacks"``.
    """
    if not isinstance(checkpoint, Mapping):
        problem = (
            f" holds a {type(checkpoint).__qualname__}, not {expected} (a dict with a {CALLBACKS!r} "
            "entry): check the path."
        )
    elif CALLBACKS not in checkpoint:
        if not required:
            return {}
        # Keys from the file: a bounded number, each shown bounded and escaped.
        entries = sorted(k if isinstance(k, str) else show(k, 60) for k in islice(checkpoint, 1000))
        shown = entries[:10] + (["..."] if len(checkpoint) > 10 else [])
        problem = (
            f" is a checkpoint without a {CALLBACKS!r} entry (its entries: {show(shown, 400)}), so not "
            f"{expected}: check the path."
        )
    elif not isinstance(checkpoint[CALLBACKS], Mapping):
        problem = (
            f": its {CALLBACKS!r} entry is a {type(checkpoint[CALLBACKS]).__qualname__}, not a mapping of "
            f"key -> state, so it is not {expected} or was altered; restore it from a copy."
        )
    else:
        callbacks: Mapping[Any, Any] = checkpoint[CALLBACKS]
        return callbacks
    subject = show(name) if name is not None else "The checkpoint"
    raise CorruptCheckpointError(subject + problem, path=name, key=CALLBACKS)
