"""callstate.lightning in a real Lightning Trainer: keys, the CallstateCallback adapter, resume."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from lightning_helpers import LIGHTNING_NOISE, NAMESPACES, REFERENCE_STATES, Kit, Tally, kit, same

import callstate

if not NAMESPACES:
    pytest.skip("Lightning is not installed: pip install 'callstate[lightning]'", allow_module_level=True)

import torch

from callstate.lightning import CallstateCallback

pytestmark = [pytest.mark.filterwarnings(f) for f in LIGHTNING_NOISE]


@pytest.fixture(params=NAMESPACES)
def lk(request: pytest.FixtureRequest) -> Kit:
    """The test kit of each installed Lightning namespace."""
    return kit(request.param)


def ckpt_callbacks(path: Path) -> dict[str, Any]:
    """Return the ``"callbacks"`` of a checkpoint written by the Trainer."""
    return torch.load(path, weights_only=True)["callbacks"]  # type: ignore[no-any-return]


def reference_run(lk: Kit, root: Path, *extra: Any) -> tuple[Path, list[Any]]:
    """Fit 2 epochs of 16 batches with the reference Counters, ModelCheckpoint and EarlyStopping."""
    callbacks = [
        lk.Counter("epochs"),
        lk.Counter("batches"),
        lk.ModelCheckpoint(monitor="val_loss", dirpath=root / "first", save_last=True),
        lk.EarlyStopping(monitor="val_loss"),
        *extra,
    ]
    lk.trainer(root, callbacks).fit(lk.model())
    return root / "first" / "last.ckpt", callbacks


def fresh(lk: Kit, root: Path, *, without: str | None = None) -> list[Any]:
    """Return new instances of the reference callbacks (optionally without one Counter).

    The ModelCheckpoint writes where the first run's did: with another dirpath, Lightning's
    ModelCheckpoint itself would drop most of its restored state.
    """
    counters = [lk.Counter(what) for what in ("epochs", "batches") if what != without]
    return [
        *counters,
        lk.ModelCheckpoint(monitor="val_loss", dirpath=root / "first", save_last=True),
        lk.EarlyStopping(monitor="val_loss"),
    ]


# --- keys ------------------------------------------------------------------------------------------


def test_callstate_callback_is_a_callback_of_every_installed_namespace() -> None:
    """One CallstateCallback class is accepted by the Trainer of each installed namespace."""
    for namespace in NAMESPACES:
        assert isinstance(CallstateCallback(), kit(namespace).Callback), namespace


def test_a_plain_object_in_the_trainers_callbacks_gets_an_error_naming_callstate_callback(tmp_path: Path) -> None:
    """A stateful non-Callback in Trainer(callbacks=...): a TargetTypeError saying CallstateCallback([...]), per namespace."""
    for namespace in NAMESPACES:
        lk = kit(namespace)
        with pytest.raises(callstate.errors.TargetTypeError, match=r"CallstateCallback\(\[obj\]\)") as caught:
            lk.trainer(tmp_path, [Tally("steps"), CallstateCallback()])
        assert caught.value.got is Tally and "Tally" in str(caught.value)


ONE_NAMESPACE = textwrap.dedent(
    """
    import importlib, sys, warnings
    sys.path.insert(0, sys.argv[1])
    warnings.simplefilter("ignore")
    from lightning_helpers import kit

    def adapter_with(blocked):
        for name in ("lightning.pytorch", "pytorch_lightning"):
            if name in blocked:
                sys.modules[name] = None  # as if not installed
            elif sys.modules.get(name, 1) is None:
                del sys.modules[name]
        sys.modules.pop("callstate.lightning", None)
        try:
            return importlib.import_module("callstate.lightning").CallstateCallback
        except ImportError as exc:
            print("ImportError:", exc)

    for namespace, blocked in (("pytorch_lightning", ["lightning.pytorch"]), ("lightning.pytorch", ["pytorch_lightning"])):
        CallstateCallback = adapter_with(blocked)
        lk = kit(namespace)
        bases = [c.__module__ for c in CallstateCallback.__mro__ if c.__name__ == "Callback"]
        counter = lk.Counter("epochs")
        trainer = lk.trainer(sys.argv[2], [counter, CallstateCallback()], enable_checkpointing=False)
        trainer.fit(lk.model())
        print(namespace, bases, counter.state)
    adapter_with(["lightning.pytorch", "pytorch_lightning"])
    """
)


@pytest.mark.slow
def test_works_with_whichever_namespace_is_installed(tmp_path: Path) -> None:
    """With one namespace installed the adapter is its Callback; with none, the ImportError says what to do."""
    tests = str(Path(__file__).parent)
    done = subprocess.run(
        [sys.executable, "-c", ONE_NAMESPACE, tests, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith(("lightning", "pytorch", "Import"))]
    assert lines == [
        "pytorch_lightning ['pytorch_lightning.callbacks.callback'] {'epochs': 2, 'batches': 0}",
        "lightning.pytorch ['lightning.pytorch.callbacks.callback'] {'epochs': 2, 'batches': 0}",
        "ImportError: callstate.lightning needs Lightning >= 2.0 (lightning.pytorch or pytorch_lightning), "
        "and neither is installed: pip install 'callstate[lightning]'.",
    ], done.stdout


def test_decorated_lightning_callback_is_saved_under_callstate_key(lk: Kit, tmp_path: Path) -> None:
    """A plain Trainer saves an @stateful(identity=...) Lightning Callback under the registry's key."""

    @callstate.stateful(identity=("what", "every"), state=("seen",))
    class Meter(lk.Callback):  # type: ignore[name-defined,misc]
        def __init__(self, what: str, every: int) -> None:
            self.what, self.every, self.seen = what, every, 0

        def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
            self.seen += 1

    Meter.__qualname__ = "Meter"
    meters = [Meter("loss", 1), Meter("loss", 2), Meter("acc", 1)]
    trainer = lk.trainer(tmp_path, meters, enable_checkpointing=False)
    trainer.fit(lk.model())
    trainer.save_checkpoint(tmp_path / "plain.ckpt")

    saved = ckpt_callbacks(tmp_path / "plain.ckpt")
    registry = callstate.CallbackRegistry(meters)
    assert list(saved) == registry.keys(), "Lightning and callstate key the callbacks differently"
    assert registry.keys()[1] == "Meter{'what': 'loss', 'every': 2}"
    assert all(state == {"seen": 32} for state in saved.values())


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"monitor": "val_loss"},
        {"monitor": "val_loss", "mode": "max", "every_n_epochs": 3},
        {"monitor": "train_loss", "every_n_train_steps": 7, "save_top_k": 2},
        {"train_time_interval": None, "save_last": True, "filename": "{epoch}"},
    ],
)
def test_model_checkpoint_key_matches_lightning(lk: Kit, kwargs: dict[str, Any]) -> None:
    """callstate.state_key of a ModelCheckpoint is its own state_key, whatever its arguments."""
    cb = lk.ModelCheckpoint(**kwargs)
    assert callstate.state_key(cb) == cb.state_key
    assert callstate.CallbackRegistry([cb]).keys() == [cb.state_key]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"monitor": "val_loss"},
        {"monitor": "val_loss", "mode": "max"},
        {"monitor": "train_loss", "patience": 7, "min_delta": 0.5, "check_finite": False},
    ],
)
def test_early_stopping_key_matches_lightning(lk: Kit, kwargs: dict[str, Any]) -> None:
    """callstate.state_key of an EarlyStopping is its own state_key, whatever its arguments."""
    cb = lk.EarlyStopping(**kwargs)
    assert callstate.state_key(cb) == cb.state_key
    assert callstate.CallbackRegistry([cb]).keys() == [cb.state_key]


# --- the reference run and resume --------------------------------------------------------------------


def test_reference_run_saves_the_reference_numbers(lk: Kit, tmp_path: Path) -> None:
    """2 epochs of 16 batches save exactly the documented Counter states, next to MC and ES."""
    last, callbacks = reference_run(lk, tmp_path, CallstateCallback())
    saved = ckpt_callbacks(last)
    assert {k: saved[k] for k in REFERENCE_STATES} == REFERENCE_STATES
    assert set(saved) == set(REFERENCE_STATES) | {callbacks[2].state_key, callbacks[3].state_key}


def test_resume_restores_every_state_exactly(lk: Kit, tmp_path: Path) -> None:
    """Resuming with ckpt_path gives every callback exactly its saved state, each loaded once."""
    last, _ = reference_run(lk, tmp_path, CallstateCallback())
    saved = ckpt_callbacks(last)
    callbacks = fresh(lk, tmp_path)
    received: list[tuple[str, Any]] = []
    for cb in callbacks:
        original = cb.load_state_dict

        def recording(state: Any, *, _cb: Any = cb, _original: Any = original) -> None:
            received.append((_cb.state_key, state))
            _original(state)

        cb.load_state_dict = recording
    probe, adapter = lk.Probe(), CallstateCallback()
    lk.trainer(tmp_path, [*callbacks, probe, adapter]).fit(lk.model(), ckpt_path=last)

    assert sorted(k for k, _ in received) == sorted(saved), "each callback must be loaded exactly once"
    assert all(same(state, saved[key]) for key, state in received)
    assert probe.at_fit_start is not None
    now = {k: v for k, v in probe.at_fit_start.items() if k in saved}
    # ModelCheckpoint.load_state_dict does not take current_score back (Lightning's choice).
    now[callbacks[2].state_key]["current_score"] = saved[callbacks[2].state_key]["current_score"]
    assert now.keys() == saved.keys()
    assert all(same(now[k], saved[k]) for k in saved), (now, saved)
    assert adapter.last_report is not None
    assert set(adapter.last_report.restored) == set(saved)
    assert adapter.last_report.missing == () and adapter.last_report.unexpected == ()


def test_callbacks_after_the_adapter_still_read_every_saved_state(lk: Kit, tmp_path: Path) -> None:
    """on_load_checkpoint hooks that run after the adapter's see the checkpoint's "callbacks" whole."""

    class Reader(lk.Callback):  # type: ignore[name-defined,misc]
        def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
            states = checkpoint["callbacks"]
            self.seen = {key: states[key] for key in states}
            self.epochs = states["Counter{'what': 'epochs'}"]

    last, _ = reference_run(lk, tmp_path, CallstateCallback())
    reader = Reader()
    lk.trainer(tmp_path, [*fresh(lk, tmp_path), CallstateCallback(), reader]).fit(lk.model(), ckpt_path=last)
    assert same(reader.seen, ckpt_callbacks(last))
    assert reader.epochs == {"batches": 0, "epochs": 2}


def test_resume_without_a_counter_keeps_its_state_with_the_adapter(lk: Kit, tmp_path: Path) -> None:
    """A state no callback claims on resume is written back, unchanged, at the next save."""
    last, _ = reference_run(lk, tmp_path, CallstateCallback())
    adapter = CallstateCallback()
    callbacks = [*fresh(lk, tmp_path, without="batches"), adapter]
    with pytest.warns(callstate.CallstateWarning, match=r"Counter\{'what': 'batches'\}"):
        lk.trainer(tmp_path, callbacks, max_epochs=3).fit(lk.model(), ckpt_path=last)

    saved = ckpt_callbacks(last)
    assert saved["Counter{'what': 'batches'}"] == {"batches": 32, "epochs": 0}
    assert saved["Counter{'what': 'epochs'}"] == {"batches": 0, "epochs": 3}
    assert adapter.last_report is not None
    assert adapter.last_report.unexpected == ("Counter{'what': 'batches'}",)
    assert dict(adapter.registry.unclaimed) == {"Counter{'what': 'batches'}": {"batches": 32, "epochs": 0}}


def test_lenient_resume_reports_a_callback_with_no_saved_state(lk: Kit, tmp_path: Path) -> None:
    """A Trainer callback with a state but none saved is named in a CallstateWarning and the report."""
    last, _ = reference_run(lk, tmp_path, CallstateCallback())
    adapter = CallstateCallback()
    callbacks = [*fresh(lk, tmp_path), lk.Counter("steps"), adapter]
    with pytest.warns(callstate.CallstateWarning, match=r"no saved state:\n  \"Counter\{'what': 'steps'\}\"") as w:
        lk.trainer(tmp_path, callbacks).fit(lk.model(), ckpt_path=last)
    ours = [x for x in w if issubclass(x.category, callstate.CallstateWarning)]
    assert [x.filename for x in ours] == [__file__]  # points at the trainer.fit line, not inside Lightning
    assert adapter.last_report is not None
    assert adapter.last_report.missing == ("Counter{'what': 'steps'}",)
    assert len(adapter.last_report.restored) == 4


def test_plain_lightning_drops_the_unclaimed_state(lk: Kit, tmp_path: Path) -> None:
    """Without the adapter, the same resume and save loses the missing Counter's state."""
    last, _ = reference_run(lk, tmp_path)
    callbacks = fresh(lk, tmp_path, without="batches")
    lk.trainer(tmp_path, callbacks, max_epochs=3).fit(lk.model(), ckpt_path=last)

    saved = ckpt_callbacks(last)
    assert "Counter{'what': 'batches'}" not in saved
    assert saved["Counter{'what': 'epochs'}"] == {"batches": 0, "epochs": 3}


def test_plain_objects_are_saved_and_restored_by_the_adapter(lk: Kit, tmp_path: Path) -> None:
    """Non-Lightning objects given to the adapter are saved in "callbacks" and restored on resume."""
    tallies = [Tally("seen"), Tally("kept")]
    last, _ = reference_run(lk, tmp_path, lk.TallyFeeder(tallies[0]), CallstateCallback(tallies))
    saved = ckpt_callbacks(last)
    assert saved["Tally{'name': 'seen'}"] == {"count": 32}
    assert saved["Tally{'name': 'kept'}"] == {"count": 0}
    assert {k: saved[k] for k in REFERENCE_STATES} == REFERENCE_STATES

    again = [Tally("seen"), Tally("kept")]
    registry = callstate.CallbackRegistry(again)
    callbacks = [*fresh(lk, tmp_path), lk.TallyFeeder(again[0]), CallstateCallback(registry)]
    lk.trainer(tmp_path, callbacks, max_epochs=3).fit(lk.model(), ckpt_path=last)
    assert again[0].count == 48, "restored to 32, then one more epoch of 16 batches"
    assert ckpt_callbacks(last)["Tally{'name': 'seen'}"] == {"count": 48}


def test_key_shared_with_a_trainer_callback_fails_when_fit_starts(lk: Kit, tmp_path: Path) -> None:
    """An adapter object keyed like a Trainer callback raises DuplicateKeyError before any training."""
    registry = callstate.CallbackRegistry()
    intruder = Tally("x")
    registry.register(intruder, key="Counter{'what': 'epochs'}")
    counter = lk.Counter("epochs")
    trainer = lk.trainer(tmp_path, [counter, CallstateCallback(registry)])
    with pytest.raises(
        callstate.DuplicateKeyError, match=r"Counter\{'what': 'epochs'\}.*Trainer callback"
    ) as e:
        trainer.fit(lk.model())
    assert e.value.key == "Counter{'what': 'epochs'}"
    assert e.value.callbacks == (intruder, counter)
    assert counter.state == {"epochs": 0, "batches": 0}, "no training step ran"


def test_two_adapters_in_one_trainer_are_refused(lk: Kit, tmp_path: Path) -> None:
    """A Trainer with two CallstateCallbacks raises DuplicateKeyError when fit starts."""
    trainer = lk.trainer(tmp_path, [CallstateCallback(), CallstateCallback()])
    with pytest.raises(callstate.DuplicateKeyError, match="2 CallstateCallback") as e:
        trainer.fit(lk.model())
    assert e.value.key == "CallstateCallback"


# --- strict ---------------------------------------------------------------------------------------------


def test_strict_resume_fails_on_an_unexpected_state(lk: Kit, tmp_path: Path) -> None:
    """strict=True refuses a resume whose checkpoint holds a state no Trainer callback claims."""
    last, _ = reference_run(lk, tmp_path, CallstateCallback())
    callbacks = fresh(lk, tmp_path, without="batches")
    trainer = lk.trainer(tmp_path, [*callbacks, CallstateCallback(strict=True)], max_epochs=3)
    with pytest.raises(callstate.StateMismatchError, match="nothing was changed") as e:
        trainer.fit(lk.model(), ckpt_path=last)
    assert e.value.unexpected == ("Counter{'what': 'batches'}",)
    assert e.value.missing == ()
    assert callbacks[0].state == {"epochs": 0, "batches": 0}, "strict refusal must change nothing"


def test_strict_resume_fails_on_a_missing_state_of_a_trainer_callback(lk: Kit, tmp_path: Path) -> None:
    """strict=True refuses a resume when a Trainer callback with a state has none saved."""
    last, _ = reference_run(lk, tmp_path, CallstateCallback())
    steps = lk.Counter("steps")
    callbacks = [*fresh(lk, tmp_path), steps, CallstateCallback(strict=True)]
    with pytest.raises(callstate.StateMismatchError, match=r"Counter\{'what': 'steps'\}") as e:
        lk.trainer(tmp_path, callbacks, max_epochs=3).fit(lk.model(), ckpt_path=last)
    assert e.value.missing == ("Counter{'what': 'steps'}",)
    assert e.value.unexpected == ()


def test_strict_resume_accepts_a_callback_whose_state_is_empty(lk: Kit, tmp_path: Path) -> None:
    """A callback with an empty state, which Lightning never saves, does not count as missing."""

    class History(lk.Callback):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            self.seen: dict[str, int] = {}

        def state_dict(self) -> dict[str, int]:
            return dict(self.seen)

        def load_state_dict(self, state: dict[str, int]) -> None:
            self.seen = dict(state)

    History.__qualname__ = "History"
    last, _ = reference_run(lk, tmp_path, History(), CallstateCallback())
    assert "History" not in ckpt_callbacks(last)
    adapter = CallstateCallback(strict=True)
    lk.trainer(tmp_path, [*fresh(lk, tmp_path), History(), adapter]).fit(lk.model(), ckpt_path=last)
    assert adapter.last_report is not None and adapter.last_report.missing == ()


# --- transactional restore ----------------------------------------------------------------------------


def test_failing_load_state_dict_leaves_every_callback_as_it_was(lk: Kit, tmp_path: Path) -> None:
    """A load_state_dict that raises in Trainer.fit rolls every restored callback back, plain ones too."""

    class Fragile(lk.Callback):  # type: ignore[name-defined,misc]
        def __init__(self, fail: bool) -> None:
            self.fail, self.n = fail, 0

        def on_train_epoch_end(self, *args: Any, **kwargs: Any) -> None:
            self.n += 1

        def state_dict(self) -> dict[str, int]:
            return {"n": self.n}

        def load_state_dict(self, state: dict[str, int]) -> None:
            if self.fail:
                raise ValueError("cannot take this state")
            self.n = state["n"]

    Fragile.__qualname__ = "Fragile"
    tally = Tally("seen")
    last, _ = reference_run(
        lk, tmp_path, Fragile(fail=False), lk.TallyFeeder(tally), CallstateCallback([tally])
    )

    again = Tally("seen")
    callbacks = fresh(lk, tmp_path)
    before = [cb.state_dict() for cb in callbacks]
    trainer = lk.trainer(tmp_path, [*callbacks, Fragile(fail=True), CallstateCallback([again])], max_epochs=3)
    with pytest.raises(callstate.RestoreError, match=r"Fragile\.load_state_dict raised ValueError") as e:
        trainer.fit(lk.model(), ckpt_path=last)
    assert e.value.key == "Fragile"
    assert isinstance(e.value.__cause__, ValueError)
    assert set(e.value.rolled_back) >= {"Counter{'what': 'epochs'}", "Counter{'what': 'batches'}"}
    assert all(same(cb.state_dict(), b) for cb, b in zip(callbacks, before, strict=True))
    assert again.count == 0


class CountedKey:
    """A plain object whose key computations are counted."""

    computed = 0

    def __init__(self, i: int) -> None:
        self.i = i

    @property
    def state_key(self) -> str:
        type(self).computed += 1
        return f"CountedKey[{self.i}]"

    def state_dict(self) -> dict[str, int]:
        return {"i": self.i}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.i = state["i"]


def test_a_checkpoint_save_computes_each_key_once() -> None:
    """on_save_checkpoint gathers the states and the per-rank keys with one key computation per object."""
    adapter = CallstateCallback([CountedKey(i) for i in range(50)])

    trainer = type("Trainer", (), {})()
    trainer.callbacks = [adapter]
    checkpoint: dict[str, Any] = {"callbacks": {}}
    CountedKey.computed = 0
    adapter.on_save_checkpoint(trainer, None, checkpoint)
    assert CountedKey.computed == 50
    assert checkpoint["callbacks"] == {f"CountedKey[{i}]": {"i": i} for i in range(50)}
