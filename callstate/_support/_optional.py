"""Optional dependencies: imported when a feature needs them, with the install command when missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import MissingDependencyError


def require(module: str, *, extra: str, needed_for: str) -> ModuleType:
    """Import ``module``, or raise MissingDependencyError saying ``pip install 'callstate[extra]'``.

    ``needed_for`` names the feature in the message ("save_checkpoint to a .pt file").
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        top = module.partition(".")[0]
        missing = exc.name or module
        if not (module == missing or module.startswith(f"{missing}.")):
            raise  # the package is installed but something it imports is not: not ours to explain
        hint = f"pip install 'callstate[{extra}]'"
        if top == "torch":
            # An unpinned torch from PyPI is a multi-GB CUDA build on most Linux machines.
            hint += " (for the smaller CPU build, install torch first: https://pytorch.org/get-started/locally/)"
        raise MissingDependencyError(
            f"{needed_for} needs {top}, which is not installed here: {hint}.",
            name=top,
            extra=extra,
        ) from None
