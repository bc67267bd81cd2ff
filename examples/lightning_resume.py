"""A Lightning run killed mid-epoch and resumed ends with the callback states of a run never interrupted.

The Trainer gets the Lightning documentation's two ``Counter`` callbacks (``@callstate.stateful``
gives them their keys), a ``ModelCheckpoint`` that writes ``last.ckpt`` after every epoch, and a
``callstate.lightning.CallstateCallback`` managing two plain objects that are not Lightning
Callbacks, so Lightning alone would not save them: a ``NoiseSchedule`` (a random input scale per
batch, from its own RNG) and a ``RunningMean`` of the training loss. The adapter saves their states
into ``last.ckpt`` next to the Counters' and restores every callback on resume, atomically and
strictly (``strict=True``: a state without a callback, or a callback without a state, fails)::

    python examples/lightning_resume.py --ckpt-dir run/ --crash-after-epoch 1   # SIGKILL in epoch 2
    python examples/lightning_resume.py --ckpt-dir run/ --resume                # from run/last.ckpt

It prints the callback states at the end of every epoch (what that epoch's checkpoint holds), on
resume the states restored from the checkpoint, and last the final states as one line of JSON. The
NoiseSchedule's RNG state is shown as a digest. Works with ``lightning.pytorch`` or
``pytorch_lightning``, whichever is installed (``pip install 'callstate[lightning]'``).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import random
import signal
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

import callstate
from callstate.lightning import CallstateCallback


def _lightning() -> Any:
    for name in ("lightning.pytorch", "pytorch_lightning"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise SystemExit("This example needs Lightning >= 2.0: pip install 'callstate[lightning]'")


pl = _lightning()
ModelCheckpoint = importlib.import_module(f"{pl.__name__}.callbacks").ModelCheckpoint

SAMPLES, FEATURES, BATCH = 64, 4, 4
BATCHES = SAMPLES // BATCH  # per epoch

# What Lightning says in every tiny CPU run, and, on resume, about the keys of the plain objects'
# states: it checks the checkpoint against its own callbacks before the adapter restores them.
for message in (
    r".*does not have many workers",
    r".*is smaller than the logging interval",
    r".*GPU available but not used",
    r"Be aware that when using `ckpt_path`",
    r"Checkpoint directory .* exists and is not empty",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
):
    warnings.filterwarnings("ignore", message=message)


@callstate.stateful(identity=("what",))
class Counter(pl.Callback):  # type: ignore[misc]
    """The Lightning documentation's Counter: counts epochs or batches; ``what`` tells two apart."""

    def __init__(self, what: str = "epochs", verbose: bool = True) -> None:
        self.what = what
        self.verbose = verbose  # not part of the key
        self.state = {"epochs": 0, "batches": 0}

    def on_train_epoch_end(self, *args: Any, **kwargs: Any) -> None:
        if self.what == "epochs":
            self.state["epochs"] += 1

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        if self.what == "batches":
            self.state["batches"] += 1

    def state_dict(self) -> dict[str, int]:
        return self.state.copy()

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.state.update(state_dict)


@callstate.stateful(identity=("name",))
class NoiseSchedule:
    """A random input scale per batch, from its own RNG, shrinking every step (a plain object)."""

    def __init__(self, name: str, seed: int, scale: float = 0.2, decay: float = 0.97) -> None:
        self.name = name
        self.rng = random.Random(seed)
        self.scale = scale
        self.decay = decay
        self.steps = 0

    def draw(self) -> float:
        value = self.scale * self.rng.uniform(-1.0, 1.0)
        self.scale *= self.decay
        self.steps += 1
        return value

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.getstate(), "scale": self.scale, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.setstate(state["rng"])
        self.scale = state["scale"]
        self.steps = state["steps"]


@callstate.stateful(identity=("metric",), state=("count", "mean"))
class RunningMean:
    """The mean of a metric over every training step so far (a plain object)."""

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self.count = 0
        self.mean = 0.0

    def update(self, value: float) -> None:
        self.count += 1
        self.mean += (value - self.mean) / self.count


class TinyRegression(pl.LightningModule):  # type: ignore[misc]
    """One Linear layer on a fixed synthetic problem, its inputs scaled by the noise schedule."""

    def __init__(self, noise: NoiseSchedule, loss_mean: RunningMean) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(FEATURES, 1)
        self.noise = noise
        self.loss_mean = loss_mean

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x * (1.0 + self.noise.draw())), y)
        self.loss_mean.update(loss.item())
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def train_dataloader(self) -> Any:
        g = torch.Generator().manual_seed(1234)
        x = torch.randn(SAMPLES, FEATURES, generator=g)
        y = torch.tanh(x.sum(dim=1, keepdim=True))
        return DataLoader(TensorDataset(x, y), batch_size=BATCH)  # same order every epoch and run


def shown(objects: list[Any]) -> dict[str, Any]:
    """Return ``{key: state}`` of ``objects``, ready for JSON (an RNG state as a short digest)."""
    out: dict[str, Any] = {}
    for key, obj in callstate.CallbackRegistry(objects).items():
        state = dict(obj.state_dict())
        if "rng" in state:
            state["rng"] = "sha256:" + hashlib.sha256(repr(state["rng"]).encode()).hexdigest()[:16]
        out[str(key)] = state
    return out


class Show(pl.Callback):  # type: ignore[misc]
    """Prints the states restored on resume, and at each epoch's end (what that epoch's checkpoint holds)."""

    def __init__(self, objects: list[Any], adapter: CallstateCallback) -> None:
        self.objects = objects
        self.adapter = adapter

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        report = self.adapter.last_report  # set when fit restored from ckpt_path, before on_fit_start
        if report is not None:
            print(f"restored: {json.dumps(shown(self.objects))}", flush=True)
            print(
                f"report: {len(report.restored)} states restored, missing {list(report.missing)}, "
                f"unexpected {list(report.unexpected)}",
                flush=True,
            )

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        # Runs before ModelCheckpoint's save (Lightning calls checkpoint callbacks last).
        print(f"epoch {trainer.current_epoch + 1}: {json.dumps(shown(self.objects))}", flush=True)


class Crash(pl.Callback):  # type: ignore[misc]
    """Kills the process with SIGKILL halfway through the epoch after ``after_epoch``: no cleanup."""

    def __init__(self, after_epoch: int) -> None:
        self.after_epoch = after_epoch

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.current_epoch == self.after_epoch and batch_idx + 1 == BATCHES // 2:
            print(f"killed in epoch {self.after_epoch + 1} after batch {batch_idx + 1}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt-dir", type=Path, required=True, help="where the checkpoints go")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of 16 batches (default: 3)")
    parser.add_argument(
        "--crash-after-epoch", type=int, metavar="N", help="kill the process with SIGKILL in epoch N + 1"
    )
    parser.add_argument("--resume", action="store_true", help="resume from CKPT_DIR/last.ckpt")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)  # one thread: the same sums in the same order, run after run
    torch.manual_seed(0)
    counters = [Counter("epochs"), Counter("batches")]
    noise, loss_mean = NoiseSchedule("input-scale", seed=7), RunningMean("train_loss")
    adapter = CallstateCallback([noise, loss_mean], strict=True)
    shown_objects = [*counters, noise, loss_mean]
    callbacks = [
        *counters,
        ModelCheckpoint(dirpath=args.ckpt_dir, save_last=True, save_on_train_epoch_end=True),
        adapter,
        Show(shown_objects, adapter),
    ]
    if args.crash_after_epoch is not None:
        callbacks.append(Crash(args.crash_after_epoch))
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        callbacks=callbacks,
        accelerator="cpu",
        devices=1,
        deterministic=True,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    ckpt_path = None
    if args.resume:
        ckpt_path = args.ckpt_dir / "last.ckpt"
        if not ckpt_path.exists():
            raise SystemExit(f"{str(ckpt_path)!r} does not exist: run without --resume first.")
        print(f"resuming from {ckpt_path}", flush=True)
    trainer.fit(TinyRegression(noise, loss_mean), ckpt_path=ckpt_path)
    print("final states:")
    print(json.dumps(shown(shown_objects)), flush=True)


if __name__ == "__main__":
    main()
