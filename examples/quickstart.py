"""The callstate quickstart: two Counters, a crash, and a restore into fresh instances.

Run with ``make demo`` (or ``python examples/quickstart.py`` where callstate is installed).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import callstate


@callstate.stateful(identity=("what",))
class Counter:
    """Counts epochs or batches; two instances are told apart by ``what``."""

    def __init__(self, what: str = "epochs", verbose: bool = True) -> None:
        self.what, self.verbose = what, verbose
        self.state = {"epochs": 0, "batches": 0}

    def on_train_epoch_end(self) -> None:
        if self.what == "epochs":
            self.state["epochs"] += 1

    def on_train_batch_end(self) -> None:
        if self.what == "batches":
            self.state["batches"] += 1

    def state_dict(self) -> dict[str, Any]:
        return self.state.copy()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state.update(state)


def train(registry: callstate.CallbackRegistry, epochs: int, batches: int) -> None:
    """A toy training loop: calls each callback's hooks."""
    for _ in range(epochs):
        for _ in range(batches):
            for cb in registry:
                cb.on_train_batch_end()  # type: ignore[attr-defined]
        for cb in registry:
            cb.on_train_epoch_end()  # type: ignore[attr-defined]


def main() -> None:
    registry = callstate.CallbackRegistry([Counter("epochs"), Counter("batches")])
    print("keys:", registry.keys())
    train(registry, epochs=2, batches=16)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "callbacks.callstate"
        callstate.save(registry, path)
        print(f"saved {path.stat().st_size} bytes to {path.name}")
        del registry  # the crash: the live callbacks are gone

        fresh = callstate.CallbackRegistry([Counter("batches"), Counter("epochs")])
        report = callstate.load(fresh, path, strict=True)
    print("restored:", list(report.restored))
    for key, cb in fresh.items():
        print(f"  {key}: {cb.state}")  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
