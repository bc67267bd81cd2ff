"""``callstate.read``, ``inspect`` and ``load`` for every checkpoint kind callstate knows.

A callstate file (by its magic bytes), a torch checkpoint (a zip: Lightning's ``.ckpt``,
``callstate.loop``'s ``.pt``; their ``"callbacks"``), or a framework's checkpoint directory (a Hugging
Face ``checkpoint-N/``, an accelerate directory) holding ``callbacks.callstate``. Each is read as the
call made for it reads it, as safely: torch files through ``_torch``'s scan and
``torch.load(weights_only=True)`` unless trusted. Above ``_torch``, which only the functions here
import (so ``import callstate`` loads no zip or pickle machinery); a URL is a callstate file unless it
ends like a torch checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from ._core import (
    MANIFEST_KEY,
    VERSIONS_KEY,
    CallbackRegistry,
    RestoreReport,
    Saved,
    as_registry,
    relocation_of,
    share_objects,
    version_for,
)
from ._encoding import MAGIC, EncodedState, EntryInfo, Source, open_regular
from ._io import StorageOptions, is_url, local_path
from ._io import inspect as inspect_file
from ._io import load as load_file
from ._io import read as read_file
from ._support import escape, show
from .errors import CallstateError, CorruptCheckpointError, PathTypeError

# The callstate file a framework adapter (callstate.transformers, callstate.accelerate) writes into
# each checkpoint directory of its framework.
CHECKPOINT_FILE = "callbacks.callstate"
_ZIP_MAGIC = b"PK\x03\x04"
_TORCH_SUFFIXES = (".ckpt", ".pt", ".pth")
# Lightning writes this into every checkpoint; callstate.loop's files do not have it.
_LIGHTNING_VERSION = "pytorch-lightning_version"
_READERS = (
    "callstate files, torch checkpoints (Lightning's .ckpt, callstate.loop's .pt) and framework "
    f"checkpoint directories holding {CHECKPOINT_FILE} (Hugging Face's checkpoint-N, accelerate's)"
)


def kind_of(source: Source, what: str) -> tuple[str, Source]:
    """Return ``("callstate" | "torch" | "directory", the file to read)`` for ``source``.

    Raises:
        PathTypeError: ``source`` is not a path, a URL or bytes.
        CorruptCheckpointError: neither kind (its first bytes named), a directory without
            ``callbacks.callstate``, a FIFO or a device.
        FileNotFoundError: no such file.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        return "callstate", source
    if not isinstance(source, str | os.PathLike):
        raise PathTypeError(
            f"{what} takes a path (str or os.PathLike) or an fsspec URL (str)"
            + (" or the bytes of a callstate file" if what == "callstate.read" else "")
            + f"; got {type(source).__qualname__}.",
            got=type(source),
        )
    name = os.fspath(source)
    if not isinstance(name, str):
        raise PathTypeError(
            f"{what} takes a str path; got a bytes path {show(name)}: decode it (os.fsdecode).",
            got=type(name),
        )
    if is_url(name):
        return ("torch" if name.endswith(_TORCH_SUFFIXES) else "callstate"), name
    name = os.fspath(local_path(name))  # a file:// URL names a local file
    if os.path.isdir(name):
        inner = os.path.join(name, CHECKPOINT_FILE)
        if not os.path.lexists(inner):
            raise CorruptCheckpointError(
                f"{escape(name)}: is a directory without {CHECKPOINT_FILE}, so no checkpoint callstate "
                f"reads. {what} reads {_READERS}: give the path of the checkpoint file, or of a "
                "directory written with callstate.transformers or callstate.accelerate.",
                path=name,
            )
        return "directory", inner
    with open_regular(name) as f:
        head = f.read(len(MAGIC))
    if head == MAGIC:
        return "callstate", name
    if head.startswith(_ZIP_MAGIC):
        return "torch", name
    raise CorruptCheckpointError(
        f"{escape(name)}: neither a callstate file nor a torch checkpoint (torch.save's zip format): its "
        f"first bytes are {show(head)}. {what} reads {_READERS}; check the path.",
        path=name,
    )


def _torch_states(name: str, trusted: bool, storage_options: StorageOptions) -> tuple[dict[Any, Any], bool]:
    """Return a torch checkpoint's callback states (its versions as the versions entry) and whether
    it is Lightning's."""
    from ._torch import callbacks_of, torch_load

    checkpoint = torch_load(name, trusted=trusted, storage_options=storage_options)
    lightning = isinstance(checkpoint, Mapping) and _LIGHTNING_VERSION in checkpoint
    states = dict(callbacks_of(checkpoint, name, required=not lightning))
    outside = checkpoint.get(VERSIONS_KEY)  # where CallstateCallback writes them, beside "callbacks"
    if isinstance(outside, Mapping) and outside:
        inside = states.get(VERSIONS_KEY)
        states[VERSIONS_KEY] = {**outside, **(inside if isinstance(inside, Mapping) else {})}
    return states, lightning


def read(
    source: Source,
    *,
    trusted: bool = False,
    lazy: bool = False,
    trust_kept: bool = False,
    storage_options: StorageOptions = None,
) -> dict[Any, Any]:
    """Return the ``{key: state}`` mapping of a checkpoint, with no registry.

    Reads a callstate file or its bytes (every checksum verified before anything is decoded), a
    torch checkpoint (Lightning's ``.ckpt``, ``callstate.loop``'s ``.pt``: its ``"callbacks"``), or a
    framework checkpoint directory holding ``callbacks.callstate`` (Hugging Face's ``checkpoint-N``,
    accelerate's). When an entry was saved at a version other than 1 of its class, the mapping ends
    with a ``"callstate:versions"`` entry ``{key: version}``. Per-rank states keep their
    ``key@rank<n>`` keys, beside the ``"callstate:distributed"`` entry that records their layout;
    that entry is left out when it records a world of one without per-rank states (as
    single-process framework checkpoints of callstate < 0.2 have), which restores nothing differently.

    Args:
        source: a path, an fsspec URL (fetched whole; one ending in ``.ckpt``, ``.pt`` or ``.pth``
            is read as a torch checkpoint), or the bytes of a callstate file.
        trusted: decode pickles (callstate's) or load with ``torch.load(weights_only=False)``, which
            can run any code. Only for files you trust.
        lazy: for a callstate file, return ``EncodedState`` values, decoding nothing (a torch
            checkpoint's states are decoded by ``torch.load`` whatever ``lazy`` says).
        trust_kept: with ``trusted``, also decode pickled states that a save kept from another file
            read without trust (see the callstate file reader's ``trust_kept``).
        storage_options: for a URL, the fsspec backend's options (see ``save``).

    Raises:
        CorruptCheckpointError: damaged, or not a checkpoint callstate reads (what it is is said).
        UnsupportedFormatError: written by a newer format version.
        UnsafeCheckpointError: it needs a pickle or a global refused without ``trusted`` (nothing was run).
        PathTypeError: ``source`` is not a path, a URL or bytes.
        MissingDependencyError: a torch checkpoint, and torch is not installed.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2 torch checkpoints and framework checkpoint directories.
    """
    kind, file = kind_of(source, "callstate.read")
    if kind == "torch":
        return _torch_states(os.fspath(file), trusted, storage_options)[0]  # type: ignore[arg-type]
    out = read_file(file, trusted=trusted, lazy=lazy, trust_kept=trust_kept, storage_options=storage_options)
    if MANIFEST_KEY in out and _says_nothing(out[MANIFEST_KEY]):
        del out[MANIFEST_KEY]
    return out


def _says_nothing(manifest: Any) -> bool:
    """Whether a per-rank layout's record is that of a world of one without per-rank states, as
    callstate < 0.2 wrote into single-process framework checkpoints: it restores nothing differently.
    Any other is kept, so that ``save(read(path), path)`` keeps a per-rank file restorable."""
    if isinstance(manifest, EncodedState):
        try:
            manifest = manifest.decode()
        except CallstateError:
            return False  # damaged: kept, for the reader that restores from it to report
    return isinstance(manifest, Mapping) and manifest.get("world_size") == 1 and not manifest.get("per_rank")


def inspect(source: Source, *, storage_options: StorageOptions = None) -> list[EntryInfo]:
    """Describe every entry of a checkpoint (key, codec, size, checksum) without decoding any.

    Takes what ``read`` takes but bytes. A torch checkpoint is read without running it (no
    ``torch.load``): each of its callbacks' states is described with codec ``"torch"``, its size and
    whether its records match the zip's CRC-32, and an empty ``checksum``.

    Raises:
        CorruptCheckpointError: the header, index or footer is damaged (a damaged payload is
            reported as ``ok=False`` instead), or it is not a checkpoint callstate reads.
        UnsupportedFormatError: the file was written by a newer format version.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2 torch checkpoints and framework checkpoint directories.
    """
    kind, file = kind_of(source, "callstate.inspect")
    if kind != "torch":
        return inspect_file(file, storage_options=storage_options)
    name = os.fspath(file)  # type: ignore[arg-type]
    if is_url(name):
        raise CorruptCheckpointError(
            f"{escape(name)}: callstate.inspect reads torch checkpoints from local files only; copy it "
            "here first, or use callstate.read (which fetches it whole and loads it).",
            path=name,
        )
    from ._torch import TorchFile

    tf = TorchFile(name)
    try:
        bad = tf.bad_records()
    finally:
        tf.close()
    return [
        EntryInfo(
            key=str(key),
            codec="torch",
            size=tf.sizes[key],
            checksum="",
            ok=not any(r.key in bad for r in refs),
            version=version_for(tf.versions, key) or 1,
        )
        for key, refs in tf.entries.items()
    ]


def load(
    target: CallbackRegistry | Iterable[object],
    path: str | os.PathLike[str],
    *,
    strict: bool = False,
    trusted: bool = False,
    relocate: Mapping[Any, Any] | None = None,
    storage_options: StorageOptions = None,
) -> RestoreReport:
    """Restore the callbacks of ``target`` from a checkpoint.

    A callstate file: only the states that a callback claims are decoded (each checked against its
    checksum first); the others stay encoded in ``registry.unclaimed`` and are written back byte for
    byte by the next save. A torch checkpoint (Lightning's ``.ckpt``, ``callstate.loop``'s ``.pt``):
    its ``"callbacks"``, loaded by ``torch.load(weights_only=True)`` unless ``trusted`` (a
    Lightning checkpoint omits empty states: a callback whose state is empty is not missing). A
    framework checkpoint directory: its ``callbacks.callstate``, as ``callstate.distributed.load``
    reads it (each callback gets its own rank's state; collective under ``torch.distributed``).

    Args:
        target: a ``CallbackRegistry`` or a list of callbacks.
        path: the file or directory, or an fsspec URL: a callstate file's header and index are
            fetched, then only the claimed entries, by ranged reads; one ending in ``.ckpt``, ``.pt``
            or ``.pth`` is fetched whole and loaded as a torch checkpoint.
        strict: see ``CallbackRegistry.load_state_dict``.
        trusted: also decode states saved with pickle or cloudpickle, or load a torch checkpoint with
            ``torch.load(weights_only=False)``; either can run any code. Only for files you trust;
            by default only plain data is decoded, with no pickle (see ``callstate.register_type``).
        relocate: ``{old prefix: new prefix}``: paths in the claimed states that are an old prefix
            or lie under it (whole components; URLs too) are moved to the new one before the
            callbacks see them, and counted in the report's ``relocated``.

    Raises:
        CorruptCheckpointError: the file is truncated, altered, or not a checkpoint callstate reads.
        UnsupportedFormatError: it was written by a newer format version.
        UnsafeCheckpointError: a claimed state is a pickle (or the torch checkpoint needs a global
            torch refuses) and ``trusted`` is false (nothing was run, no callback was changed).
        UnknownTypeError: a claimed state holds a registered type not registered here.
        StateMismatchError, RestoreError: as for ``CallbackRegistry.load_state_dict``.
        RelocationError: relocating made two dict keys of a state one (nothing was changed).
        CheckpointNotFoundError: a URL names no object (a missing local file: ``FileNotFoundError``).
        PathTypeError: ``path`` is not a path or a URL (for bytes: ``callstate.loads``).

    ``storage_options``: see ``save``.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2 fsspec URLs and ``storage_options``; torch checkpoints and framework
       checkpoint directories.
    """
    if isinstance(path, bytes | bytearray | memoryview):
        raise PathTypeError(
            "callstate.load takes a path (str or os.PathLike) or an fsspec URL; for the bytes of a "
            "callstate file use callstate.loads(target, data).",
            got=type(path),
        )
    registry = as_registry(target, what="callstate.load")
    relocation = relocation_of(relocate)  # a malformed relocate= fails before the file is opened
    kind, file = kind_of(path, "callstate.load")
    name = os.fspath(file)  # type: ignore[arg-type]
    if kind == "callstate":
        return load_file(
            target, name, strict=strict, trusted=trusted, relocate=relocate, storage_options=storage_options
        )
    if kind == "directory":
        from . import distributed

        return distributed.load(target, name, strict=strict, trusted=trusted, relocate=relocate)
    states, lightning = _torch_states(name, trusted, storage_options)
    # torch.load gives one object to states that shared it when saved: each then gets a copy of its own.
    fresh = not share_objects(states.values())
    saved = Saved(states, source=name, fresh=fresh, omits_empty=lightning, relocate=relocation)
    return registry.begin_restore(saved, strict=strict).apply()
