"""Shared Lightning test kit: the reference Counter, a tiny model and Trainer, for each namespace.

Lightning ships one Trainer under two import names, ``lightning.pytorch`` and ``pytorch_lightning``;
a Trainer accepts only callbacks and modules of its own namespace, so every class here is built
once per namespace by ``kit(namespace)``. ``NAMESPACES`` lists the installed ones without importing
them, so a test module can skip cleanly where Lightning is absent.
"""

from __future__ import annotations

import copy
import functools
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs

import callstate


def _installed(name: str) -> bool:
    """Whether ``name`` can be imported, without importing it (nor, for a subpackage, its parent)."""
    top, _, rest = name.partition(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):  # an import blocked with None in sys.modules
        return False
    if spec is None or sys.modules.get(name, True) is None:
        return False
    if not rest:
        return True
    locations = spec.submodule_search_locations or []
    return any((Path(loc) / rest.replace(".", "/") / "__init__.py").exists() for loc in locations)


NAMESPACES: tuple[str, ...] = tuple(n for n in ("lightning.pytorch", "pytorch_lightning") if _installed(n))

# Narrow filters for what Lightning says in every tiny CPU run; use as
# ``pytestmark = [pytest.mark.filterwarnings(f) for f in LIGHTNING_NOISE]``.
LIGHTNING_NOISE = (
    "ignore:.*does not have many workers:UserWarning",
    "ignore:.*is smaller than the logging interval:UserWarning",
    "ignore:.*`ckpt_path`.*:UserWarning",
    "ignore:.*Checkpoint directory .* exists and is not empty:UserWarning",
    "ignore:.*GPU available but not used:UserWarning",
    # torch 2.13 deprecates a pytree class that Lightning 2.6 still uses.
    "ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated:FutureWarning",
)

# The numbers the Lightning documentation gives for 2 epochs of 16 batches.
REFERENCE_STATES = {
    "Counter{'what': 'batches'}": {"batches": 32, "epochs": 0},
    "Counter{'what': 'epochs'}": {"batches": 0, "epochs": 2},
}


@callstate.stateful(identity=("name",), state=("count",))
@attrs.define
class Tally:
    """A plain, non-Lightning stateful object: counts what a ``TallyFeeder`` feeds it."""

    name: str
    count: int = 0


@attrs.define(eq=False)
class Kit:
    """The classes and helpers of one Lightning namespace."""

    namespace: str
    pl: ModuleType
    Callback: type
    Counter: type
    TinyModule: type
    TallyFeeder: type
    Probe: type
    ModelCheckpoint: type
    EarlyStopping: type

    def trainer(self, root: Path, callbacks: list[Any], *, max_epochs: int = 2, **kwargs: Any) -> Any:
        """Return a fast CPU Trainer: 16 training batches per epoch, no logger, no progress bar."""
        options: dict[str, Any] = {
            "default_root_dir": str(root),
            "max_epochs": max_epochs,
            "callbacks": callbacks,
            "accelerator": "cpu",
            "devices": 1,
            "limit_train_batches": 16,
            "limit_val_batches": 2,
            "num_sanity_val_steps": 0,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": False,
        }
        options.update(kwargs)
        return self.pl.Trainer(**options)

    def model(self) -> Any:
        """Return a fresh one-Linear LightningModule."""
        return self.TinyModule()


@functools.cache
def kit(namespace: str) -> Kit:
    """Return the test classes built on Lightning's ``namespace`` (``lightning.pytorch`` or ``pytorch_lightning``)."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    pl = importlib.import_module(namespace)
    callbacks = importlib.import_module(f"{namespace}.callbacks")
    Callback: Any = pl.Callback

    class Counter(Callback):  # the reference text's Counter, verbatim in behaviour
        def __init__(self, what: str = "epochs", verbose: bool = True) -> None:
            self.what = what
            self.verbose = verbose
            self.state = {"epochs": 0, "batches": 0}

        @property
        def state_key(self) -> str:
            # note: we do not include `verbose` here on purpose
            return self._generate_state_key(what=self.what)  # type: ignore[no-any-return]

        def on_train_epoch_end(self, *args: Any, **kwargs: Any) -> None:
            if self.what == "epochs":
                self.state["epochs"] += 1

        def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
            if self.what == "batches":
                self.state["batches"] += 1

        def load_state_dict(self, state_dict: dict[str, int]) -> None:
            self.state.update(state_dict)

        def state_dict(self) -> dict[str, int]:
            return self.state.copy()

    class TallyFeeder(Callback):  # stateless: adds one to each Tally after every training batch
        def __init__(self, *tallies: Tally) -> None:
            self.tallies = tallies

        def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
            for tally in self.tallies:
                tally.count += 1

    class Probe(Callback):  # stateless: records every other callback's state when fit starts
        def __init__(self) -> None:
            self.at_fit_start: dict[str, Any] | None = None

        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            # Lightning restores callbacks from ckpt_path before on_fit_start.
            self.at_fit_start = {
                cb.state_key: copy.deepcopy(cb.state_dict()) for cb in trainer.callbacks if cb is not self
            }

    class TinyModule(pl.LightningModule):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.layer(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.layer(x), y))

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

        def _loader(self) -> Any:
            generator = torch.Generator().manual_seed(0)
            x = torch.randn(64, 4, generator=generator)
            return DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=4)

        def train_dataloader(self) -> Any:
            return self._loader()

        def val_dataloader(self) -> Any:
            return self._loader()

    for cls in (Counter, TallyFeeder, Probe, TinyModule):
        # Lightning keys a callback by __qualname__; a class made in a function would get "kit.<locals>.".
        cls.__qualname__ = cls.__name__

    return Kit(
        namespace=namespace,
        pl=pl,
        Callback=Callback,
        Counter=Counter,
        TinyModule=TinyModule,
        TallyFeeder=TallyFeeder,
        Probe=Probe,
        ModelCheckpoint=callbacks.ModelCheckpoint,
        EarlyStopping=callbacks.EarlyStopping,
    )


def same(a: Any, b: Any) -> bool:
    """Return whether two states are equal, comparing tensors by value, dtype and shape."""
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and bool(torch.equal(a, b))
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)
