"""pytest plugin: callstate.keras injected into every ``Model.fit`` of Keras's own callback tests.

``tests/third_party/run.py`` loads it with ``-p callstate_keras_inject`` into the callback test files
shipped in the installed Keras wheel. Each ``fit`` gets its callbacks through
``callstate.keras.resumable(callbacks, <a fresh temp dir>)``, so callstate's ``BackupAndRestore``
saves the weights, the optimizer and every callback's state at each epoch's end, and after it one
more callback restores all of them at once from the file just written (``callstate.load`` of the
backup's ``registry``, strict). A test passes injected only if saving and restoring every state at
every epoch changes nothing it checks: when it stops, the learning rate, the best values, the files
written, the history returned.

A fit whose callbacks hold Keras's own ``BackupAndRestore`` is left alone (``resumable`` refuses two
backups, as it should): those tests check Keras's backup, not callstate's; so is one given a
``keras.callbacks.CallbackList``, fit's own container. When the environment
names a file in ``CALLSTATE_INJECT_REPORT``, the session's end writes there, as JSON, how many fits
were injected, how many backups were saved and restored, and how many callback states (Keras's
built-ins and the test's own) the restores applied, so the runner can tell an injected run from one
where the injection silently did nothing.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import shutil
import tempfile
from typing import Any

import pytest

REPORT_ENV = "CALLSTATE_INJECT_REPORT"
counts = {"fits": 0, "saved": 0, "restored": 0, "callback_states": 0}

_original_fit: Any = None


def _round_trip(keras: Any, backup: Any) -> Any:
    import callstate

    class RoundTrip(keras.callbacks.Callback):  # type: ignore[misc]
        """Restores every state from the backup written at this epoch's end, as a resume would."""

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            if not os.path.exists(backup.path):
                return
            counts["saved"] += 1
            report = callstate.load(backup.registry, backup.path, strict=True)
            counts["restored"] += 1
            counts["callback_states"] += len(report.restored) - 1  # the fit's own entry apart

    return RoundTrip()


def pytest_configure(config: pytest.Config) -> None:
    global _original_fit
    import keras

    import callstate.keras

    _original_fit = keras.Model.fit
    signature = inspect.signature(_original_fit)

    @functools.wraps(_original_fit)
    def fit(self: Any, *args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(self, *args, **kwargs)
        given = bound.arguments.get("callbacks") or []
        # A CallbackList is fit's own container (not a list of callbacks to wrap): left as given.
        if isinstance(given, keras.callbacks.CallbackList) or any(
            isinstance(cb, keras.callbacks.BackupAndRestore) for cb in given
        ):
            return _original_fit(self, *args, **kwargs)
        callbacks = list(given)
        backup_dir = tempfile.mkdtemp(prefix="callstate-keras-inject-")
        try:
            wrapped = callstate.keras.resumable(callbacks, backup_dir)
            bound.arguments["callbacks"] = [*wrapped, _round_trip(keras, wrapped[-1])]
            counts["fits"] += 1
            return _original_fit(*bound.args, **bound.kwargs)
        finally:
            shutil.rmtree(backup_dir, ignore_errors=True)

    keras.Model.fit = fit


def pytest_unconfigure(config: pytest.Config) -> None:
    import keras

    if _original_fit is not None:
        keras.Model.fit = _original_fit
    path = os.environ.get(REPORT_ENV)
    if path:
        with open(path, "w", encoding="utf-8") as file:
            json.dump(counts, file)
