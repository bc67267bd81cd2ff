"""Resumable callbacks for hand-written training loops: hook dispatch and one-file checkpoints.

``Callbacks`` is a ``CallbackRegistry`` that also calls hooks; ``save_checkpoint``/``load_checkpoint``
put a model, an optimizer and the callbacks into one file (a ``torch.save`` file or a callstate
file), written atomically.
This module imports torch only when a checkpoint function is called.

.. versionadded:: 0.1
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from itertools import islice
from typing import TYPE_CHECKING, Any

import attrs

from ._core import (
    VERSIONS_KEY,
    CallbackRegistry,
    RestoreReport,
    Saved,
    as_registry,
    as_states,
    is_stateful,
    relocation_of,
    share_objects,
)
from ._encoding import EncodedState
from ._io import StorageOptions, read, read_meta, save, save_async, write_in_background
from ._support import add_note, show
from ._torch import CALLBACKS, callbacks_of, torch_load, torch_save
from .errors import CallstateError, CheckpointError, CorruptCheckpointError

if TYPE_CHECKING:
    from concurrent.futures import Future

__all__ = ["Callbacks", "LoadedCheckpoint", "load_checkpoint", "save_checkpoint", "save_checkpoint_async"]

CALLSTATE_SUFFIX = ".callstate"
_META = "callstate.loop"


class Callbacks(CallbackRegistry):
    """A ``CallbackRegistry`` for custom training loops: it also calls the callbacks' hooks.

    ``Callbacks([EarlyStopping("val_loss"), EMA(0.99)])`` keys and saves its callbacks exactly as
    ``CallbackRegistry`` does, and ``callbacks.call("on_train_batch_end", step=step, loss=loss)``
    calls that method on every registered callback that has it.

    .. versionadded:: 0.1
    """

    def call(self, hook: str, /, *args: Any, **kwargs: Any) -> list[Any]:
        """Call ``hook(*args, **kwargs)`` on every callback that defines it; return the results.

        Callbacks are called in registration order; those without the hook are skipped, so the
        result list holds one value per callback that has it, in that order.

        Raises:
            TypeError: ``hook`` is not a method name, or a callback's ``hook`` attribute is not
                callable.
            Exception: whatever a hook raises, unchanged, with a note naming the hook and the
                callback's key (``exc.__notes__``); the callbacks after it are not called.

        .. versionadded:: 0.1
        """
        if not isinstance(hook, str) or not hook.isidentifier():
            raise TypeError(f"Callbacks.call: the hook must be a method name (a str), got {hook!r}.")
        results: list[Any] = []
        for obj in self:
            method = getattr(obj, hook, None)
            if method is None:
                continue
            if not callable(method):
                raise TypeError(
                    f"Callback {self._safe_key(obj)!r}: its attribute {hook!r} is "
                    f"{type(method).__qualname__}, not a method; rename it, or make it a method."
                )
            try:
                results.append(method(*args, **kwargs))
            except Exception as exc:
                add_note(exc, f"raised by {hook}() of callback {self._safe_key(obj)!r}")
                raise
        return results

    def _safe_key(self, obj: object) -> str:
        try:
            return self.key_of(obj)
        except CallstateError:
            return type(obj).__qualname__


@attrs.frozen
class LoadedCheckpoint:
    """What ``load_checkpoint`` restored and what it only read.

    Attributes:
        report: the callbacks' ``RestoreReport``.
        extra: the checkpoint's other entries (a step counter, RNG states, ...), not restored
            into anything.

    .. versionadded:: 0.1
    """

    report: RestoreReport
    extra: Mapping[str, Any]



def _is_callstate_file(path: str | os.PathLike[str]) -> bool:
    return os.fspath(path).endswith(CALLSTATE_SUFFIX)


def save_checkpoint(
    path: str | os.PathLike[str],
    callbacks: CallbackRegistry | Iterable[object],
    /,
    *,
    storage_options: StorageOptions = None,
    **objects: Any,
) -> None:
    """Write the callbacks' states and the given objects to one checkpoint file, atomically.

    Each keyword argument is saved under its name: an object with ``state_dict()`` (a model, an
    optimizer, a scheduler) as its state, anything else (a step counter, RNG states) as is.

    A path ending in ``.callstate`` gets a callstate file: one checked entry per callback, under its
    key, and one per object, under its name (``callstate inspect`` lists them all). Any other path
    gets a ``torch.save`` file ``{name: state, ..., "callbacks": {key: state}}``, shaped like a
    Lightning checkpoint. ``path`` may be an fsspec URL (``s3://...``, with ``storage_options``, see
    ``callstate.save``): the finished bytes are uploaded in one call.

    Raises:
        TypeError: an object is named ``callbacks`` (torch file), or like a callback's key
            (callstate file).
        DuplicateKeyError: two callbacks' keys collide (nothing is written).
        SerializationError: a state cannot be saved to a callstate file (nothing is written).

    .. versionadded:: 0.1
    """
    mapping, meta = _checkpoint(path, callbacks, objects, "save_checkpoint")
    if meta is not None:
        save(mapping, path, meta=meta, storage_options=storage_options)
    else:
        torch_save(mapping, path, storage_options)


def save_checkpoint_async(
    path: str | os.PathLike[str],
    callbacks: CallbackRegistry | Iterable[object],
    /,
    *,
    storage_options: StorageOptions = None,
    **objects: Any,
) -> Future[None]:
    """Like ``save_checkpoint``, with the write in the background (see ``callstate.save_async``).

    Every state is captured before this returns: a ``.callstate`` file's states as
    ``callstate.save_async`` captures them, a torch file serialised into memory by ``torch.save``
    at the call. The write, its fsync and the rename happen in a background thread, one at a time
    per path; the interpreter waits for them before it exits.

    Returns:
        A ``concurrent.futures.Future``: ``result()`` is None once the file is in place, or raises
        what the write raised (``CheckpointWriteError``; the previous file is then unchanged).

    Raises:
        TypeError, DuplicateKeyError, SerializationError: as for ``save_checkpoint``, at the call.

    .. versionadded:: 0.1
    """
    mapping, meta = _checkpoint(path, callbacks, objects, "save_checkpoint_async")
    if meta is not None:
        return save_async(mapping, path, meta=meta, storage_options=storage_options)
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(mapping, buffer)
    data = buffer.getbuffer()
    return write_in_background(path, lambda f: f.write(data), storage_options)


def _checkpoint(
    path: str | os.PathLike[str], callbacks: CallbackRegistry | Iterable[object], objects: Mapping[str, Any],
    what: str,
) -> tuple[dict[Any, Any], dict[str, Any] | None]:
    """Return what a checkpoint file holds, and its metadata for a callstate file (None: a torch file)."""
    states = as_states(as_registry(callbacks, what=what))
    values = {name: obj.state_dict() if is_stateful(obj) else obj for name, obj in objects.items()}
    if _is_callstate_file(path):
        clash = [name for name in objects if name in states]
        if clash:
            raise TypeError(f"{what}: {clash!r} are both object names and callback keys; rename the objects.")
        mapping: dict[Any, Any] = dict(values)
        mapping.update(states)
        return mapping, {_META: {"objects": list(objects)}}
    if CALLBACKS in objects:
        raise TypeError(f"{what}: the name {CALLBACKS!r} is the callbacks' own; rename the object.")
    # States kept undecoded from a callstate file have no torch form: torch gets the decoded state.
    values[CALLBACKS] = {k: v.decode() if isinstance(v, EncodedState) else v for k, v in states.items()}
    return values, None


def load_checkpoint(
    path: str | os.PathLike[str],
    callbacks: CallbackRegistry | Iterable[object],
    /,
    *,
    strict: bool = False,
    trusted: bool = False,
    map_location: Any = "cpu",
    relocate: Mapping[Any, Any] | None = None,
    storage_options: StorageOptions = None,
    **objects: Any,
) -> LoadedCheckpoint:
    """Read a ``save_checkpoint`` file and restore ``callbacks`` and every object given by name.

    Each keyword argument must have ``load_state_dict``; it receives the state saved under its
    name. Everything is read and decoded first; then the callbacks are restored (with ``strict`` as
    for ``load_state_dict``), then the objects in the order given, all in one transaction: if any
    ``load_state_dict`` raises (a model whose shapes do not match), every callback and object
    restored before it gets its previous state back.

    Args:
        strict: see ``CallbackRegistry.load_state_dict``.
        trusted: decode anything the file holds, which can run code from it. By default only plain
            data and tensors are read (``torch.load(weights_only=True)``, or callstate's allowlist).
        map_location: passed to ``torch.load`` (torch files only).
        relocate: ``{old prefix: new prefix}`` for the paths inside the callbacks' states (see
            ``callstate.load``); the objects' states are given as saved.
        storage_options: for an fsspec URL ``path``, the backend's options (see ``callstate.save``).

    Returns:
        A ``LoadedCheckpoint`` with the callbacks' report and the entries not restored.

    Raises:
        UnsafeCheckpointError: not ``trusted`` and the file needs more than plain data and tensors
            (nothing was run).
        CorruptCheckpointError: the file is truncated, altered, or not a checkpoint.
        CheckpointError: the file has no entry for a given object (nothing is restored).
        TypeError: a given object has no ``load_state_dict``.
        StateMismatchError: as ``CallbackRegistry.load_state_dict`` (nothing is restored).
        RestoreError: a callback's or an object's ``load_state_dict`` raised (the cause is
            chained); everything has its previous state back.

    .. versionadded:: 0.1
    """
    not_stateful = [name for name, obj in objects.items() if not is_stateful(obj)]
    if not_stateful:
        raise TypeError(
            f"load_checkpoint: {not_stateful!r} have no state_dict/load_state_dict; pass only objects "
            "to restore, and read other entries from the result's .extra."
        )
    relocation = relocation_of(relocate)
    name = os.fspath(path)
    callback_states: Mapping[Any, Any]
    versions, fresh = None, True
    if _is_callstate_file(path):
        callback_states, values = _read_callstate_checkpoint(
            name, objects, trusted=trusted, storage_options=storage_options
        )
    else:
        checkpoint = torch_load(
            path, trusted=trusted, map_location=map_location, storage_options=storage_options
        )
        callback_states = callbacks_of(
            checkpoint, name, required=True, expected="a callstate.loop.save_checkpoint file"
        )
        _check_present(name, objects, checkpoint)
        # Versions beside "callbacks", where CallstateCallback writes them into a Lightning checkpoint.
        versions = checkpoint.get(VERSIONS_KEY)
        values = {k: v for k, v in checkpoint.items() if k not in (CALLBACKS, VERSIONS_KEY)}
        # torch.load gives one object to states that shared it when saved: each then gets a copy of its own.
        fresh = not share_objects(callback_states.values())
    saved = Saved(callback_states, source=name, fresh=fresh, versions=versions, relocate=relocation)
    restore = as_registry(callbacks, what="load_checkpoint").begin_restore(saved, strict=strict)
    for key, obj in objects.items():
        restore.include(key, obj, values[key])
    report = restore.apply()
    extra = {k: v for k, v in values.items() if k not in objects}
    return LoadedCheckpoint(report=report, extra=extra)


def _check_present(name: str, objects: Mapping[str, Any], found: Mapping[Any, Any]) -> None:
    absent = [key for key in objects if key not in found]
    if absent:
        raise CheckpointError(
            f"{show(name)} has no entry for {show(absent)} (it has {show(_names(found), 400)}): pass the "
            "names used when saving.",
            path=name,
            key=absent[0],
        )


def _names(found: Mapping[Any, Any]) -> list[str]:
    """The keys of ``found`` (from a file) for a message: sorted, a bounded number, each shown bounded."""
    return sorted(k if isinstance(k, str) else show(k, 60) for k in islice(found, 1000))


def _read_callstate_checkpoint(
    name: str, objects: Mapping[str, Any], *, trusted: bool, storage_options: StorageOptions
) -> tuple[dict[Any, Any], dict[str, Any]]:
    """Return the callbacks' states (undecoded) and the decoded other entries of a callstate file."""
    entries = read(name, trusted=trusted, lazy=True, storage_options=storage_options)
    saved = read_meta(name, storage_options=storage_options).get(_META, {})
    names = saved.get("objects", []) if isinstance(saved, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CorruptCheckpointError(
            f"{show(name)}: its metadata {_META!r} is {show(saved, 120)}, not {{'objects': [str, ...]}}, as "
            "callstate.loop.save_checkpoint writes it; the file was altered. Remove the metadata (save "
            "the states again with callstate.save) to load it as a plain callstate file.",
            path=name,
            key=_META,
        )
    # Without our metadata (a plain callstate file), only the entries asked for are objects.
    others = [n for n in names if n in entries]
    others += [n for n in objects if n not in others]
    _check_present(name, objects, entries)
    values = {n: entries[n].decode() for n in others}
    states = {k: v for k, v in entries.items() if k not in values}
    return states, values
