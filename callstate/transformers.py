"""The Hugging Face adapter: every callback's state in every ``Trainer`` checkpoint, restored by key.

``CallstateTrainer`` (or ``CallstateTrainerMixin`` for a Trainer subclass of your own) with a
``CallstateCallback`` among its callbacks writes the callstate file ``callbacks.callstate`` into
every checkpoint directory, next to ``trainer_state.json``, and restores it when
``trainer.train(resume_from_checkpoint=...)`` resumes (a path, or ``True`` for the last checkpoint
of ``args.output_dir``), before any callback's ``on_train_begin``, in one transaction. That
transaction stays undoable until ``CallstateCallback.on_train_begin``, which HF calls once it has
loaded the checkpoint's model, optimizer, scheduler and trainer state: if ``train`` raises before
(HF refuses the checkpoint), the callbacks are put back as they were and the error propagates with
a note; HF reads ``rng_state.pth`` later, when the first epoch starts, so a failure there leaves the
callbacks restored. A checkpoint directory that does not exist is left to ``Trainer.train``, which
raises its own error. The file holds:

- the Trainer's callbacks that have ``state_dict``/``load_state_dict`` (or ``@callstate.stateful``),
  under their callstate keys;
- HF's own ``ExportableState`` callbacks (``EarlyStoppingCallback``, ...) keyed by their class and
  identity, their ``state()["args"]`` (``EarlyStoppingCallback{'early_stopping_patience': 3,
  'early_stopping_threshold': 0.0}``), restored into the instances given to the Trainer;
- the plain objects given to ``CallstateCallback(callbacks=...)``;
- the saved states that no callback claims, kept and written again at every later save.

What HF's own mechanism (``restore_callback_states_from_checkpoint=True``) does instead: it keys
states by class name and list position, appends every save's states to the saved list and
restores its first entries, rebuilds the callbacks from their saved ``args`` (the instances you
hold are dropped), and saves from the main process only.

Why a Trainer mixin: a ``TrainerCallback`` is never told which checkpoint ``train`` resumes from
(``on_train_begin`` gets ``args`` and the loaded ``state``, whose ``global_step`` only lets it guess
``output_dir/checkpoint-{global_step}``: wrong for a checkpoint elsewhere and for hyperparameter
search runs), it runs after the callbacks listed before it, and it is not told the directory of
the checkpoint being saved. ``CallstateTrainerMixin.train`` sees the path ``train`` is given and
resolves ``True`` as ``train`` does, and its ``_save_checkpoint`` knows the directory it just wrote.

A run whose ``output_dir`` was moved (another directory, machine or bucket mount) resumes with
``CallstateCallback(relocate={old: new})``: the paths in the callbacks' states follow it.

Under DDP every rank saves and restores (per-rank states, ``@stateful(per_rank=True)``, in the
layout of ``callstate.distributed``; rank 0 writes and reads the file).

Install with ``pip install 'callstate[transformers]'``.

.. versionadded:: 0.1
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
from collections.abc import Hashable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .errors import MissingDependencyError

try:
    from transformers import Trainer, TrainerCallback
    from transformers.trainer_callback import ExportableState, TrainerControl
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
except ImportError as error:
    raise MissingDependencyError(
        "callstate.transformers needs transformers, which is not installed: "
        "pip install 'callstate[transformers]'.",
        name="transformers",
        extra="transformers",
    ) from error

from ._adapters import CHECKPOINT_FILE, restore_from, save_into
from ._core import (
    CallbackRegistry,
    Relocation,
    RestoreReport,
    RestoreTransaction,
    Saved,
    as_registry,
    is_stateful,
    relocation_of,
    state_key,
)
from ._io import Policy, check_policy
from ._support import add_note, escape, show, warn_user
from .errors import CallstateWarning, DuplicateKeyError, UnsupportedTrainerError

__all__ = [
    "CHECKPOINT_FILE",
    "CallstateCallback",
    "CallstateTrainer",
    "CallstateTrainerMixin",
    "UnsupportedTrainerError",
]


class _Exported:
    """An HF ``ExportableState`` callback seen as a callstate callback: its ``attributes`` are its state."""

    def __init__(self, callback: Any) -> None:
        self.callback = callback

    def exported_args(self) -> Mapping[str, Any]:
        """Return the ``args`` of the callback's ``state()``: what tells it apart from its siblings."""
        return self._exported()[0]

    def _exported(self) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
        state = self.callback.state()
        args = state.get("args", {}) if isinstance(state, Mapping) else None
        attributes = state.get("attributes", {}) if isinstance(state, Mapping) else None
        if not isinstance(args, Mapping) or not isinstance(attributes, Mapping):
            raise TypeError(
                f"{type(self.callback).__qualname__}.state() returned {show(state)}, not "
                "{'args': {...}, 'attributes': {...}} as ExportableState requires."
            )
        return args, attributes

    @property
    def state_key(self) -> str:
        args, _ = self._exported()
        return f"{type(self.callback).__qualname__}{dict(args)!r}"

    def state_dict(self) -> dict[str, Any]:
        return dict(self._exported()[1])

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        _, attributes = self._exported()
        # Only the attributes state() exports: a file cannot set anything else on the callback.
        unknown = [k for k in state if k not in attributes] if isinstance(state, Mapping) else None
        if unknown is None or unknown:
            raise ValueError(
                f"{escape(self.state_key)}: the saved state {show(state)} has attributes {show(unknown)} "
                "that "
                f"{type(self.callback).__qualname__}.state() does not export ({show(sorted(attributes))})."
            )
        for name, value in state.items():
            setattr(self.callback, name, value)

    def __repr__(self) -> str:
        return f"{type(self.callback).__qualname__} (ExportableState)"


class CallstateCallback(TrainerCallback):
    """A ``TrainerCallback`` that makes a ``CallstateTrainer``'s checkpoints keep every callback's state.

    Give it to ``CallstateTrainer(callbacks=[...])`` (or any Trainer with ``CallstateTrainerMixin``);
    see the module's documentation for what is saved, and why a plain ``Trainer`` cannot do it.

    Args:
        callbacks: a ``CallbackRegistry`` or a list of plain objects (with ``state_dict``/
            ``load_state_dict``, not Trainer callbacks) whose states to save too, or None.
        strict: refuse a resume, changing nothing, when a saved state has no callback or a
            callback has no saved state (``StateMismatchError``).
        on_world_size_change: for per-rank states saved at another world size: ``"error"``,
            ``"broadcast"`` or ``"reshard"`` (see ``callstate.distributed.load_state_dict``).
        trusted: also decode states saved with pickle, which can run code from the file.
        relocate: ``{old prefix: new prefix}``: on resume, paths inside every callback's saved state
            that lie under an old prefix (an ``output_dir`` that was moved, with its checkpoints)
            are moved to the new one before the callbacks see them (see ``callstate.load``); also
            for the states adopted from a ``trainer_state.json``. Checked here: a malformed mapping
            raises ``TypeError`` or ``ValueError`` before anything is restored.

    Attributes:
        registry: the plain objects and, once ``train`` starts, the Trainer's stateful callbacks;
            its ``unclaimed`` holds the kept states.
        last_report: the ``RestoreReport`` of the last resume on this rank, or None; a resume that
            ``train`` puts back (the Trainer refused the checkpoint) leaves it as it was before.

    Raises (when ``train`` starts):
        UnsupportedTrainerError: the Trainer has no ``CallstateTrainerMixin``.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2 ``relocate``.
    """

    def __init__(
        self,
        callbacks: CallbackRegistry | Iterable[object] | None = None,
        *,
        strict: bool = False,
        on_world_size_change: Policy = "error",
        trusted: bool = False,
        relocate: Mapping[Any, Any] | None = None,
    ) -> None:
        check_policy(on_world_size_change)
        self.relocate: Relocation | None = relocation_of(relocate)
        self.registry = as_registry((), what="CallstateCallback") if callbacks is None else as_registry(
            callbacks, what="CallstateCallback"
        )
        self.strict = strict
        self.on_world_size_change: Policy = on_world_size_change
        self.trusted = trusted
        self.last_report: RestoreReport | None = None
        self._armed = False  # True while the mixin's train() runs
        # The resume's transaction, until on_train_begin (HF has loaded the checkpoint) commits it.
        self._pending: RestoreTransaction | None = None
        self._synced: dict[int, object] = {}  # id(Trainer callback) -> what is registered for it
        self._said_hfs_place = False
        #: How each key restored from a checkpoint's trainer_state.json was matched ("identity" or
        #: "class and order"), for the last resume that read one; None if none did.
        self.last_adoption: dict[str, str] | None = None

    def __repr__(self) -> str:
        return f"CallstateCallback({self.registry!r}, strict={self.strict})"

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Check that ``train`` went through ``CallstateTrainerMixin``; commit the resume's restore.

        HF calls it once it has loaded the model, optimizer, scheduler and trainer state of the
        checkpoint: from here on a failure of ``train`` no longer puts the callbacks back. It may
        come again in the same ``train`` (``auto_find_batch_size=True`` reruns the training loop
        at a smaller batch after an out-of-memory error): there is nothing to restore then, and
        the states restored at the first stay.

        Raises:
            UnsupportedTrainerError: it did not, so no checkpoint would hold or restore a state.
        """
        if not self._armed:
            raise UnsupportedTrainerError(
                "CallstateCallback is in a Trainer without CallstateTrainerMixin: a TrainerCallback is "
                "not told which checkpoint train() resumes from nor where a checkpoint is saved. Use "
                "callstate.transformers.CallstateTrainer, or add CallstateTrainerMixin before your "
                "Trainer class: class MyTrainer(CallstateTrainerMixin, Seq2SeqTrainer).",
                trainer="Trainer",
                needs="CallstateTrainerMixin",
            )
        self._pending = None

    # -- what CallstateTrainerMixin calls: the two moments a TrainerCallback is not told of -----------

    @contextlib.contextmanager
    def resuming(self, trainer: Any, path: str | None) -> Iterator[None]:
        """Restore from the checkpoint directory ``path`` (None: none), for the ``train`` run inside.

        The restore stays undoable until ``on_train_begin`` (HF has loaded the checkpoint) commits
        it: if the block raises before, the callbacks and ``last_report`` are put back, and the
        error propagates with a note saying so.
        """
        self._sync(trainer.callback_handler.callbacks)
        before = self.last_report
        if path is not None and os.path.isdir(path):
            adopted = not os.path.lexists(os.path.join(path, CHECKPOINT_FILE)) and self._adopt(trainer, path)
            if not adopted:
                self.last_report, self._pending = restore_from(
                    self.registry,
                    path,
                    strict=self.strict,
                    on_world_size_change=self.on_world_size_change,
                    trusted=self.trusted,
                    writer="CallstateCallback",
                    relocate=self.relocate,
                )
        self._armed = True
        try:
            yield
        except BaseException as exc:
            self._put_back(before, exc)
            raise
        finally:
            self._armed = False
            self._pending = None

    def _adopt(self, trainer: Any, path: str) -> bool:
        """Restore HF's ``ExportableState`` callbacks from ``path/trainer_state.json``, if it has any states.

        For a checkpoint written without the adapter: each callback takes the last saved entry of
        its class whose ``args`` are its own (by identity), else the entry at its position among
        the instances of its class (by class and order, as HF's own restore does). Returns False
        (nothing done) when the file has no ``stateful_callbacks`` entry for any of them.
        """
        exported = [
            obj
            for cb in trainer.callback_handler.callbacks
            if isinstance(obj := self._synced.get(id(cb)), _Exported)
        ]
        saved = _saved_callback_states(os.path.join(path, _TRAINER_STATE))
        states, how = _adoption(exported, saved)
        if not states:
            return False
        listing = ", ".join(f"{escape(key)} (by {way})" for key, way in how.items())
        # The restore says it, with the callbacks left without a state if any: one warning a resume.
        note = (
            f"{escape(path)}: has no {CHECKPOINT_FILE} (written without CallstateCallback?); the states "
            f"of HF's own callbacks were taken from its {_TRAINER_STATE} instead: {listing}."
        )
        keyed = self.registry.members()
        offered = Saved(states, source=path, note=note, relocate=self.relocate)
        restore = self.registry.begin_restore(offered, strict=self.strict, keyed=keyed)
        self.last_report, self._pending = restore.apply(), restore
        self.last_adoption = how
        return True

    def took_hfs_place(self) -> None:
        """Say, once, that this adapter restores the callbacks in place of HF's own restore."""
        if self._said_hfs_place:
            return
        self._said_hfs_place = True
        warn_user(
            CallstateWarning(
                "restore_callback_states_from_checkpoint=True: CallstateCallback restores the callbacks in "
                "place of HF's own restore, into the instances given to the Trainer (HF would build new "
                "ones from trainer_state.json); a checkpoint without callbacks.callstate is read from "
                "trainer_state.json's stateful_callbacks. HF still restores the TrainerControl."
            )
        )

    def save_checkpoint(self, trainer: Any, directory: str) -> None:
        """Write every callback's state into the checkpoint directory the Trainer has just written."""
        self._sync(trainer.callback_handler.callbacks)
        save_into(self.registry, directory)

    def _sync(self, trainer_callbacks: Iterable[Any]) -> None:
        """Register the Trainer's stateful callbacks, as they are now, in ``registry``."""
        current: dict[int, object] = {}
        for cb in trainer_callbacks:
            if isinstance(cb, CallstateCallback):
                continue
            if is_stateful(cb):
                current[id(cb)] = cb
            elif isinstance(cb, ExportableState):
                known = self._synced.get(id(cb))
                fresh = not (isinstance(known, _Exported) and known.callback is cb)
                current[id(cb)] = _Exported(cb) if fresh else known
        for ident in [k for k, obj in self._synced.items() if current.get(k) is not obj]:
            gone = self._synced.pop(ident)
            if gone in self.registry:
                self.registry.unregister(gone)
        for ident, obj in current.items():
            # Only what this registers is tracked: an object also given in callbacks= stays the user's.
            if ident not in self._synced and obj not in self.registry:
                self.registry.register(obj)  # raises DuplicateKeyError on a clash, naming both
                self._synced[ident] = obj

    def _put_back(self, report: RestoreReport | None, exc: BaseException) -> None:
        """Roll back a resume that ``on_train_begin`` has not committed; note on ``exc`` what was done."""
        restore, self._pending = self._pending, None
        if restore is None:
            return
        try:
            restore.roll_back()
        except Exception as failure:
            add_note(exc, f"callstate: putting the callbacks back after this error failed too: {failure}")
            return
        self.last_report = report
        add_note(
            exc,
            "callstate: train() raised before training began, so the callbacks restored from the checkpoint "
            "were put back as they were before train().",
        )


_TRAINER_STATE = "trainer_state.json"
# trainer_state.json holds the log history too; a file past this is not read for adoption (HF reads it).
_MAX_TRAINER_STATE = 256 * 1024 * 1024


def _saved_callback_states(path: str) -> Mapping[str, Any]:
    """Return ``stateful_callbacks`` of the ``trainer_state.json`` at ``path`` (plain JSON), or ``{}``.

    A missing, oversized or damaged file gives ``{}``: ``Trainer.train`` reads the same file next
    and raises its own error for it.
    """
    try:
        if os.path.getsize(path) > _MAX_TRAINER_STATE:
            return {}
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
    except (OSError, ValueError, RecursionError):
        return {}
    found = document.get("stateful_callbacks") if isinstance(document, dict) else None
    return found if isinstance(found, dict) else {}


def _entries(saved: object) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """Return the ``(args, attributes)`` of the saved entries of one class, in the saved order."""
    out: list[tuple[Mapping[str, Any], Mapping[str, Any]]] = []
    for entry in saved if isinstance(saved, list) else [saved]:
        args = entry.get("args", {}) if isinstance(entry, dict) else None
        attributes = entry.get("attributes", {}) if isinstance(entry, dict) else None
        if isinstance(args, dict) and isinstance(attributes, dict):
            out.append((args, attributes))
    return out


def _adoption(
    exported: list[_Exported], saved: Mapping[str, Any]
) -> tuple[dict[Hashable, Any], dict[str, str]]:
    """Match HF's saved ``stateful_callbacks`` to the Trainer's ``ExportableState`` callbacks.

    Returns ``{key: attributes}`` and ``{key: "identity" | "class and order"}``. HF appends each
    save's entries to the list of a class with several instances, so the last entry with a
    callback's ``args`` is its latest state.
    """
    states: dict[Hashable, Any] = {}
    how: dict[str, str] = {}
    by_class: dict[str, list[_Exported]] = {}
    for wrapper in exported:
        by_class.setdefault(type(wrapper.callback).__name__, []).append(wrapper)
    for name, wrappers in by_class.items():
        entries = _entries(saved.get(name))
        for position, wrapper in enumerate(wrappers):
            args = dict(wrapper.exported_args())
            same = [attributes for saved_args, attributes in entries if saved_args == args]
            if same:
                states[wrapper.state_key], how[wrapper.state_key] = same[-1], "identity"
            elif position < len(entries):
                states[wrapper.state_key], how[wrapper.state_key] = entries[position][1], "class and order"
    return states, how


def _told_apart(callbacks: Iterable[Any]) -> set[type]:
    """Return the classes of which ``callbacks`` holds several instances, all with distinct callstate keys."""
    keys: dict[type, list[str | None]] = {}
    for cb in callbacks:
        if isinstance(cb, type):
            keys.setdefault(cb, []).append(None)
            continue
        key: str | None = None
        with contextlib.suppress(Exception):  # a key that cannot be computed tells nothing apart
            if is_stateful(cb):
                key = state_key(cb)
            elif isinstance(cb, ExportableState):
                key = _Exported(cb).state_key
        keys.setdefault(type(cb), []).append(key)
    return {
        cls
        for cls, found in keys.items()
        if len(found) > 1 and None not in found and len(set(found)) == len(found)
    }


class _SilenceTwins(logging.Filter):
    """Drops HF's "there is already one" warning for the classes whose instances callstate tells apart."""

    def __init__(self, classes: set[type]) -> None:
        super().__init__()
        self.prefixes = tuple(f"You are adding a {cls} to the callbacks" for cls in classes)

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.prefixes and record.getMessage().startswith(self.prefixes))


@contextlib.contextmanager
def _twins_silenced(callbacks: Iterable[Any]) -> Iterator[None]:
    """Silence HF's duplicate-class warning, inside the block, for the classes callstate tells apart."""
    classes = _told_apart(callbacks)
    if not classes:
        yield
        return
    hf_logger = logging.getLogger(TrainerCallback.__module__)
    silence = _SilenceTwins(classes)
    hf_logger.addFilter(silence)
    try:
        yield
    finally:
        hf_logger.removeFilter(silence)


def _two_adapters(found: list[CallstateCallback]) -> DuplicateKeyError:
    return DuplicateKeyError(
        f"The Trainer has {len(found)} CallstateCallback: each would write {CHECKPOINT_FILE!r}. Pass a "
        "single CallstateCallback, with all the objects in its callbacks=.",
        key=CHECKPOINT_FILE,
        callbacks=tuple(found),
    )


def _resume_path(trainer: Any, resume_from_checkpoint: Any) -> str | None:
    """Return the checkpoint directory ``train(resume_from_checkpoint=...)`` resumes from, as it finds it."""
    if resume_from_checkpoint is None or resume_from_checkpoint is False:
        return None
    if resume_from_checkpoint is True:
        found: object = get_last_checkpoint(trainer.args.output_dir)  # type: ignore[no-untyped-call]
        return None if found is None else str(found)  # None: train() raises that no checkpoint was found
    path: str | os.PathLike[str] = resume_from_checkpoint
    return os.fspath(path)


def _check_settings(trainer: Any) -> None:
    for name in ("_save_checkpoint", "_get_output_dir", "_load_callback_state"):
        if not callable(getattr(trainer, name, None)):
            raise UnsupportedTrainerError(
                f"{type(trainer).__qualname__} has no {name}, which CallstateTrainerMixin extends to learn "
                "where a checkpoint is saved and to restore the callbacks; callstate.transformers is tested "
                "with transformers 5.25.",
                trainer=type(trainer).__qualname__,
                needs=f"Trainer.{name}",
            )


def _set_aside(callbacks: Any) -> tuple[Any, list[CallstateCallback]]:
    """Split ``Trainer(callbacks=...)`` into the Trainer's own callbacks and the CallstateCallbacks."""
    if callbacks is None:
        return None, []
    given = list(callbacks)

    def is_adapter(cb: Any) -> bool:
        cls = cb if isinstance(cb, type) else type(cb)
        return issubclass(cls, CallstateCallback)

    aside = [cb() if isinstance(cb, type) else cb for cb in given if is_adapter(cb)]
    kept = [cb for cb in given if not is_adapter(cb)]
    return kept, aside


class CallstateTrainerMixin:
    """Put before a ``Trainer`` class: its checkpoints then save and restore through ``CallstateCallback``.

    ``class MyTrainer(CallstateTrainerMixin, Seq2SeqTrainer): ...``. The ``CallstateCallback``
    given in ``callbacks=`` (or, if none is, a new one with no plain objects) is
    ``trainer.callstate_callback``: it joins ``trainer.callback_handler.callbacks`` while ``train``
    runs only, so that the list is HF's own before and after. Two instances of one callback class
    that callstate tells apart by their keys get no HF warning that "there is already one".
    With ``restore_callback_states_from_checkpoint=True``, the adapter restores the callbacks in
    place of HF (saying so once), and HF restores its ``TrainerControl``.

    .. versionadded:: 0.1
    """

    if TYPE_CHECKING:
        args: Any
        state: Any
        control: Any
        callback_handler: Any

        def _get_output_dir(self, trial: Any) -> str: ...

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        bound = inspect.signature(super().__init__).bind_partial(*args, **kwargs)
        kept, aside = _set_aside(bound.arguments.get("callbacks"))
        if "callbacks" in bound.arguments:
            bound.arguments["callbacks"] = kept
        self._callstate_aside = aside
        with _twins_silenced(kept or ()):
            super().__init__(*bound.args, **bound.kwargs)

    @property
    def callstate_callback(self) -> CallstateCallback:
        """The Trainer's ``CallstateCallback`` (``last_report``, ``registry``...); made if none was given.

        Raises:
            DuplicateKeyError: two ``CallstateCallback`` were given.
        """
        found = [cb for cb in self.callback_handler.callbacks if isinstance(cb, CallstateCallback)]
        found += [cb for cb in self._callstate_aside if cb not in found]
        if len(found) > 1:
            raise _two_adapters(found)
        if not found:
            self._callstate_aside.append(CallstateCallback())
            return self._callstate_aside[0]
        return found[0]

    def add_callback(self, callback: Any) -> None:
        """Add a callback as ``Trainer.add_callback`` does; no HF warning for twins callstate tells apart."""
        with _twins_silenced([*self.callback_handler.callbacks, callback]):
            super().add_callback(callback)  # type: ignore[misc]

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        """Restore every callback from the checkpoint resumed from, then train as ``Trainer.train`` does.

        If ``train`` raises before training begins (HF refuses the checkpoint: a damaged
        ``trainer_state.json``, missing model weights, an optimizer that does not load), the
        callbacks are put back as they were before ``train``, ``last_report`` too, and the error
        propagates unchanged, with a note saying so. A checkpoint directory that does not exist is
        left to ``Trainer.train``, which raises its own error. A checkpoint without
        ``callbacks.callstate`` (saved by a plain ``Trainer``) restores HF's ``ExportableState``
        callbacks from its ``trainer_state.json`` (``last_adoption`` says how each was matched).

        Raises:
            StateMismatchError, RestoreError, UnsafeCheckpointError, RankMismatchError: the restore
                failed (no callback changed, training did not start).
            CheckpointError: ``callbacks.callstate`` is a dangling or looping symbolic link.
            DuplicateKeyError: two callbacks share a key, or there are two ``CallstateCallback``.
        """
        adapter = self.callstate_callback
        _check_settings(self)
        joined = adapter not in self.callback_handler.callbacks
        if joined:
            self.callback_handler.callbacks.append(adapter)
        try:
            path = _resume_path(self, resume_from_checkpoint)
            with adapter.resuming(self, path):
                return super().train(resume_from_checkpoint, *args, **kwargs)  # type: ignore[misc]
        finally:
            if joined and adapter in self.callback_handler.callbacks:
                self.callback_handler.callbacks.remove(adapter)

    def _load_callback_state(self) -> None:
        # HF's own restore would replace the callbacks the adapter has just restored with new
        # instances built from trainer_state.json; only its TrainerControl is left to HF's way.
        if not self.args.restore_callback_states_from_checkpoint:
            return
        self.callstate_callback.took_hfs_place()
        saved = _entries(self.state.stateful_callbacks.get("TrainerControl"))
        if saved:
            args, attributes = saved[0]
            control = TrainerControl(**args)
            for name, value in attributes.items():
                setattr(control, name, value)
            self.control = control

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)  # type: ignore[misc]
        # The directory Trainer._save_checkpoint has just written.
        step = self.state.global_step
        directory = os.path.join(self._get_output_dir(trial), f"{PREFIX_CHECKPOINT_DIR}-{step}")
        self.callstate_callback.save_checkpoint(self, directory)


class CallstateTrainer(CallstateTrainerMixin, Trainer):
    """A ``transformers.Trainer`` whose checkpoints keep every callback's state (see the module).

    .. versionadded:: 0.1
    """
