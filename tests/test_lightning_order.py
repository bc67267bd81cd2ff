"""CallstateCallback keeps Lightning's restore order: every on_load_checkpoint, then every state, wherever it sits."""

from __future__ import annotations

import ast
import copy
import importlib
import inspect
import shutil
import textwrap
import warnings
from pathlib import Path
from typing import Any

import pytest
from lightning_helpers import LIGHTNING_NOISE, NAMESPACES, Kit, Tally, kit, same

import callstate

if not NAMESPACES:
    pytest.skip("Lightning is not installed: pip install 'callstate[lightning]'", allow_module_level=True)

import torch

from callstate.lightning import CallstateCallback, UnsupportedLightningError

pytestmark = [pytest.mark.filterwarnings(f) for f in LIGHTNING_NOISE]

# The Lightning versions whose internals the adapter's restore was checked against.
TESTED_VERSIONS = {"lightning.pytorch": ("2.6.6",), "pytorch_lightning": ("2.6.6",)}


@pytest.fixture(params=NAMESPACES)
def lk(request: pytest.FixtureRequest) -> Kit:
    """The test kit of each installed Lightning namespace."""
    return kit(request.param)


def ckpt_callbacks(path: Path) -> dict[Any, Any]:
    """Return the ``"callbacks"`` of a checkpoint written by the Trainer (trusted: class keys need it)."""
    return torch.load(path, weights_only=False)["callbacks"]  # type: ignore[no-any-return]


# --- the Lightning internals the adapter relies on ----------------------------------------------------


def _calls(function: Any) -> list[str]:
    """Return the names of the functions ``function`` calls, in source order."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            names.append(func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "?"))
    return names


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_lightning_restores_callbacks_in_the_two_phases_the_adapter_replaces(namespace: str) -> None:
    """restore_callbacks still calls exactly on_load_checkpoint then load_state_dict (else: recheck the adapter)."""
    version = importlib.import_module(namespace).__version__
    where = f"{namespace} {version} (the adapter is tested with {TESTED_VERSIONS[namespace]})"
    connector = importlib.import_module(f"{namespace}.trainer.connectors.checkpoint_connector")
    call = importlib.import_module(f"{namespace}.trainer.call")
    restore = connector._CheckpointConnector.restore_callbacks
    assert _calls(restore) == ["_call_callbacks_on_load_checkpoint", "_call_callbacks_load_state_dict"], (
        f"{where}: _CheckpointConnector.restore_callbacks changed; CallstateCallback replaces it"
    )
    assert "self._loaded_checkpoint" in inspect.getsource(restore), where
    load = inspect.getsource(call._call_callbacks_load_state_dict)
    for part in ("callback.state_key", "callback._legacy_state_key", "if state:", "deepcopy(state)"):
        assert part in load, f"{where}: _call_callbacks_load_state_dict no longer has {part!r}"
    on_load = inspect.getsource(call._call_callbacks_on_load_checkpoint)
    assert 'Be aware that when using `ckpt_path`,"\n' in on_load, f"{where}: the warning the adapter silences"
    assert "callbacks used to create the checkpoint" in on_load, where


def test_a_missing_lightning_internal_fails_at_setup(
    lk: Kit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an internal the restore needs, fit fails at setup with an error naming it and the version."""
    trainer = lk.trainer(tmp_path, [CallstateCallback()], enable_checkpointing=False)
    call = importlib.import_module(f"{lk.namespace}.trainer.call")
    monkeypatch.delattr(call, "_call_callbacks_on_load_checkpoint")
    with pytest.raises(UnsupportedLightningError, match="_call_callbacks_on_load_checkpoint") as e:
        trainer.fit(lk.model())
    assert e.value.internal == f"{lk.namespace}.trainer.call._call_callbacks_on_load_checkpoint"
    assert e.value.version == lk.pl.__version__
    assert isinstance(e.value, callstate.CallstateError)


def test_the_adapter_changes_only_its_own_trainer(lk: Kit, tmp_path: Path) -> None:
    """The restore is replaced on the Trainer's connector instance, once, whatever the number of stages."""
    adapter = CallstateCallback()
    trainer = lk.trainer(tmp_path, [adapter], enable_checkpointing=False, max_epochs=1)
    other = lk.trainer(tmp_path, [], enable_checkpointing=False)
    trainer.fit(lk.model())
    installed = trainer._checkpoint_connector.restore_callbacks
    trainer.validate(trainer.lightning_module)
    assert trainer._checkpoint_connector.restore_callbacks is installed
    assert "restore_callbacks" not in vars(other._checkpoint_connector)


# --- class keys ---------------------------------------------------------------------------------------


def _class_keyed(lk: Kit) -> type:
    """Return, per namespace, a module-level callback keyed by its class (as Lightning < 1.5 did)."""
    name = "ClassKeyed_" + lk.namespace.replace(".", "_")
    if name not in globals():

        class ClassKeyed(lk.Callback):  # type: ignore[name-defined,misc]
            def __init__(self) -> None:
                self.epochs = 0

            @property
            def state_key(self) -> Any:
                return type(self)

            def on_train_epoch_end(self, *args: Any, **kwargs: Any) -> None:
                self.epochs += 1

            def state_dict(self) -> dict[str, int]:
                return {"epochs": self.epochs}

            def load_state_dict(self, state: dict[str, int]) -> None:
                self.epochs = state["epochs"]

        ClassKeyed.__name__ = ClassKeyed.__qualname__ = name
        globals()[name] = ClassKeyed  # torch.save pickles a class key by its module and name
    return globals()[name]  # type: ignore[no-any-return]


def test_a_class_keyed_callback_is_saved_and_resumed_with_the_adapter(lk: Kit, tmp_path: Path) -> None:
    """A callback whose state_key is its class is saved under the class and restored into that callback."""
    cls = _class_keyed(lk)
    tally = Tally("seen")
    mc = lk.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    lk.trainer(tmp_path, [cls(), lk.TallyFeeder(tally), CallstateCallback([tally]), mc]).fit(lk.model())
    last = tmp_path / "ckpt" / "last.ckpt"
    saved = ckpt_callbacks(last)
    assert saved[cls] == {"epochs": 2}
    assert saved["Tally{'name': 'seen'}"] == {"count": 32}

    again, adapter = cls(), CallstateCallback([Tally("seen")])
    callbacks = [again, adapter, lk.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)]
    lk.trainer(tmp_path, callbacks, max_epochs=3).fit(lk.model(), ckpt_path=last, weights_only=False)
    assert again.epochs == 3, "restored to 2, then one more epoch"
    assert adapter.last_report is not None and cls in adapter.last_report.restored
    assert adapter.last_report.missing == () and adapter.last_report.unexpected == ()
    assert ckpt_callbacks(last)[cls] == {"epochs": 3}


# --- Lightning's order --------------------------------------------------------------------------------


def _migrating(lk: Kit) -> tuple[type, type]:
    """Return a callback and a ModelCheckpoint subclass that rename a field of their state on load."""

    class Renamed(lk.Callback):  # type: ignore[name-defined,misc]
        """Version 2 of a callback that saved {"n": ...}; it now reads {"count": ...}."""

        def __init__(self, old: bool = False) -> None:
            self.old, self.count = old, 0

        def on_train_epoch_end(self, *args: Any, **kwargs: Any) -> None:
            self.count += 1

        def state_dict(self) -> dict[str, int]:
            return {"n" if self.old else "count": self.count}

        def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
            state = checkpoint["callbacks"].get(self.state_key)
            if state is not None and "n" in state:
                state["count"] = state.pop("n")

        def load_state_dict(self, state: dict[str, int]) -> None:
            self.count = state["count"]  # a KeyError if the state was not migrated first

    class Checkpoints(lk.ModelCheckpoint):  # type: ignore[name-defined,misc]
        """A ModelCheckpoint that saved its extra field as "label" and now reads it as "tag"."""

        def __init__(self, *args: Any, old: bool = False, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.old, self.tag = old, "first run"

        def state_dict(self) -> dict[str, Any]:
            return {**super().state_dict(), ("label" if self.old else "tag"): self.tag}

        def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
            state = checkpoint["callbacks"].get(self.state_key)
            if state is not None and "label" in state:
                state["tag"] = state.pop("label")

        def load_state_dict(self, state: dict[str, Any]) -> None:
            state = dict(state)
            self.tag = state.pop("tag")
            super().load_state_dict(state)

    Renamed.__qualname__, Checkpoints.__qualname__ = "Renamed", "Checkpoints"
    return Renamed, Checkpoints


@pytest.mark.parametrize("position", ["first", "middle", "last"])
def test_states_migrated_in_on_load_checkpoint_are_restored_migrated(
    lk: Kit, tmp_path: Path, position: str
) -> None:
    """A callback and a ModelCheckpoint subclass that rename a saved field in on_load_checkpoint resume."""
    renamed, checkpoints = _migrating(lk)

    def callbacks(old: bool) -> list[Any]:
        found = [renamed(old=old), checkpoints(dirpath=tmp_path / "ckpt", save_last=True, old=old)]
        at = {"first": 0, "middle": 1, "last": 2}[position]
        return [*found[:at], CallstateCallback(), *found[at:]]

    lk.trainer(tmp_path, callbacks(old=True)).fit(lk.model())
    last = tmp_path / "ckpt" / "last.ckpt"
    assert ckpt_callbacks(last)["Renamed"] == {"n": 2}
    resumed = callbacks(old=False)
    lk.trainer(tmp_path, resumed, max_epochs=3).fit(lk.model(), ckpt_path=last)
    mine, theirs = (cb for cb in resumed if not isinstance(cb, CallstateCallback))
    assert mine.count == 3 and theirs.tag == "first run"
    assert ckpt_callbacks(last)["Renamed"] == {"count": 3}


def test_on_load_checkpoint_sees_every_saved_state_with_get(lk: Kit, tmp_path: Path) -> None:
    """checkpoint["callbacks"].get(key) answers the saved state, before and after the adapter."""

    class Reader(lk.Callback):  # type: ignore[name-defined,misc]
        def __init__(self, name: str) -> None:
            self.name = name
            self.got: dict[str, Any] = {}

        @property
        def state_key(self) -> str:
            return self._generate_state_key(name=self.name)  # type: ignore[no-any-return]

        def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
            states = checkpoint["callbacks"]
            self.got = {
                k: copy.deepcopy(states.get(k)) for k in ("Counter{'what': 'epochs'}", "Tally{'name': 'n'}")
            }

    mc = lk.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    tally = Tally("n", 5)
    lk.trainer(tmp_path, [lk.Counter("epochs"), CallstateCallback([tally]), mc]).fit(lk.model())
    readers = [Reader("before"), Reader("after")]
    mc = lk.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    callbacks = [readers[0], lk.Counter("epochs"), CallstateCallback([Tally("n")]), readers[1], mc]
    lk.trainer(tmp_path, callbacks).fit(lk.model(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    for reader in readers:
        assert reader.got == {
            "Counter{'what': 'epochs'}": {"epochs": 2, "batches": 0},
            "Tally{'name': 'n'}": {"count": 5},
        }


def test_no_lightning_warning_about_states_the_adapter_handles(lk: Kit, tmp_path: Path) -> None:
    """Lightning's "Be aware ... callbacks used to create the checkpoint" is silent for kept and plain states."""
    mc = lk.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    callbacks = [lk.Counter("epochs"), lk.Counter("batches"), CallstateCallback([Tally("n")]), mc]
    lk.trainer(tmp_path, callbacks).fit(lk.model())
    last = tmp_path / "ckpt" / "last.ckpt"

    def warned(callbacks: list[Any]) -> list[warnings.WarningMessage]:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            lk.trainer(tmp_path, callbacks, enable_checkpointing=False).fit(lk.model(), ckpt_path=last)
        return seen

    def lightning_says(seen: list[warnings.WarningMessage]) -> list[str]:
        return [str(w.message) for w in seen if "Be aware" in str(w.message)]

    assert lightning_says(warned([lk.Counter("epochs")])), (
        "Lightning alone warns of the batches Counter, the Tally"
    )
    adapter = CallstateCallback([Tally("n")])
    seen = warned([lk.Counter("epochs"), adapter])
    assert lightning_says(seen) == []
    ours = [str(w.message) for w in seen if issubclass(w.category, callstate.CallstateWarning)]
    assert len(ours) == 1 and "Counter{'what': 'batches'}" in ours[0], ours
    assert adapter.last_report is not None
    assert "Counter{'what': 'batches'}" in adapter.last_report.unexpected
    assert "Tally{'name': 'n'}" in adapter.last_report.restored


# --- the same final states as Lightning alone, wherever the adapter is -----------------------------------


def _builtins(lk: Kit, group: str, root: Path) -> list[Any]:
    """Return fresh built-in stateful callbacks of one group (groups that average weights run apart)."""
    cbs = importlib.import_module(f"{lk.namespace}.callbacks")
    mc = lk.ModelCheckpoint(monitor="val_loss", dirpath=root / "ckpt", save_last=True, save_top_k=2)
    if group == "monitors":
        return [
            mc,
            lk.EarlyStopping(monitor="val_loss", patience=5),
            cbs.Timer(),
            cbs.BackboneFinetuning(unfreeze_backbone_at_epoch=1),
        ]
    if group == "swa":
        return [cbs.StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=1), mc]
    return [cbs.EMAWeightAveraging(), mc]


def _backbone_model(lk: Kit) -> Any:
    """Return a seeded LightningModule with a backbone, as BackboneFinetuning needs."""

    class WithBackbone(lk.TinyModule):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            super().__init__()
            self.backbone = torch.nn.Linear(4, 4)
            self.layer = torch.nn.Linear(4, 1)

        def forward(self, x: Any) -> Any:
            return self.layer(self.backbone(x))

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self(x), y))

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.01)

    torch.manual_seed(0)
    return WithBackbone()


def _placed(callbacks: list[Any], adapter: Any, position: str) -> list[Any]:
    at = {"first": 0, "middle": len(callbacks) // 2, "last": len(callbacks)}[position]
    return [*callbacks[:at], adapter, *callbacks[at:]]


def _states(callbacks: list[Any]) -> dict[Any, Any]:
    out = {}
    for cb in callbacks:
        state = copy.deepcopy(cb.state_dict())
        if "time_elapsed" in state:  # a Timer's clock: only its saved part is reproducible
            state = {"time_elapsed": sorted(state["time_elapsed"])}
        out[cb.state_key] = state
    return out


def _resume(lk: Kit, root: Path, group: str, first: Path, adapter: Any, position: str) -> dict[str, Any]:
    """Resume from a copy of the first run's checkpoints; return restored and final states."""
    shutil.rmtree(root / "ckpt", ignore_errors=True)
    shutil.copytree(first, root / "ckpt")
    builtins, probe = _builtins(lk, group, root), lk.Probe()
    callbacks = [*builtins, probe] if adapter is None else _placed([*builtins, probe], adapter, position)
    trainer = lk.trainer(root, callbacks, max_epochs=3)
    trainer.fit(_backbone_model(lk), ckpt_path=root / "ckpt" / "last.ckpt")
    restored = {k: v for k, v in (probe.at_fit_start or {}).items() if k in {cb.state_key for cb in builtins}}
    return {
        "restored": restored,
        "final": _states(builtins),
        "saved": ckpt_callbacks(root / "ckpt" / "last.ckpt"),
    }


@pytest.mark.parametrize("position", ["first", "middle", "last"])
@pytest.mark.parametrize("group", ["monitors", "swa", "ema"])
def test_builtin_callbacks_end_as_with_lightning_alone(
    lk: Kit, tmp_path: Path, group: str, position: str
) -> None:
    """With the adapter first, in the middle or last, every built-in callback ends as with Lightning alone."""
    tallies = [Tally("seen")]
    extra = [lk.TallyFeeder(tallies[0]), lk.Counter("batches")]
    first_run = _placed([*_builtins(lk, group, tmp_path), *extra], CallstateCallback(tallies), position)
    lk.trainer(tmp_path, first_run).fit(_backbone_model(lk))
    shutil.copytree(tmp_path / "ckpt", tmp_path / "first")

    alone = _resume(lk, tmp_path, group, tmp_path / "first", None, position)
    tally = Tally("seen")
    adapter = CallstateCallback([tally])
    with pytest.warns(callstate.CallstateWarning, match=r"Counter\{'what': 'batches'\}"):
        ours = _resume(lk, tmp_path, group, tmp_path / "first", adapter, position)

    assert same(ours["restored"], alone["restored"])
    assert same(ours["final"], alone["final"])
    # What Lightning alone loses: the plain object's state and the state nobody claimed.
    assert tally.count == 32
    assert (
        "Tally{'name': 'seen'}" not in alone["saved"] and "Counter{'what': 'batches'}" not in alone["saved"]
    )
    assert ours["saved"]["Tally{'name': 'seen'}"] == {"count": 32}
    assert ours["saved"]["Counter{'what': 'batches'}"] == {"batches": 32, "epochs": 0}
    assert {k: v for k, v in ours["saved"].items() if k in alone["saved"]}.keys() == alone["saved"].keys()


def test_an_adapter_taken_out_of_the_trainer_leaves_lightning_restoring(lk: Kit, tmp_path: Path) -> None:
    """Once the adapter is no longer among the Trainer's callbacks, Lightning's own restore runs again."""
    mc = lk.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    adapter = CallstateCallback()
    trainer = lk.trainer(tmp_path, [lk.Counter("epochs"), adapter, mc], max_epochs=1)
    trainer.fit(lk.model())
    trainer.callbacks.remove(adapter)
    counter = trainer.callbacks[0]
    counter.state["epochs"] = 0
    trainer._checkpoint_connector.resume_start(tmp_path / "ckpt" / "last.ckpt")
    trainer._checkpoint_connector.restore_callbacks()
    assert counter.state["epochs"] == 1
    assert adapter.last_report is None, "the adapter took no part"
