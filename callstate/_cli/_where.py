"""Where a command's files are: a local path, or an fsspec URL (``s3://...``) reached with the
``--storage-option`` values and, for the rest, the credentials the backend reads from the environment.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from .._encoding import MAGIC, open_regular
from .._io import exists, head, is_url, local_path
from .._support import escape
from ..errors import CorruptCheckpointError

_ZIP_MAGIC = b"PK\x03\x04"


class UsageError(Exception):
    """A command-line mistake: reported on one line, exit status 2."""


def storage_options(pairs: Sequence[str]) -> dict[str, Any]:
    """Return the fsspec options ``--storage-option KEY=VALUE`` gave: a VALUE that parses as JSON is
    that value (``true``, ``9000``, ``{"region_name": "eu-west-1"}``), any other is the text itself."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, equals, text = pair.partition("=")
        if not equals or not key.strip():
            raise UsageError(
                f"--storage-option {escape(pair, 200)}: give KEY=VALUE (for example "
                "--storage-option endpoint_url=http://127.0.0.1:9000)."
            )
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = text
        options[key.strip()] = value
    return options


def file_size(path: str, options: dict[str, Any]) -> int:
    """Return the size of a file or remote object, or 0 if it cannot be told (progress only)."""
    if is_url(path):
        try:
            return head(path, 0, options)[1]
        except (OSError, CorruptCheckpointError):
            return 0
    try:
        return os.stat(local_path(path)).st_size
    except OSError:
        return 0


def kind(path: str, options: dict[str, Any]) -> str:
    """Return ``"callstate"`` or ``"torch"`` from a file's (or remote object's) first bytes."""
    if is_url(path):
        first = head(path, len(MAGIC), options)[0]
    else:
        try:
            f = open_regular(local_path(path))
        except CorruptCheckpointError as exc:  # a directory, a FIFO, a device: no checkpoint file at all
            raise UsageError(str(exc)) from None
        with f:
            first = f.read(len(MAGIC))
    if first == MAGIC:
        return "callstate"
    if first.startswith(_ZIP_MAGIC):
        return "torch"
    raise CorruptCheckpointError(
        f"{escape(path)}: neither a callstate file nor a torch checkpoint (torch.save's zip format); its "
        f"first bytes are {first!r}. Check the path.",
        path=path,
    )


def present(path: str, options: dict[str, Any]) -> bool:
    """Return whether a file (or remote object) is at ``path``."""
    return exists(path, options) if is_url(path) else os.path.exists(local_path(path))


def same(a: str, b: str) -> bool:
    """Return whether two command-line names are the same file (URLs: the same text)."""
    if is_url(a) or is_url(b):
        return a == b
    return os.path.abspath(local_path(a)) == os.path.abspath(local_path(b))


def in_place(path: str) -> str:
    """Return what an in-place rewrite of ``path`` saves to: the file a symlink names (a save would
    replace the link itself), or the URL as it is."""
    return path if is_url(path) else os.path.realpath(local_path(path))
