"""A tiny Keras fit, run as a script by tests/test_keras.py: ``python keras_fit.py OUT DIR HOW [KILL_EPOCH]``.

HOW is ``callstate`` (``callstate.keras.resumable``) or ``keras`` (Keras's own BackupAndRestore,
the control). The backend is ``KERAS_BACKEND``'s. With KILL_EPOCH the process kills itself with
SIGKILL after the second batch of that epoch (a backup of the epoch before it is on disk). Without
it, the fit runs to its end and what it ended with is written to OUT (a .npz). With
KERAS_FIT_DATA_PARALLEL=N in the environment, the fit runs under
``keras.distribution.DataParallel`` over N CPU devices (JAX backend, with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``).
"""

from __future__ import annotations

import os
import signal
import sys

import keras
import numpy as np

import callstate
import callstate.keras

EPOCHS = 14


@callstate.stateful(identity=("what",), state=("count", "total"))
class Tally(keras.callbacks.Callback):
    """Counts the epochs and sums a logged value: two of them differ by ``what``."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what
        self.count = 0
        self.total = 0.0

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.count += 1
        self.total += float((logs or {})[self.what])


class Kill(keras.callbacks.Callback):
    """Kills this process with SIGKILL in the middle of ``epoch``."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch
        self.current = -1

    def on_epoch_begin(self, epoch: int, logs: object = None) -> None:
        self.current = epoch

    def on_train_batch_end(self, batch: int, logs: object = None) -> None:
        if self.current == self.epoch and batch == 1:
            os.kill(os.getpid(), signal.SIGKILL)


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(0)
    x = rng.rand(64, 4).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5], [3.0]]) + rng.normal(0, 0.6, (64, 1))).astype("float32")
    return x, y


def model() -> keras.Model:
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])
    m.compile(keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
    return m


def distribute() -> None:
    """Run the fit under DataParallel over the CPU devices, if the environment asks for it."""
    wanted = int(os.environ.get("KERAS_FIT_DATA_PARALLEL", "0"))
    if wanted:
        devices = keras.distribution.list_devices("cpu")
        if len(devices) != wanted:
            raise SystemExit(f"{wanted} CPU devices asked for, {len(devices)} found: {devices}")
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))


def main() -> None:
    out, directory, how = sys.argv[1:4]
    kill = int(sys.argv[4]) if len(sys.argv) > 4 else None
    distribute()
    m = model()
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", patience=1, factor=0.5, min_delta=0.0)
    best = keras.callbacks.ModelCheckpoint(
        os.path.join(directory, "best.weights.h5"), save_best_only=True, save_weights_only=True
    )
    tallies = [Tally("loss"), Tally("val_loss")]
    given = [stop, plateau, best, *tallies]
    if kill is not None:
        given.insert(0, Kill(kill))
    backup = os.path.join(directory, "backup")
    if how == "callstate":
        callbacks = callstate.keras.resumable(given, backup)
    else:
        callbacks = [*given, keras.callbacks.BackupAndRestore(backup)]
    x, y = data()
    history = m.fit(
        x, y, epochs=EPOCHS, batch_size=8, validation_split=0.25, shuffle=False, verbose=0, callbacks=callbacks
    )
    np.savez(
        out,
        last_epoch=history.epoch[-1],
        stopped_epoch=stop.stopped_epoch,
        stop_best=stop.best,
        stop_best_epoch=stop.best_epoch,
        stop_wait=stop.wait,
        plateau_best=plateau.best,
        plateau_wait=plateau.wait,
        checkpoint_best=best.best,
        learning_rate=keras.ops.convert_to_numpy(m.optimizer.learning_rate),
        iterations=keras.ops.convert_to_numpy(m.optimizer.iterations),
        tallies=np.array([[t.count, t.total] for t in tallies]),
        # The devices the first weight lives on (JAX's sharding; 1 on the other backends).
        devices=len(getattr(getattr(m.weights[0].value, "sharding", None), "device_set", [None])),
        history_epochs=np.array(history.epoch),
        history_loss=np.array(history.history["loss"]),
        history_val_loss=np.array(history.history["val_loss"]),
        **{f"weight{i}": w for i, w in enumerate(m.get_weights())},
    )


if __name__ == "__main__":
    main()
