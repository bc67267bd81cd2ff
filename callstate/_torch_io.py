"""Reading torch checkpoints that callstate did not write: one torch.load, one set of rules."""

from __future__ import annotations

import os
import pickle
import re
from typing import Any

from ._errors import CorruptCheckpointError, UnsafeCheckpointError

# How torch.load(weights_only=True) names what it refused, across torch versions.
_BLOCKED = (
    re.compile(r"Unsupported global: GLOBAL (\S+) was not an allowed global"),
    re.compile(r"Trying to load unsupported GLOBAL (\S+) whose module"),
    re.compile(r"unrecognized function (.+?)(?: which belongs to|$)", re.MULTILINE),
    re.compile(r"types allowlisted via `add_safe_globals`, but got <class '([^']+)'>"),
    re.compile(r"classes allowlisted via `add_safe_globals` but got <class '([^']+)'>"),
)


def blocked_global(message: str) -> str | None:
    """Return the global that torch.load's message says it refused, if it says one."""
    for pattern in _BLOCKED:
        found = pattern.search(message)
        if found is not None:
            return found.group(1)
    return None


def torch_load(path: str | os.PathLike[str], *, trusted: bool, map_location: Any = "cpu") -> Any:
    """Return ``torch.load(path)``, with ``weights_only`` unless ``trusted``; failures as callstate errors.

    Raises:
        UnsafeCheckpointError: not ``trusted``, and the file needs a global torch refuses (named).
        CorruptCheckpointError: the file is not a readable torch checkpoint.
        OSError: it cannot be opened.
    """
    import torch

    name = os.fspath(path)
    try:
        return torch.load(name, map_location=map_location, weights_only=not trusted)
    except OSError:
        raise
    except Exception as exc:
        text = str(exc)
        blocked = blocked_global(text) if not trusted and isinstance(exc, pickle.UnpicklingError) else None
        if blocked is not None:
            raise UnsafeCheckpointError(
                f"{name!r} needs the global {blocked} to be loaded, which torch.load(weights_only=True) "
                "refuses; nothing was run. If you trust the file, pass trusted=True (or allowlist the "
                "global with torch.serialization.add_safe_globals).",
                global_name=blocked,
                path=name,
            ) from None
        if "WeightsUnpickler error:" in text:  # the useful line of torch's long message
            text = text.split("WeightsUnpickler error:", 1)[1].strip()
        first = text.splitlines()[0] if text else ""
        raise CorruptCheckpointError(
            f"{name!r} is not a readable torch checkpoint ({type(exc).__name__}: {first}): it is truncated, "
            "altered or another format.",
            path=name,
        ) from exc
