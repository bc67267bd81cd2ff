"""The Keras 3 adapter: ``model.fit`` resumes every callback's state, the weights and the optimizer exactly.

``callbacks = callstate.keras.resumable([...], backup_dir)`` returns the callbacks plus one
``callstate.keras.BackupAndRestore``, placed last; give the list to ``model.fit``. It replaces
Keras's own ``keras.callbacks.BackupAndRestore`` and does what it does (the weights, the epoch to
resume at, the backup removed at the end of a finished fit), and also:

- saves the optimizer's variables (iterations, learning rate, momenta), which Keras's own does not:
  a resumed run goes on bit for bit as one never interrupted;
- saves every callback's state, keyed by identity: your own through ``@callstate.stateful`` (or
  ``state_dict``/``load_state_dict``), Keras's built-ins through the declarations below, keyed in
  Lightning's format (``EarlyStopping{'monitor': 'val_loss', 'mode': 'min'}``);
- restores them after every other callback's ``on_train_begin`` (which resets Keras's built-ins), in
  one transaction: if anything fails, every callback, the weights and the optimizer are put back;
- saves the fit's ``History`` (its epochs and logs), so a resumed ``fit`` returns the whole run's;
- writes all of it as one callstate file, ``backup_dir/backup.callstate``, atomically (a temp file
  renamed over the last one): a process killed at any moment resumes from one epoch's weights,
  optimizer and callback states together, never from a mix.

Stateful objects that are not Keras callbacks (``callstate.RNGState()``, the recommended way to make
a resume deterministic) go in ``resumable(..., states=[...])``: Keras calls hooks on every item of
its callback list, so they cannot go there. They are saved in the same file and restored in the
same transaction as the callbacks.

A run directory that was moved resumes with ``resumable(..., relocate={old: new})``: the paths in
the states follow it, and the built-ins whose key holds a path (``ModelCheckpoint``'s ``filepath``,
``CSVLogger``'s ``filename``) are found under the key they had before the move.

Arrays are saved as numpy arrays (``keras.ops.convert_to_numpy``) through the safe data codec, so a
backup written on one backend (torch, JAX, TensorFlow) restores on another.

The built-ins declared, by identity and state (``LearningRateScheduler``, ``TerminateOnNaN``,
``LambdaCallback``, ``ProgbarLogger`` and ``History`` keep nothing across epochs and are not saved):

- ``EarlyStopping{monitor, mode}``: ``wait``, ``stopped_epoch``, ``best``, ``best_weights``, ``best_epoch``;
- ``ReduceLROnPlateau{monitor, mode}``: ``wait``, ``cooldown_counter``, ``best`` (the learning rate
  is the optimizer's);
- ``ModelCheckpoint{monitor, mode, filepath}``: ``best``, the batches seen since its last save, its
  last batch;
- ``CSVLogger{filename}``: the size of its file at the save; with ``append=True`` a resumed fit cuts
  the rows written after the last save and goes on in the same file.

``mode`` is Keras's ``"min"`` or ``"max"``; ``"auto"`` is shown as ``"min"`` for a loss
(``loss``, ``val_loss``, as Keras resolves it) and stays ``"auto"`` for other metrics, whose
direction Keras reads from the compiled model (a key never depends on the model).

Install with ``pip install 'callstate[keras]'``.

.. versionadded:: 0.2
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping
from typing import Any

from ._core import (
    CallbackRegistry,
    Relocation,
    RestoreReport,
    declare_class,
    is_stateful,
    relocation_of,
    state_key,
)
from ._io import load, save
from ._support import require, show
from .errors import InvalidStateError, TargetTypeError, UnsupportedTrainerError

keras: Any = require("keras", extra="keras", needed_for="callstate.keras")

__all__ = ["BACKUP_FILE", "BackupAndRestore", "resumable"]

BACKUP_FILE = "backup.callstate"
"""The name of the callstate file in ``backup_dir``."""

# The model's attribute that Keras's own BackupAndRestore sets: fit starts at that epoch when it is set
# (Keras's, not one of callstate's classes' private attributes).
_START = "_initial_epoch"

FIT_KEY = "keras:fit"
"""The key of the entry holding the weights, the optimizer's variables and the epoch."""


# -- the declarations of Keras's built-in callbacks ----------------------------------------------------


def _mode(callback: Any) -> str:
    """Return the direction of a monitored callback as its key shows it (see the module's docstring)."""
    mode = getattr(callback, "mode", "auto")
    if mode in ("min", "max"):
        return str(mode)
    monitor = callback.monitor
    if isinstance(monitor, str) and monitor.removeprefix("val_") == "loss":
        return "min"  # what MonitorCallback._set_monitor_op resolves "auto" to for a loss
    return "auto"


def _monitored(callback: Any) -> dict[str, Any]:
    return {"monitor": callback.monitor, "mode": _mode(callback)}


def _checkpoint(callback: Any) -> dict[str, Any]:
    return {**_monitored(callback), "filepath": callback.filepath}


def _csv(callback: Any) -> dict[str, Any]:
    return {"filename": callback.filename}


_builtins = keras.callbacks
# class -> (identity, state fields); the fields are the callbacks' own attributes.
_DECLARED: dict[type, tuple[Any, tuple[str, ...]]] = {
    _builtins.EarlyStopping: (_monitored, ("wait", "stopped_epoch", "best", "best_weights", "best_epoch")),
    _builtins.ReduceLROnPlateau: (_monitored, ("wait", "cooldown_counter", "best")),
    _builtins.ModelCheckpoint: (
        _checkpoint,
        ("best", "_batches_seen_since_last_saving", "_last_batch_seen"),
    ),
    _builtins.CSVLogger: (_csv, ()),
}
for _cls, (_identity, _state) in _DECLARED.items():
    declare_class(_cls, identity_of=_identity, state=_state)
del _cls, _identity, _state


def _declared(callback: object) -> tuple[type, tuple[str, ...]] | None:
    """Return the built-in class ``callback`` is (or derives from) and its state fields, if declared."""
    for klass in type(callback).__mro__:
        found = _DECLARED.get(klass)
        if found is not None:
            return klass, found[1]
    return None


def _numpy(value: Any) -> Any:
    """Return a backend array or a Keras variable as a numpy array of its own (a copy)."""
    if isinstance(value, keras.Variable):
        value = value.value
    if type(value).__module__.startswith("torch") and str(value.dtype) != "torch.bfloat16":
        # keras.ops.convert_to_numpy calls np.array(tensor), which numpy 2 warns about for torch's
        # __array__ (no copy= keyword); .numpy() shares the parameter's memory, hence the copy.
        return value.detach().cpu().numpy().copy()
    return keras.ops.convert_to_numpy(value)


def _to_numpy(value: Any) -> Any:
    """Return ``value`` with every backend array (torch, JAX, TensorFlow) as a numpy array."""
    if isinstance(value, dict):
        return {k: _to_numpy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_numpy(v) for v in value)
    if isinstance(value, keras.Variable) or keras.ops.is_tensor(value):
        return _numpy(value)
    return value


def _fields_of(state: object, names: tuple[str, ...], who: str) -> Mapping[str, Any]:
    """Check that ``state`` is a mapping of some of ``names``, naming what is not."""
    if not isinstance(state, Mapping):
        raise InvalidStateError(f"{who}: the saved state is {show(state)}, not a mapping.", cls=type(state))
    unknown = [k for k in state if k not in names]
    if unknown:
        raise InvalidStateError(
            f"{who}: the saved state has fields {show(unknown)} that are not among {names!r}; "
            "it was written by another version of callstate.keras, or altered.",
            cls=type(state),
            unknown=[str(k) for k in unknown],
        )
    return state


class _Builtin:
    """A Keras built-in callback seen as a callstate callback: its declared attributes are its state."""

    def __init__(self, callback: Any, fields: tuple[str, ...]) -> None:
        self.callback = callback
        self.fields = fields

    @property
    def state_key(self) -> str:
        return state_key(self.callback)

    def state_dict(self) -> dict[str, Any]:
        return {name: _to_numpy(getattr(self.callback, name, None)) for name in self.fields}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name, value in _fields_of(state, self.fields, self.state_key).items():
            setattr(self.callback, name, value)

    def __repr__(self) -> str:
        return f"{type(self.callback).__qualname__} (Keras built-in)"


class _CsvRows:
    """A ``CSVLogger`` seen as a callstate callback: its state is the size of its file at the save."""

    def __init__(self, callback: Any) -> None:
        self.callback = callback

    @property
    def state_key(self) -> str:
        return state_key(self.callback)

    def _size(self) -> int:
        cb = self.callback
        if cb.csv_file is not None and not cb.csv_file.closed:
            cb.csv_file.flush()
        try:
            return os.path.getsize(cb.filename)
        except OSError:
            return 0

    def state_dict(self) -> dict[str, Any]:
        return {"size": self._size()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        size = _fields_of(state, ("size",), self.state_key).get("size", 0)
        if type(size) is not int or size < 0:
            raise InvalidStateError(f"{self.state_key}: the saved size {show(size)} is not a size.", cls=int)
        cb = self.callback
        # Only a file opened for appending holds the rows of the interrupted run (append=False has
        # emptied it in on_train_begin): cut the rows written after the save, and write no header again.
        if cb.append and cb.csv_file is not None and not cb.csv_file.closed and size <= self._size():
            cb.csv_file.truncate(size)
            cb.append_header = size == 0

    def __repr__(self) -> str:
        return "CSVLogger (Keras built-in)"


# -- the model, the optimizer and the epoch ------------------------------------------------------------


def _as_dtype(np: Any, got: Any, dtype: Any) -> Any:
    """Return the array ``got`` as ``dtype`` if each of its numbers converts exactly, else None.

    Backends differ in a variable's dtype (TensorFlow counts an optimizer's iterations in int64, torch
    in int32): a backup written on one restores on another where its values allow it.
    """
    if got.dtype == dtype:
        return got
    if got.dtype.kind not in "biuf" or dtype.kind not in "biuf":
        return None
    with np.errstate(all="ignore"):
        cast = got.astype(dtype)
        exact = np.array_equal(cast.astype(got.dtype), got, equal_nan=True)
    return cast if exact else None


def _check_arrays(saved: object, variables: list[Any], what: str) -> list[Any]:
    """Return ``saved`` as numpy arrays of ``variables``' shapes and dtypes, else raise.

    An array of another numeric dtype is converted where every value converts exactly (see
    ``_as_dtype``).
    """
    np = require("numpy", extra="keras", needed_for="callstate.keras")
    if not isinstance(saved, list | tuple) or len(saved) != len(variables):
        count = len(saved) if isinstance(saved, list | tuple) else show(saved)
        raise InvalidStateError(
            f"{FIT_KEY}: the backup holds {count} {what}, the model {len(variables)}: it was saved from "
            "another model; give backup_dir of this model's run, or remove the backup.",
            cls=type(saved),
        )
    problems, arrays = [], []
    for i, (got, want) in enumerate(zip(saved, variables, strict=True)):
        shape, dtype = tuple(want.shape), np.dtype(want.dtype)
        fitted = _as_dtype(np, got, dtype) if isinstance(got, np.ndarray) and got.shape == shape else None
        if fitted is None:
            found = f"{show(getattr(got, 'shape', type(got).__qualname__))} {show(getattr(got, 'dtype', ''))}"
            problems.append(f"#{i}: {found} for {shape} {dtype}")
        arrays.append(fitted)
    if problems:
        raise InvalidStateError(
            f"{FIT_KEY}: the backup's {what} do not fit the model ({'; '.join(problems[:5])}; a value "
            "of another dtype must convert exactly): it was saved from another model; give backup_dir "
            "of this model's run, or remove the backup.",
            cls=type(saved),
        )
    return arrays


# Keras's own backup holds its epoch and batch as JSON numbers, exact up to 2**53: a count beyond is no
# run's (and an epoch that large would end every later fit at once).
_MAX_COUNT = 2**53


def _count(value: object) -> bool:
    """Return whether ``value`` is an epoch or batch count."""
    return type(value) is int and 0 <= value <= _MAX_COUNT


def _check_history(saved: object) -> tuple[list[int], dict[str, list[Any]]] | None:
    """Return the saved ``History`` (its epochs and its logs) if it is one, else raise; None if absent."""
    if saved is None:
        return None
    np = require("numpy", extra="keras", needed_for="callstate.keras")
    fields = _fields_of(saved, ("epoch", "logs"), f"{FIT_KEY}: history")
    epochs, logs = fields.get("epoch", []), fields.get("logs", {})

    def number(v: object) -> bool:
        # A metric logs a number, or an array of them (F1Score: one per class; a confusion matrix).
        if isinstance(v, np.ndarray):
            return v.dtype.kind in "biufc"
        return type(v) in (int, float, bool) or isinstance(v, np.bool_ | np.number)

    if not isinstance(epochs, list) or not all(_count(e) for e in epochs):
        raise InvalidStateError(
            f"{FIT_KEY}: the history's epochs {show(epochs)} are not epoch numbers.", cls=list
        )
    if not isinstance(logs, Mapping) or not all(
        isinstance(k, str) and isinstance(v, list) and all(number(x) for x in v) for k, v in logs.items()
    ):
        raise InvalidStateError(
            f"{FIT_KEY}: the history's logs {show(logs)} are not lists of numbers (or numeric arrays) by "
            "metric name.",
            cls=dict,
        )
    return list(epochs), {k: list(v) for k, v in logs.items()}


class _Fit:
    """The fit itself as a callstate callback: weights, optimizer variables, the epoch and batch counters.

    With a ``History`` before the ``BackupAndRestore`` (``resumable`` places one), its epochs and logs
    too: a resumed ``fit`` returns the whole run's history.
    """

    state_key = FIT_KEY
    _FIELDS = ("epoch", "batch", "batches_since_save", "stopped", "weights", "optimizer", "history")

    def __init__(self, backup: BackupAndRestore) -> None:
        self.backup = backup

    def _variables(self) -> list[Any]:
        optimizer = self.backup.model.optimizer
        return list(optimizer.variables) if optimizer is not None else []

    def state_dict(self) -> dict[str, Any]:
        model = self.backup.model
        counters = self.backup.counters()
        return {
            **counters,
            "stopped": bool(model.stop_training),
            "weights": [_numpy(w) for w in model.weights],
            "optimizer": [_numpy(v) for v in self._variables()],
            "history": self._history_state(),
        }

    def _history_state(self) -> dict[str, Any] | None:
        history = self.backup.history
        if history is None:
            return None
        logs = {str(k): [_to_numpy(v) for v in values] for k, values in history.history.items()}
        return {"epoch": [int(e) for e in getattr(history, "epoch", [])], "logs": logs}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        fields = _fields_of(state, self._FIELDS, FIT_KEY)
        counters = {k: fields.get(k, 0) for k in ("epoch", "batch", "batches_since_save")}
        bad: dict[str, Any] = {k: v for k, v in counters.items() if not _count(v)}
        if type(fields.get("stopped", False)) is not bool:
            bad["stopped"] = fields["stopped"]
        if bad:
            raise InvalidStateError(
                f"{FIT_KEY}: the counters {show(bad)} are not counts from 0 to 2**53 (stopped: a bool); "
                "the backup was altered: remove it.",
                cls=dict,
            )
        model = self.backup.model
        variables = self._variables()
        weights = _check_arrays(fields.get("weights"), list(model.weights), "weights")
        values = _check_arrays(fields.get("optimizer"), variables, "optimizer variables")
        history = _check_history(fields.get("history"))
        # Everything is checked: now the model changes.
        for variable, value in zip(model.weights, weights, strict=True):
            variable.assign(value)
        for variable, value in zip(variables, values, strict=True):
            variable.assign(value)
        if history is not None and self.backup.history is not None:
            self.backup.history.epoch, self.backup.history.history = history
        self.backup.resume_at(counters, stopped=fields.get("stopped", False))

    def __repr__(self) -> str:
        return "the fit (weights, optimizer, epoch)"


def _checked_states(states: Iterable[object]) -> list[object]:
    """Return ``states`` as a list if each item is stateful and no Keras callback, else raise."""
    if isinstance(states, str | bytes) or not isinstance(states, Iterable):
        raise TargetTypeError(
            f"states= takes a list of stateful objects (such as callstate.RNGState()), not "
            f"{type(states).__qualname__}.",
            got=type(states),
        )
    given = list(states)
    problems, first = [], None
    for i, obj in enumerate(given):
        if isinstance(obj, keras.callbacks.Callback):
            why = "is a Keras callback: give it in the callbacks, where Keras calls its hooks"
        elif not is_stateful(obj):
            why = (
                "is not stateful: give it state_dict/load_state_dict, or decorate its class "
                "with @callstate.stateful"
            )
        else:
            continue
        first = first or type(obj)
        problems.append(f"#{i} ({type(obj).__qualname__}) {why}")
    if first is not None:
        raise TargetTypeError(
            f"states= takes stateful objects that are not Keras callbacks: {'; '.join(problems)}.",
            got=first,
        )
    return given


# -- the callback --------------------------------------------------------------------------------------


class BackupAndRestore(keras.callbacks.Callback):  # type: ignore[misc]
    """Back up the fit (weights, optimizer, epoch) and every callback's state; resume them exactly.

    Made by ``resumable``, which places it after the callbacks it saves. At ``on_train_begin`` it
    restores the backup in ``backup_dir`` if there is one (after the other callbacks' own
    ``on_train_begin``); at the end of every epoch (or every ``save_freq`` batches) it writes the
    backup; at the end of a fit it removes the backup (``delete_checkpoint``).

    Args:
        backup_dir: the directory of the backup file (``BACKUP_FILE``).
        callbacks: the callbacks whose states are saved; the last ``keras.callbacks.History`` among
            them (place it before this callback, as ``resumable`` does) is saved and restored too, so
            a resumed ``fit`` returns the history of the whole run.
        strict: refuse to resume, changing nothing, when a saved state has no callback or a
            stateful callback has no saved state; otherwise restore what matches and warn.
        states: stateful objects that are not Keras callbacks (``callstate.RNGState()``): saved in
            the same file and restored in the same transaction as the callbacks, keyed by identity.
        save_freq: ``"epoch"``, or a number of batches. A backup made within an epoch resumes at
            the start of that epoch (as Keras's own does), with the weights of its batch: only
            ``"epoch"`` resumes bit for bit.
        delete_checkpoint: remove the backup when ``fit`` ends (finished or stopped early).
        relocate: ``{old prefix: new prefix}``: on resume, paths inside the callbacks' saved states
            that lie under an old prefix (a run directory that was moved) are moved to the new one
            before the callbacks see them (see ``callstate.load``). Checked here: a malformed
            mapping raises ``TypeError`` or ``ValueError``.

    Raises:
        TargetTypeError: an item of ``states`` is a Keras callback (it goes in ``callbacks``) or
            is not stateful; every such item is named, and nothing is made.

    Attributes:
        last_report: the ``RestoreReport`` of the last resume (its ``relocated`` counts the paths
            moved), or None.
        history: the ``History`` whose epochs and logs are saved, or None.
        registry: the ``CallbackRegistry`` of the fit (key ``FIT_KEY``) and the callbacks it saves;
            while a fit runs (the model set), ``callstate.load(backup.registry, backup.path)`` restores
            the backup written last.
        path: the backup file (``BACKUP_FILE`` in ``backup_dir``).

    .. versionadded:: 0.2
    """

    # The states are read from the model when the hook is called: a hook run later, on another
    # thread while training goes on, would save the weights of some later batch.
    async_safe = False

    def __init__(
        self,
        backup_dir: str | os.PathLike[str],
        callbacks: Iterable[Any] = (),
        *,
        strict: bool = False,
        states: Iterable[object] = (),
        save_freq: str | int = "epoch",
        delete_checkpoint: bool = True,
        relocate: Mapping[Any, Any] | None = None,
    ) -> None:
        super().__init__()
        others = _checked_states(states)
        self.relocate: Relocation | None = relocation_of(relocate)
        if not backup_dir:
            raise ValueError("BackupAndRestore needs a backup_dir, got an empty one.")
        if save_freq != "epoch" and (type(save_freq) is not int or save_freq < 1):
            raise ValueError(f"save_freq must be 'epoch' or a number of batches from 1, got {save_freq!r}.")
        self.backup_dir = os.fspath(backup_dir)
        self.path = os.path.join(self.backup_dir, BACKUP_FILE)
        self.strict = strict
        self.save_freq = save_freq
        self.delete_checkpoint = delete_checkpoint
        self.last_report: RestoreReport | None = None
        self._epoch = 0  # the epoch a resume starts at
        self._batch = 0  # the last batch seen in this epoch
        self._since_save = 0  # batches since the last backup
        self._resumed_at: int | None = None
        callbacks = list(callbacks)
        # fit returns the last History in its list (CallbackList._add_default_callbacks): the one saved.
        histories = [cb for cb in callbacks if isinstance(cb, _builtins.History)]
        self.history: Any = histories[-1] if histories else None
        members: list[object] = [_Fit(self)]
        csv: list[object] = []
        for cb in callbacks:
            declared = _declared(cb)
            if is_stateful(cb):
                members.append(cb)
            elif declared is not None and declared[0] is _builtins.CSVLogger:
                csv.append(_CsvRows(cb))
            elif declared is not None:
                members.append(_Builtin(cb, declared[1]))
        members.extend(others)
        # The CSV files last: cutting one cannot be undone, and a restore applies its members in order,
        # so every state that could be refused is applied before.
        self.registry = CallbackRegistry([*members, *csv])

    # -- for _Fit ---------------------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """Return where the fit is: the epoch a resume would start at, and the batch counters."""
        return {"epoch": self._epoch, "batch": self._batch, "batches_since_save": self._since_save}

    def resume_at(self, counters: Mapping[str, int], *, stopped: bool) -> None:
        """Set the counters, and make ``fit`` start at the saved epoch (at its end, if it had stopped)."""
        self._epoch = counters["epoch"]
        self._batch = counters["batch"]
        self._since_save = counters["batches_since_save"]
        start = self._epoch
        if stopped:  # a callback stopped the fit at the saved epoch: run no more epochs
            start = max(start, int((self.params or {}).get("epochs", start)))
        self._resumed_at = start or None
        setattr(self.model, _START, self._resumed_at)

    # -- Keras's hooks ----------------------------------------------------------------------------

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        model = self.model
        if not model.built:
            raise UnsupportedTrainerError(
                f"BackupAndRestore({show(self.backup_dir)}): the model {model.name!r} is not built, so "
                "its weights cannot be restored: build it before fit (call it on a batch, or give "
                "keras.Input as its first layer).",
                trainer=type(model).__qualname__,
                needs="a built model",
            )
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        self._epoch = self._batch = self._since_save = 0
        if os.path.lexists(self.path):
            self.last_report = load(self.registry, self.path, strict=self.strict, relocate=self.relocate)

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._epoch = epoch

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        if self.save_freq == "epoch":
            return
        # Counted as Keras's own counts, batch numbers being those of the last step of an execution.
        self._since_save += batch + 1 if batch <= self._batch else batch - self._batch
        self._batch = batch
        if self._since_save >= int(self.save_freq):
            self._since_save = 0
            self._save()

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._epoch = epoch + 1
        self._batch = 0
        if self.save_freq == "epoch":
            self._save()

    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        if self._resumed_at is not None:
            # Set for this fit only: a later fit of the same model starts where it is told.
            setattr(self.model, _START, None)
            self._resumed_at = None
        if self.delete_checkpoint:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)
            with contextlib.suppress(OSError):
                os.rmdir(self.backup_dir)  # only if nothing else is in it

    def _save(self) -> None:
        os.makedirs(self.backup_dir, exist_ok=True)
        save(self.registry, self.path, meta={"keras_backend": keras.backend.backend()})


def resumable(
    callbacks: Iterable[Any],
    backup_dir: str | os.PathLike[str],
    *,
    strict: bool = False,
    states: Iterable[object] = (),
    save_freq: str | int = "epoch",
    delete_checkpoint: bool = True,
    relocate: Mapping[Any, Any] | None = None,
) -> list[Any]:
    """Return ``callbacks`` followed by a ``BackupAndRestore`` that saves and resumes all of them.

    A ``keras.callbacks.History`` is added before the ``BackupAndRestore`` unless ``callbacks`` hold
    one: ``fit`` returns it, with the epochs run before an interruption as well as those after.

    Give the list to ``model.fit(callbacks=...)``; run the same script again after an interruption
    and the fit resumes where the last backup was written (see ``BackupAndRestore`` for the
    arguments). Stateful objects that are not Keras callbacks, such as ``callstate.RNGState()``,
    go in ``states``: they are saved and restored with the callbacks but not given to ``fit``.

    Raises:
        UnsupportedTrainerError: the callbacks hold a ``keras.callbacks.BackupAndRestore`` (or
            another ``callstate.keras.BackupAndRestore``): two backups would each set the epoch.
        TargetTypeError: an item of ``states`` is a Keras callback or is not stateful.

    .. versionadded:: 0.2
    """
    given = list(callbacks)
    if not any(isinstance(cb, _builtins.History) for cb in given):
        # fit uses the last History in the list, and appends one after every callback if there is none:
        # this one, before the backup, has reset itself (on_train_begin) before the backup restores it,
        # and has logged each epoch before the backup saves it.
        given.append(_builtins.History())
    for cb in given:
        if isinstance(cb, _builtins.BackupAndRestore | BackupAndRestore):
            raise UnsupportedTrainerError(
                f"resumable(): the callbacks hold {type(cb).__module__}.{type(cb).__qualname__}, which "
                "callstate.keras.BackupAndRestore replaces (both would restore the weights and the "
                "epoch): remove it from the list.",
                trainer="keras.Model.fit",
                needs="no other BackupAndRestore",
            )
    backup = BackupAndRestore(
        backup_dir,
        given,
        strict=strict,
        states=states,
        save_freq=save_freq,
        delete_checkpoint=delete_checkpoint,
        relocate=relocate,
    )
    return [*given, backup]
