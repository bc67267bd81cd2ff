"""Torch checkpoints: what callstate reads and writes in Lightning's ``.ckpt`` and ``loop``'s ``.pt``.

One ``torch.load``, after an inert scan of the file that imports and runs nothing (``_torch_io``;
the zip's checks in ``_torch_zip``, the pickle's opcodes in ``_pickle_scan``, the stand-ins in
``_torch_reader``), and the checkpoint's ``"callbacks"`` (``_torch_layout``). Only the front ends
that handle torch checkpoints import it (``callstate.loop``, ``callstate.lightning``, the CLI), so
``import callstate`` loads neither it nor the zip and pickle machinery it needs.
"""

from ._torch_io import torch_load as torch_load
from ._torch_io import torch_save as torch_save
from ._torch_layout import CALLBACKS as CALLBACKS
from ._torch_layout import callbacks_of as callbacks_of
from ._torch_reader import TorchFile as TorchFile

__all__ = [
    "CALLBACKS",
    "TorchFile",
    "callbacks_of",
    "torch_load",
    "torch_save",
]
