"""callstate.keras: real Keras 3 fits resume every callback, the weights and the optimizer exactly."""

from __future__ import annotations

import os
import random
import re

os.environ.setdefault("KERAS_BACKEND", "torch")  # here; tensorflow (Keras's default) runs in its own processes

import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

import callstate
import callstate.keras
from callstate.errors import (
    CorruptCheckpointError,
    MissingDependencyError,
    RestoreError,
    StateMismatchError,
    TargetTypeError,
    UnsupportedTrainerError,
)

# Keras's own conversions on the torch backend (model.get_weights in EarlyStopping, the learning rate
# in ReduceLROnPlateau) call np.array on torch tensors, which numpy 2 warns about; callstate.keras's
# own conversions do not (they would fail these tests).
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

FIT = Path(__file__).with_name("keras_fit.py")
ROOT = Path(__file__).resolve().parent.parent


def fit_script(
    backend: str, out: Path, directory: Path, how: str, kill: int | None = None, env: dict[str, str] | None = None
) -> int:
    """Run tests/keras_fit.py on ``backend``; return its exit code (negative: the signal that ended it)."""
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT), **(env or {})}
    args = [sys.executable, str(FIT), str(out), str(directory), how, *([str(kill)] if kill is not None else [])]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=240)
    if done.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(done.stderr[-3000:])
    return done.returncode


def ended(path: Path) -> dict[str, Any]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def differing(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return sorted(k for k in a if not np.array_equal(a[k], b[k]))


def killed_then_resumed(
    backend: str, tmp_path: Path, how: str, name: str, env: dict[str, str] | None = None
) -> tuple[dict[str, Any], Path]:
    """Run the fit killed with SIGKILL in epoch 5, then again in a new process; return how it ended."""
    work = tmp_path / name
    work.mkdir()
    assert fit_script(backend, work / "unused.npz", work, how, kill=5, env=env) == -signal.SIGKILL
    kept = tmp_path / f"{name}-kept"
    shutil.copytree(work, kept)
    assert fit_script(backend, work / "resumed.npz", work, how, env=env) == 0
    return ended(work / "resumed.npz"), kept


def uninterrupted(backend: str, tmp_path: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    work = tmp_path / "full"
    work.mkdir()
    assert fit_script(backend, work / "full.npz", work, "callstate", env=env) == 0
    return ended(work / "full.npz")


@pytest.mark.slow
def test_killed_fit_resumes_bit_for_bit_on_torch_and_keras_own_backup_does_not(tmp_path: Path) -> None:
    """Torch backend: a fit killed halfway ends as one never interrupted; Keras's BackupAndRestore does not."""
    full = uninterrupted("torch", tmp_path)
    assert full["stopped_epoch"] > 5  # the kill is halfway: EarlyStopping stops the fit later
    resumed, kept = killed_then_resumed("torch", tmp_path, "callstate", "ours")
    assert differing(full, resumed) == []
    control, _ = killed_then_resumed("torch", tmp_path, "keras", "control")
    # Keras's own restores the weights and the epoch only: the momenta start again from zero, and
    # EarlyStopping, ReduceLROnPlateau and the custom callbacks start again from their reset state
    # (the tallies count the epochs after the resume only), so the fit stops at another epoch.
    assert control["tallies"][0, 0] < full["tallies"][0, 0]
    assert control["stopped_epoch"] != full["stopped_epoch"]
    assert "weight0" in differing(full, control)
    # The backup written on the torch backend resumes on the JAX backend: the values are numpy arrays.
    assert fit_script("jax", kept / "cross.npz", kept, "callstate") == 0
    cross = ended(kept / "cross.npz")
    assert cross["tallies"][:, 0].tolist() == [cross["last_epoch"] + 1] * 2


@pytest.mark.slow
def test_killed_fit_resumes_bit_for_bit_on_jax(tmp_path: Path) -> None:
    """JAX backend: a fit killed halfway with SIGKILL ends exactly as one never interrupted."""
    full = uninterrupted("jax", tmp_path)
    resumed, _ = killed_then_resumed("jax", tmp_path, "callstate", "ours")
    assert differing(full, resumed) == []


@pytest.mark.slow
@pytest.mark.needs("tensorflow")
def test_killed_fit_resumes_bit_for_bit_on_tensorflow_and_its_backup_on_torch(tmp_path: Path) -> None:
    """TensorFlow backend: a fit killed halfway ends as one never interrupted; its backup resumes on torch.

    TensorFlow keeps an optimizer's iterations in int64 where torch keeps them in int32: the backup's
    values convert exactly, so it restores.
    """
    full = uninterrupted("tensorflow", tmp_path)
    resumed, kept = killed_then_resumed("tensorflow", tmp_path, "callstate", "ours")
    assert differing(full, resumed) == []
    assert fit_script("torch", kept / "cross.npz", kept, "callstate") == 0
    cross = ended(kept / "cross.npz")
    assert cross["tallies"][:, 0].tolist() == [cross["last_epoch"] + 1] * 2


@pytest.mark.slow
def test_killed_fit_under_data_parallel_on_two_cpu_devices_resumes_bit_for_bit(tmp_path: Path) -> None:
    """keras.distribution.DataParallel over 2 CPU devices (JAX): a fit killed halfway ends as one never killed."""
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "KERAS_FIT_DATA_PARALLEL": "2"}
    full = uninterrupted("jax", tmp_path, env)
    assert full["devices"] == 2 and full["stopped_epoch"] > 5  # the weights live on both devices
    resumed, _ = killed_then_resumed("jax", tmp_path, "callstate", "ours", env)
    assert differing(full, resumed) == []
    assert resumed["history_epochs"].tolist() == list(range(full["last_epoch"] + 1))


# -- keys ----------------------------------------------------------------------------------------------


def test_builtin_keys_follow_lightnings_format() -> None:
    """Keras's built-ins are keyed by their constructor's identity, 'auto' shown as Keras resolves it."""
    cb = keras.callbacks
    assert callstate.state_key(cb.EarlyStopping(monitor="val_loss")) == "EarlyStopping{'monitor': 'val_loss', 'mode': 'min'}"
    assert callstate.state_key(cb.EarlyStopping(monitor="loss", mode="max")) == "EarlyStopping{'monitor': 'loss', 'mode': 'max'}"
    assert (
        callstate.state_key(cb.ReduceLROnPlateau(monitor="val_accuracy"))
        == "ReduceLROnPlateau{'monitor': 'val_accuracy', 'mode': 'auto'}"
    )
    assert (
        callstate.state_key(cb.ModelCheckpoint("b.keras", monitor="acc", mode="max"))
        == "ModelCheckpoint{'monitor': 'acc', 'mode': 'max', 'filepath': 'b.keras'}"
    )
    assert callstate.state_key(cb.CSVLogger("log.csv")) == "CSVLogger{'filename': 'log.csv'}"
    assert callstate.state_key(cb.TerminateOnNaN()) == "TerminateOnNaN"


class Patient(keras.callbacks.EarlyStopping):
    """A subclass of a declared built-in."""


def test_declarations_leave_keras_classes_unchanged() -> None:
    """Declaring Keras's built-ins adds nothing to their classes; a subclass keeps the computed identity."""
    for klass in (keras.callbacks.EarlyStopping, keras.callbacks.ModelCheckpoint, keras.callbacks.CSVLogger):
        assert not {"state_key", "state_dict", "load_state_dict", "__callstate_spec__"} & set(dir(klass))
    assert callstate.state_key(Patient(monitor="val_loss")) == "Patient{'monitor': 'val_loss', 'mode': 'min'}"


# -- in-process fits -----------------------------------------------------------------------------------


@callstate.stateful(identity=("what",), state=("count",))
class Count(keras.callbacks.Callback):
    """Counts epochs."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what
        self.count = 0

    def on_epoch_end(self, epoch: int, logs: object = None) -> None:
        self.count += 1


def tiny() -> keras.Model:
    keras.utils.set_random_seed(1)
    m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.Dense(1)])
    m.compile(keras.optimizers.SGD(0.01, momentum=0.5), loss="mse")
    return m


X = np.random.RandomState(2).rand(16, 3).astype("float32")
Y = X.sum(axis=1, keepdims=True)


def run(model: keras.Model, callbacks: list[Any], epochs: int, **kw: Any) -> keras.callbacks.History:
    return model.fit(X, Y, epochs=epochs, batch_size=4, shuffle=False, verbose=0, callbacks=callbacks, **kw)


def weights(model: keras.Model) -> list[np.ndarray]:
    return [w.value.detach().numpy().copy() for w in model.weights]


def iterations(model: keras.Model) -> int:
    return int(model.optimizer.iterations.value.item())


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def backed_up(tmp_path: Path, epochs: int = 2) -> Path:
    """Fit ``epochs`` epochs with a stopper and two counters, keeping the backup; return its directory."""
    stop = keras.callbacks.EarlyStopping(monitor="loss", patience=5)
    backup = tmp_path / "backup"
    run(tiny(), callstate.keras.resumable([stop, Count("a"), Count("b")], backup, delete_checkpoint=False), epochs)
    assert (backup / callstate.keras.BACKUP_FILE).is_file()
    return backup


def test_strict_resume_with_a_callback_removed_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    """strict=True and a saved state without its callback: fit raises before anything is restored."""
    backup = backed_up(tmp_path)
    file = backup / callstate.keras.BACKUP_FILE
    before = file.read_bytes()
    model, kept = tiny(), Count("a")
    initial = weights(model)
    stop = keras.callbacks.EarlyStopping(monitor="loss", patience=5)
    with pytest.raises(StateMismatchError) as caught:
        run(model, callstate.keras.resumable([stop, kept], backup, strict=True), 4)
    assert caught.value.unexpected == ("Count{'what': 'b'}",)
    assert kept.count == 0 and stop.wait == 0 and same(weights(model), initial)
    assert iterations(model) == 0
    assert file.read_bytes() == before


def test_a_callback_added_is_reported_missing_and_the_rest_restored(tmp_path: Path) -> None:
    """A callback with no saved state: a warning and last_report.missing name it; the others resume."""
    backup = backed_up(tmp_path)
    a, b, new = Count("a"), Count("b"), Count("new")
    callbacks = callstate.keras.resumable([a, b, new], backup, delete_checkpoint=False)
    with pytest.warns(callstate.CallstateWarning, match="Count\\{'what': 'new'\\}"):
        history = run(tiny(), callbacks, 4)
    assert callbacks[-1].last_report.missing == ("Count{'what': 'new'}",)
    # The history holds the whole run; the new counter saw the two epochs run after the resume.
    assert history.epoch == [0, 1, 2, 3] and (a.count, b.count, new.count) == (4, 4, 2)


def test_a_stopped_fit_resumes_to_its_end_and_a_later_fit_starts_afresh(tmp_path: Path) -> None:
    """A backup of a fit stopped early runs no more epochs; the next fit of the model starts at 0."""
    backup = tmp_path / "backup"
    model = tiny()
    stop = keras.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=1e9)  # stops at epoch 1
    run(model, callstate.keras.resumable([stop], backup, delete_checkpoint=False), 6)
    assert stop.stopped_epoch == 1
    again = keras.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=1e9)
    history = run(model, callstate.keras.resumable([again], backup), 6)
    assert history.epoch == [0, 1] and again.stopped_epoch == 1  # no epoch run: the saved history
    assert not backup.exists()  # removed at the end of the fit
    assert run(model, [], 1).epoch == [0]


def test_csv_logger_in_append_mode_continues_its_file_without_the_rows_after_the_backup(tmp_path: Path) -> None:
    """CSVLogger(append=True): rows written after the last backup are cut, every epoch is logged once."""
    backup, log = tmp_path / "backup", tmp_path / "log.csv"
    run(tiny(), callstate.keras.resumable([keras.callbacks.CSVLogger(str(log), append=True)], backup,
                                           delete_checkpoint=False), 2)
    with log.open("a") as f:
        f.write("2,999\n")  # written by an epoch the process was killed in, after the logger's turn
    run(tiny(), callstate.keras.resumable([keras.callbacks.CSVLogger(str(log), append=True)], backup), 4)
    lines = log.read_text().splitlines()
    assert [line.split(",")[0] for line in lines] == ["epoch", "0", "1", "2", "3"]


def test_batch_level_backups_hold_the_batch_counters(tmp_path: Path) -> None:
    """save_freq=N writes a backup every N batches, within the epoch, with Keras's own counters."""
    backup = tmp_path / "backup"
    saves: list[dict[str, Any]] = []

    class Spy(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: object = None) -> None:
            path = backup / callstate.keras.BACKUP_FILE
            if path.exists():
                fit = callstate.read(path)[callstate.keras.FIT_KEY]
                saves.append({k: fit[k] for k in ("epoch", "batch", "batches_since_save")})

    callbacks = callstate.keras.resumable([], backup, save_freq=3, delete_checkpoint=False)
    assert callbacks[-1].async_safe is False
    run(tiny(), [*callbacks, Spy()], 1)  # 4 batches: a backup after the third
    assert saves == [{"epoch": 0, "batch": 2, "batches_since_save": 0}] * 2


class Interrupt(keras.callbacks.Callback):
    """Stands for a crash at the start of ``epoch``: the backup holds the epochs before it."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch: int, logs: object = None) -> None:
        if epoch == self.epoch:
            raise KeyboardInterrupt


def monitors() -> list[Any]:
    return [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=2, min_delta=0.03, restore_best_weights=True),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", patience=1, factor=0.5, min_delta=0.03),
        Count("epochs"),
    ]


def ending(model: keras.Model, history: keras.callbacks.History, callbacks: list[Any]) -> dict[str, Any]:
    """What a fit ended with: weights, optimizer variables, history, the monitors' and counter's states."""
    stop, plateau, count = callbacks
    return {
        "weights": weights(model),
        "optimizer": [keras.ops.convert_to_numpy(v.value.detach()) for v in model.optimizer.variables],
        "epochs": history.epoch,
        "logs": history.history,
        "stop": (stop.stopped_epoch, stop.best, stop.best_epoch, stop.wait),
        "plateau": (plateau.best, plateau.wait, plateau.cooldown_counter),
        "count": count.count,
        "learning_rate": float(keras.ops.convert_to_numpy(model.optimizer.learning_rate.value.detach())),
    }


def assert_same_ending(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert same(a["weights"], b["weights"]) and same(a["optimizer"], b["optimizer"])
    assert {k: a[k] for k in ("epochs", "logs", "stop", "plateau", "count", "learning_rate")} == {
        k: b[k] for k in ("epochs", "logs", "stop", "plateau", "count", "learning_rate")
    }


def interrupted_then_resumed(tmp_path: Path, at: int, epochs: int, **kw: Any) -> dict[str, Any]:
    """Fit, interrupted at the start of epoch ``at``, then fit again anew from the backup; return the end."""
    backup = tmp_path / "backup"
    with pytest.raises(KeyboardInterrupt):
        run(tiny(), callstate.keras.resumable([*monitors(), Interrupt(at)], backup), epochs, **kw)
    assert callstate.read(backup / callstate.keras.BACKUP_FILE)[callstate.keras.FIT_KEY]["epoch"] == at
    model, callbacks = tiny(), monitors()
    history = run(model, callstate.keras.resumable(callbacks, backup), epochs, **kw)
    assert not backup.exists()
    return ending(model, history, callbacks)


def test_a_fit_with_validation_split_resumes_as_one_never_interrupted(tmp_path: Path) -> None:
    """validation_split, monitors of val_loss: a fit interrupted at epoch 9 ends as an uninterrupted one."""
    model, callbacks = tiny(), monitors()
    full = ending(model, run(model, callbacks, 12, validation_split=0.25), callbacks)
    # val_loss stops improving by 0.03 in epoch 8: ReduceLROnPlateau halves the rate there and in 9, EarlyStopping
    # (waiting since epoch 8) stops the fit in epoch 9, after the interruption, as the resumed fit must.
    assert full["stop"][0] == 9 and full["learning_rate"] == pytest.approx(0.01 / 4) and len(full["logs"]["val_loss"]) == 10
    assert_same_ending(interrupted_then_resumed(tmp_path, 9, 12, validation_split=0.25), full)


def test_a_fit_given_an_initial_epoch_resumes_as_one_never_interrupted(tmp_path: Path) -> None:
    """initial_epoch=2 by the user, interrupted at epoch 4: the resumed fit ends as the uninterrupted one."""
    model, callbacks = tiny(), monitors()
    full = ending(model, run(model, callbacks, 7, initial_epoch=2, validation_split=0.25), callbacks)
    assert full["epochs"] == [2, 3, 4, 5, 6]
    assert_same_ending(interrupted_then_resumed(tmp_path, 4, 7, initial_epoch=2, validation_split=0.25), full)


def test_a_history_given_in_the_callbacks_is_the_one_restored_and_returned(tmp_path: Path) -> None:
    """A History given to resumable is fit's: no second one is added, and it returns the whole run."""
    backup = tmp_path / "backup"
    with pytest.raises(KeyboardInterrupt):
        run(tiny(), callstate.keras.resumable([Interrupt(2)], backup), 4)
    mine = keras.callbacks.History()
    callbacks = callstate.keras.resumable([mine], backup)
    assert [cb for cb in callbacks if isinstance(cb, keras.callbacks.History)] == [mine]
    assert run(tiny(), callbacks, 4) is mine
    assert mine.epoch == [0, 1, 2, 3] and len(mine.history["loss"]) == 4


def test_a_history_of_array_metrics_resumes_as_one_never_interrupted(tmp_path: Path) -> None:
    """A metric that logs an array (F1Score per class) is in the backup's history and restored with it."""

    def classifier() -> keras.Model:
        keras.utils.set_random_seed(1)
        m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="sigmoid")])
        m.compile(keras.optimizers.SGD(0.1), loss="binary_crossentropy", metrics=[keras.metrics.F1Score()])
        return m

    labels = np.stack([X[:, 0] > 0.5, X[:, 1] > 0.5], axis=1).astype("float32")

    def fit(model: keras.Model, callbacks: list[Any]) -> keras.callbacks.History:
        return model.fit(X, labels, epochs=4, batch_size=4, shuffle=False, verbose=0, callbacks=callbacks)

    full = fit(classifier(), []).history
    assert full["f1_score"][0].shape == (2,), "F1Score logs one value per class"
    backup = tmp_path / "backup"
    with pytest.raises(KeyboardInterrupt):
        fit(classifier(), callstate.keras.resumable([Interrupt(2)], backup))
    resumed = fit(classifier(), callstate.keras.resumable([], backup)).history
    assert sorted(resumed) == sorted(full)
    for name in full:
        assert len(resumed[name]) == 4 and all(np.array_equal(a, b) for a, b in zip(resumed[name], full[name], strict=True))


def test_keras_own_backup_in_the_list_is_refused(tmp_path: Path) -> None:
    """resumable() replaces keras.callbacks.BackupAndRestore: giving both raises, naming it."""
    with pytest.raises(UnsupportedTrainerError, match=r"keras\.src\.callbacks\.backup_and_restore\.BackupAndRestore"):
        callstate.keras.resumable([keras.callbacks.BackupAndRestore(str(tmp_path))], tmp_path / "b")


# -- a moved run ---------------------------------------------------------------------------------------


@callstate.stateful(identity=("directory",), state=("written",))
class Exporter(keras.callbacks.Callback):
    """Writes a file per epoch into ``directory`` and remembers them: a path in its key and in its state."""

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.directory = str(directory)
        self.written: dict[str, int] = {}
        self.at_begin: dict[str, int] | None = None

    def on_epoch_begin(self, epoch: int, logs: object = None) -> None:
        if self.at_begin is None:  # the first epoch of this fit: the backup restored it at train begin
            self.at_begin = dict(self.written)

    def on_epoch_end(self, epoch: int, logs: object = None) -> None:
        self.written[os.path.join(self.directory, f"epoch-{epoch}.txt")] = epoch


def in_run(run_dir: Path) -> list[Any]:
    """An exporter, a best-only ModelCheckpoint and an appending CSVLogger, all writing into ``run_dir``."""
    return [
        Exporter(run_dir / "exports"),
        keras.callbacks.ModelCheckpoint(str(run_dir / "best.weights.h5"), monitor="loss", save_best_only=True,
                                        save_weights_only=True),
        keras.callbacks.CSVLogger(str(run_dir / "log.csv"), append=True),
    ]


def test_a_run_moved_with_shutil_resumes_with_relocate_its_paths_and_keys_in_the_new_place(tmp_path: Path) -> None:
    """A run dir moved with shutil.move, resumed with relocate= and strict: states and path-keyed built-ins follow it."""
    old, new = tmp_path / "old" / "run", tmp_path / "new" / "run"
    old.mkdir(parents=True)
    first = in_run(old)
    run(tiny(), callstate.keras.resumable(first, old / "backup", delete_checkpoint=False), 2)
    best = first[1].best
    new.parent.mkdir()
    shutil.move(str(old), str(new))
    exporter, checkpoint, _ = callbacks = in_run(new)
    backup = callstate.keras.resumable(callbacks, new / "backup", strict=True, relocate={old: new})[-1]
    seen: dict[str, float] = {}
    peek = keras.callbacks.LambdaCallback(on_epoch_begin=lambda e, logs: seen.setdefault("best", checkpoint.best))
    run(tiny(), [*callbacks, backup.history, backup, peek], 3)
    assert exporter.at_begin == {str(new / "exports" / f"epoch-{e}.txt"): e for e in (0, 1)}
    report = backup.last_report
    assert report is not None and dict(report.relocated) == {callstate.state_key(exporter): 2}
    renamed = dict(report.renamed)  # each found under the key it had in the old place
    assert renamed[callstate.state_key(checkpoint)] == callstate.state_key(in_run(old)[1])
    assert set(renamed) == {callstate.state_key(cb) for cb in callbacks}
    assert seen["best"] == best  # its best loss came back: a worse epoch does not overwrite best.weights.h5
    assert [line.split(",")[0] for line in (new / "log.csv").read_text().splitlines()] == ["epoch", "0", "1", "2"]


@pytest.mark.parametrize(
    ("relocate", "error", "match"),
    [({"/": "/new"}, ValueError, "empty or a root"), ("/old", TypeError, "takes a mapping")],
)
def test_a_malformed_relocate_is_refused_before_any_fit(
    tmp_path: Path, relocate: Any, error: type[Exception], match: str
) -> None:
    """resumable(relocate=) and BackupAndRestore(relocate=) check the mapping as callstate.load does."""
    backup = backed_up(tmp_path)
    with pytest.raises(error, match=match):
        callstate.keras.resumable([Count("a")], backup, relocate=relocate)
    with pytest.raises(error, match=match):
        callstate.keras.BackupAndRestore(backup, [Count("a")], relocate=relocate)
    assert (backup / callstate.keras.BACKUP_FILE).is_file()

# -- random streams ------------------------------------------------------------------------------------


class Draw(keras.callbacks.Callback):
    """Draws from Python's, numpy's and torch's global streams at each epoch's start."""

    def __init__(self) -> None:
        super().__init__()
        self.drawn: dict[int, tuple[float, float, float]] = {}

    def on_epoch_begin(self, epoch: int, logs: object = None) -> None:
        import torch

        self.drawn[epoch] = (random.random(), float(np.random.rand()), float(torch.rand(1)))


def test_rng_state_given_in_states_brings_the_random_streams_back_after_a_resume(tmp_path: Path) -> None:
    """resumable(states=[RNGState()]): a resumed fit draws the numbers an uninterrupted one draws."""
    whole = Draw()
    run(tiny(), callstate.keras.resumable([whole], tmp_path / "whole", states=[callstate.RNGState()]), 4)
    backup, first, rng = tmp_path / "backup", Draw(), callstate.RNGState()
    run(tiny(), callstate.keras.resumable([first], backup, states=[rng], delete_checkpoint=False), 2)
    resumed, again = Draw(), callstate.RNGState()
    callbacks = callstate.keras.resumable([resumed], backup, states=[again], strict=True)
    assert again not in callbacks  # Keras never sees it
    run(tiny(), callbacks, 4)  # tiny() seeds the streams anew, as a new process would
    assert {"python", "numpy", "torch"} <= set(again.restored)
    assert first.drawn == {e: whole.drawn[e] for e in (0, 1)}
    assert resumed.drawn == {e: whole.drawn[e] for e in (2, 3)}


def test_states_that_are_keras_callbacks_or_not_stateful_are_refused_naming_each(tmp_path: Path) -> None:
    """states= takes no Keras callback and nothing stateless: one TargetTypeError names every such item."""
    with pytest.raises(TargetTypeError, match=r"#0 \(Count\) is a Keras callback.*#2 \(object\) is not stateful"):
        callstate.keras.resumable([], tmp_path / "b", states=[Count("a"), callstate.RNGState(), object()])
    with pytest.raises(TargetTypeError, match="not RNGState"):
        callstate.keras.BackupAndRestore(tmp_path / "b", states=callstate.RNGState())  # type: ignore[arg-type]
    assert not (tmp_path / "b").exists()


# -- hostile backups -----------------------------------------------------------------------------------


def restored_into_fresh(backup: Path, exc: type[BaseException], match: str) -> None:
    """Resuming from ``backup`` raises ``exc``; the model, the optimizer and the callbacks are unchanged."""
    model, a, b = tiny(), Count("a"), Count("b")
    initial = weights(model)
    with pytest.raises(exc, match=match):
        run(model, callstate.keras.resumable([a, b], backup), 3)
    assert (a.count, b.count) == (0, 0) and same(weights(model), initial)
    assert iterations(model) == 0


def rewrite(backup: Path, change: Any) -> None:
    """Write the backup again with ``change(states)`` applied to its plain states."""
    path = backup / callstate.keras.BACKUP_FILE
    states = callstate.read(path)
    change(states)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        callstate.save(states, path)


def test_a_truncated_or_foreign_backup_is_refused(tmp_path: Path) -> None:
    """A backup cut short, or bytes that are no callstate file: CorruptCheckpointError naming it."""
    backup = backed_up(tmp_path)
    path = backup / callstate.keras.BACKUP_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    restored_into_fresh(backup, CorruptCheckpointError, "backup.callstate")
    path.write_bytes(np.random.RandomState(3).bytes(len(data)))
    restored_into_fresh(backup, CorruptCheckpointError, "backup.callstate")


def test_weights_of_another_model_are_refused_before_any_change(tmp_path: Path) -> None:
    """Saved weights of other shapes: a RestoreError that names the InvalidStateError and the shapes."""
    backup = backed_up(tmp_path)

    def other_shapes(states: dict[str, Any]) -> None:
        fit = states[callstate.keras.FIT_KEY]
        fit["weights"] = [np.zeros((7, 7), "float32") for _ in fit["weights"]]

    rewrite(backup, other_shapes)
    restored_into_fresh(backup, RestoreError, "keras:fit")
    with pytest.raises(RestoreError) as caught:
        run(tiny(), callstate.keras.resumable([Count("a"), Count("b")], backup), 3)
    # Keras's fit re-raises with "from None" (its traceback filtering): the message carries the cause.
    assert "raised InvalidStateError" in str(caught.value) and "(7, 7)" in str(caught.value)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda s: s["keras:fit"].update(epoch=-4), id="negative-epoch"),
        pytest.param(lambda s: s["keras:fit"].update(epoch=10**30), id="huge-epoch"),
        pytest.param(lambda s: s["keras:fit"].update(batch=2**53 + 1), id="batch-past-2**53"),
        pytest.param(lambda s: s["keras:fit"].update(stopped=1), id="stopped-not-a-bool"),
        pytest.param(lambda s: s["keras:fit"]["optimizer"].pop(), id="optimizer-one-variable-fewer"),
        pytest.param(
            lambda s: s["keras:fit"]["optimizer"].__setitem__(-1, np.zeros((3, 3), "float32")),
            id="optimizer-variable-of-another-shape",
        ),
        pytest.param(
            lambda s: s["keras:fit"]["optimizer"].__setitem__(-1, np.full((1,), 0.1, "float64")),
            id="optimizer-variable-of-another-dtype-not-exact",
        ),
        pytest.param(
            lambda s: s["keras:fit"]["optimizer"].__setitem__(0, np.array(2**40, "int64")),
            id="iterations-past-the-models-int32",
        ),
        pytest.param(
            lambda s: s["keras:fit"]["weights"].__setitem__(0, s["keras:fit"]["weights"][0].astype("complex64")),
            id="weights-of-a-complex-dtype",
        ),
        pytest.param(lambda s: s["keras:fit"]["weights"].append(np.zeros(1, "float32")), id="one-weight-more"),
        pytest.param(lambda s: s["keras:fit"]["weights"].pop(0), id="one-weight-fewer"),
        pytest.param(lambda s: s["keras:fit"].update(weights={"a": 1}), id="weights-not-a-list"),
        pytest.param(lambda s: s["keras:fit"].update(history=[0, 1]), id="history-not-a-mapping"),
        pytest.param(lambda s: s["keras:fit"]["history"].update(epoch=[0, -1]), id="history-negative-epoch"),
        pytest.param(lambda s: s["keras:fit"]["history"]["logs"].update(loss=["x"]), id="history-logs-not-numbers"),
        pytest.param(
            lambda s: s["keras:fit"]["history"]["logs"].update(loss=[np.array(["x"])]), id="history-logs-text-arrays"
        ),
        pytest.param(lambda s: s["keras:fit"].update(optimizer="x" * 10), id="optimizer-not-arrays"),
        pytest.param(lambda s: s["keras:fit"].update(run_code="os.system"), id="unknown-field"),
        pytest.param(lambda s: s.__setitem__("keras:fit", [1, 2]), id="not-a-mapping"),
    ],
)
def test_altered_fit_states_are_refused(tmp_path: Path, change: Any) -> None:
    """An altered fit entry (counters, arrays, history, fields, shape): a typed error naming it, nothing changed."""
    backup = backed_up(tmp_path)
    rewrite(backup, change)
    restored_into_fresh(backup, RestoreError, "keras:fit")
    with pytest.raises(RestoreError) as caught:
        run(tiny(), callstate.keras.resumable([Count("a"), Count("b")], backup), 3)
    # The cause is the adapter's typed refusal, and the backup file is named.
    assert "raised InvalidStateError" in str(caught.value) and "backup.callstate" in str(caught.value)


def test_a_backup_in_other_numeric_dtypes_resumes_as_the_same_backup_would(tmp_path: Path) -> None:
    """Arrays of another dtype (TensorFlow counts iterations in int64) restore where each value converts exactly."""
    backup = backed_up(tmp_path)
    widened = tmp_path / "widened"
    shutil.copytree(backup, widened)

    def widen(states: dict[str, Any]) -> None:
        fit = states["keras:fit"]
        fit["optimizer"] = [v.astype("int64" if v.dtype.kind in "iu" else "float64") for v in fit["optimizer"]]
        fit["weights"] = [w.astype("float64") for w in fit["weights"]]

    rewrite(widened, widen)
    assert callstate.read(widened / callstate.keras.BACKUP_FILE)["keras:fit"]["optimizer"][0].dtype == np.int64
    ends = []
    for directory in (backup, widened):
        model, a, stop = tiny(), Count("a"), keras.callbacks.EarlyStopping(monitor="loss", patience=5)
        run(model, callstate.keras.resumable([stop, a, Count("b")], directory), 4)
        ends.append((weights(model), iterations(model), a.count))
    assert same(ends[0][0], ends[1][0]) and ends[0][1:] == ends[1][1:] == (16, 4)


def test_a_builtin_state_with_an_unknown_field_rolls_the_weights_back(tmp_path: Path) -> None:
    """The fit entry applies, then EarlyStopping's is refused: the weights and optimizer are put back."""
    backup = backed_up(tmp_path)
    key = "EarlyStopping{'monitor': 'loss', 'mode': 'min'}"
    rewrite(backup, lambda s: s[key].update(model="replaced"))
    model, stop = tiny(), keras.callbacks.EarlyStopping(monitor="loss", patience=5)
    initial = weights(model)
    with pytest.raises(RestoreError, match="EarlyStopping") as caught:
        run(model, callstate.keras.resumable([stop, Count("a"), Count("b")], backup), 3)
    assert caught.value.rolled_back == ("keras:fit",)
    assert same(weights(model), initial) and stop.wait == 0
    assert iterations(model) == 0


def test_without_keras_the_adapter_names_the_install_command() -> None:
    """callstate.keras without keras: MissingDependencyError naming pip install 'callstate[keras]'."""
    code = (
        "import sys; sys.modules['keras'] = None\n"
        "from callstate.errors import MissingDependencyError\n"
        "try:\n    import callstate.keras\n"
        "except MissingDependencyError as exc:\n    print(exc.name, exc.extra, str(exc))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("keras keras callstate.keras needs keras"), out.stderr
    assert "pip install 'callstate[keras]'" in out.stdout
    assert issubclass(MissingDependencyError, ModuleNotFoundError)


@pytest.mark.slow
def test_the_guides_example_runs_and_resumes(tmp_path: Path) -> None:
    """docs/guide/keras.md's example, run as a script: interrupted in epoch 2, resumed at epoch 2."""
    text = (ROOT / "docs" / "guide" / "keras.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert blocks
    env = {**os.environ, "KERAS_BACKEND": "torch", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", "\n".join(blocks)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == [
        "interrupted in epoch 2; the backup holds epochs 0 and 1",
        "resumed at epoch 2",
        "epochs counted: 5",
        "epochs in the history: [0, 1, 2, 3, 4]",
    ]
