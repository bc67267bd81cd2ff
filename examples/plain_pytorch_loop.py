"""A plain PyTorch training loop with resumable callbacks: kill it at any moment, resume, same result.

Two early-stopping callbacks (one on the training loss, one on the validation loss) and two EMA
callbacks (decay 0.9 and 0.99) run through ``callstate.loop.Callbacks``. Every ``--checkpoint-every``
steps one file, ``last.callstate`` (or ``last.pt`` with ``--format torch``), is written atomically
with the model, the optimizer, the callbacks' states, the RNG states (torch and Python) and the
position in the shuffled data, so a resumed run continues with bitwise the same losses and callback
states as a run that was never interrupted::

    python examples/plain_pytorch_loop.py --dir run/           # kill it at any moment ...
    python examples/plain_pytorch_loop.py --dir run/ --resume  # ... and carry on

It prints every step's loss and, at the end, the callbacks' final states; ``run/final.pt`` holds the
losses, the model and the callbacks' states.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from pathlib import Path
from typing import Any

import torch

import callstate
from callstate.loop import Callbacks, load_checkpoint, save_checkpoint

SAMPLES, FEATURES, BATCH = 256, 8, 16


@callstate.stateful(identity=("monitor",))
class EarlyStopping:
    """Asks to stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` steps."""

    def __init__(self, monitor: str, patience: int, min_delta: float = 0.0) -> None:
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.best = math.inf
        self.wait = 0
        self.stopped_at: int | None = None

    def on_train_batch_end(self, *, step: int, metrics: dict[str, float], **_: Any) -> bool:
        value = metrics[self.monitor]
        if value < self.best - self.min_delta:
            self.best, self.wait = value, 0
        else:
            self.wait += 1
        if self.wait >= self.patience and self.stopped_at is None:
            self.stopped_at = step
        return self.stopped_at is not None

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait, "stopped_at": self.stopped_at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait, self.stopped_at = state["best"], state["wait"], state["stopped_at"]


@callstate.stateful(identity=("decay",))
class EMA:
    """Keeps an exponential moving average of the model's parameters."""

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.shadow: dict[str, torch.Tensor] = {}
        self.updates = 0

    @torch.no_grad()
    def on_train_batch_end(self, *, model: torch.nn.Module, **_: Any) -> None:
        for name, param in model.named_parameters():
            if name not in self.shadow:
                self.shadow[name] = param.detach().clone()
            else:
                self.shadow[name].mul_(self.decay).add_(param.detach(), alpha=1 - self.decay)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": {k: v.clone() for k, v in self.shadow.items()}, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}
        self.updates = state["updates"]


def make_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A fixed synthetic regression problem: the same tensors in every process."""
    g = torch.Generator().manual_seed(1234)
    w = torch.randn(FEATURES, 1, generator=g)
    x = torch.randn(SAMPLES + 64, FEATURES, generator=g)
    y = torch.tanh(x @ w) + 0.1 * torch.randn(SAMPLES + 64, 1, generator=g)
    return x[:SAMPLES], y[:SAMPLES], x[SAMPLES:], y[SAMPLES:]


def make_callbacks() -> Callbacks:
    return Callbacks(
        [
            EarlyStopping("loss", patience=60),
            EarlyStopping("val_loss", patience=40, min_delta=1e-4),
            EMA(0.9),
            EMA(0.99),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True, help="where checkpoints and results go")
    parser.add_argument("--steps", type=int, default=200, help="training steps (default: 200)")
    parser.add_argument("--checkpoint-every", type=int, default=10, help="steps between checkpoints")
    parser.add_argument(
        "--format", choices=("callstate", "torch"), default="callstate", help="checkpoint file format"
    )
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in DIR")
    parser.add_argument(
        "--step-time", type=float, default=0.0, help="seconds to sleep per step, to make a run slow"
    )
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    last = args.dir / ("last.callstate" if args.format == "callstate" else "last.pt")
    final = args.dir / "final.pt"

    torch.set_num_threads(1)  # one thread: reductions are summed in the same order every run
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)
    random.seed(0)
    data_rng = torch.Generator().manual_seed(1)
    x, y, val_x, val_y = make_data()

    model = torch.nn.Sequential(
        torch.nn.Linear(FEATURES, 32), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(32, 1)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    callbacks = make_callbacks()

    step, batch, losses = 0, 0, []
    order = torch.randperm(SAMPLES, generator=data_rng)
    if args.resume and last.exists():
        loaded = load_checkpoint(last, callbacks, model=model, optimizer=optimizer, strict=True)
        extra = loaded.extra
        step, batch, losses, order = extra["step"], extra["batch"], extra["losses"], extra["order"]
        torch.set_rng_state(extra["torch_rng"])
        data_rng.set_state(extra["data_rng"])
        random.setstate(extra["python_rng"])
        print(f"resumed from step {step}", flush=True)

    batches_per_epoch = SAMPLES // BATCH
    stop = False
    while step < args.steps and not stop:
        if batch == 0 and step > 0:
            order = torch.randperm(SAMPLES, generator=data_rng)
        index = order[batch * BATCH : (batch + 1) * BATCH]
        scale = 1.0 + 0.05 * random.gauss(0.0, 1.0)  # Python-RNG augmentation
        model.train()
        loss = torch.nn.functional.mse_loss(model(x[index] * scale), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.eval()
        with torch.no_grad():
            val_loss = torch.nn.functional.mse_loss(model(val_x), val_y).item()
        step, batch = step + 1, (batch + 1) % batches_per_epoch
        losses.append(loss.item())
        metrics = {"loss": loss.item(), "val_loss": val_loss}
        stop = any(callbacks.call("on_train_batch_end", step=step, model=model, metrics=metrics))
        print(f"step {step} loss {loss.item()!r} val_loss {val_loss!r}", flush=True)
        if step % args.checkpoint_every == 0:
            save_checkpoint(
                last,
                callbacks,
                model=model,
                optimizer=optimizer,
                step=step,
                batch=batch,
                order=order,
                losses=losses,
                torch_rng=torch.get_rng_state(),
                data_rng=data_rng.get_state(),
                python_rng=random.getstate(),
            )
            print(f"checkpoint at step {step}", flush=True)
        time.sleep(args.step_time)

    save_checkpoint(final, callbacks, model=model, losses=losses, step=step)
    print(f"finished after {step} steps" + (" (early stop)" if stop else ""))
    for key, cb in callbacks.items():
        state = cb.state_dict()  # type: ignore[attr-defined]
        if "shadow" in state:
            state = {"updates": state["updates"], "shadow[0.bias]": state["shadow"]["0.bias"][:3].tolist()}
        print(f"  {key}: {state}")


if __name__ == "__main__":
    main()
