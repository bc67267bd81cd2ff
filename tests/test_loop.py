"""Tests for callstate.loop: hook dispatch and one-file torch checkpoints."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import pytest
import torch

import callstate
from callstate._support._report import legacy_add_note
from callstate.loop import Callbacks, LoadedCheckpoint, load_checkpoint, save_checkpoint


@callstate.stateful(identity=("name",))
class Recorder:
    """Records the hooks it receives and returns a value from each."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log
        self.seen = 0

    def on_step(self, *, step: int, loss: float) -> str:
        self.log.append(f"{self.name}:{step}:{loss}")
        self.seen += 1
        return f"{self.name}@{step}"

    def state_dict(self) -> dict[str, Any]:
        return {"seen": self.seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen = state["seen"]


class Silent:
    """Has no hooks and no state."""


@callstate.stateful(identity=("name",), state=())
class Failing:
    """Raises in its hook."""

    def __init__(self, name: str) -> None:
        self.name = name

    def on_step(self, **kwargs: Any) -> None:
        raise ValueError("boom")


def test_callbacks_is_a_callback_registry() -> None:
    """Callbacks is a CallbackRegistry, keyed the same way."""
    cbs = Callbacks([Recorder("a", []), Recorder("b", [])])
    assert isinstance(cbs, callstate.CallbackRegistry)
    assert cbs.keys() == ["Recorder{'name': 'a'}", "Recorder{'name': 'b'}"]
    assert repr(cbs) == "Callbacks([\"Recorder{'name': 'a'}\", \"Recorder{'name': 'b'}\"])"


def test_call_returns_results_in_registration_order_and_skips_objects_without_the_hook() -> None:
    """call() calls the hook on each callback that has it, in order, and returns their results."""
    log: list[str] = []
    cbs = Callbacks([Recorder("b", log), Silent(), Recorder("a", log)])
    results = cbs.call("on_step", step=3, loss=0.5)
    assert results == ["b@3", "a@3"], results
    assert log == ["b:3:0.5", "a:3:0.5"], log
    assert cbs.call("on_nothing") == [], "a hook nobody defines returns no results"


def test_call_passes_positional_arguments() -> None:
    """call() forwards positional arguments after the hook name."""

    class Adder:
        def add(self, a: int, b: int) -> int:
            return a + b

    assert Callbacks([Adder()]).call("add", 2, 3) == [5]


def test_call_sees_callbacks_registered_later() -> None:
    """A callback registered after construction is called too, after the earlier ones."""
    log: list[str] = []
    cbs = Callbacks([Recorder("a", log)])
    cbs.register(Recorder("z", log))
    assert cbs.call("on_step", step=1, loss=1.0) == ["a@1", "z@1"]


def test_hook_exception_propagates_unchanged_with_the_key_in_a_note() -> None:
    """An exception from a hook keeps its type and gets a note naming the hook and the key."""
    log: list[str] = []
    after = Recorder("after", log)
    cbs = Callbacks([Recorder("before", log), Failing("f"), after])
    with pytest.raises(ValueError, match="boom") as e:
        cbs.call("on_step", step=7, loss=1.0)
    assert e.value.__notes__ == ["raised by on_step() of callback \"Failing{'name': 'f'}\""], (
        e.value.__notes__
    )
    assert log == ["before:7:1.0"], "callbacks after the failing one are not called"
    assert after.seen == 0


def test_legacy_note_fallback_appends_to_existing_notes() -> None:
    """On Python 3.10 the note goes into __notes__, after notes already there, as add_note would."""
    exc = ValueError("x")
    legacy_add_note(exc, "first")
    legacy_add_note(exc, "second")
    assert exc.__notes__ == ["first", "second"]


def test_non_callable_hook_attribute_is_a_type_error_naming_the_key() -> None:
    """A callback whose hook name is a plain attribute raises TypeError naming its key."""
    rec = Recorder("a", [])
    rec.on_step = 3  # type: ignore[assignment,method-assign]
    with pytest.raises(TypeError, match=r"Callback \"Recorder\{'name': 'a'\}\": its attribute 'on_step'"):
        Callbacks([rec]).call("on_step", step=1, loss=0.0)


@pytest.mark.parametrize("hook", ["", "not a name", 3])
def test_call_rejects_a_hook_that_is_not_a_method_name(hook: Any) -> None:
    """call() with something other than an identifier raises TypeError."""
    with pytest.raises(TypeError, match="the hook must be a method name"):
        Callbacks([]).call(hook)


def test_state_dict_and_load_state_dict_work_on_callbacks() -> None:
    """Callbacks gathers and restores states like a CallbackRegistry."""
    src = Callbacks([Recorder("a", []), Recorder("b", [])])
    src.call("on_step", step=0, loss=0.0)
    src.call("on_step", step=1, loss=0.0)
    fresh = Callbacks([Recorder("b", []), Recorder("a", [])])
    report = fresh.load_state_dict(src.state_dict(), strict=True)
    assert set(report.restored) == {"Recorder{'name': 'a'}", "Recorder{'name': 'b'}"}
    assert [cb.seen for cb in fresh] == [2, 2]  # type: ignore[attr-defined]


def _model_and_optimizer(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.ones(4, 3)).sum().backward()
    optimizer.step()
    return model, optimizer


FORMATS = pytest.mark.parametrize("suffix", [".pt", ".callstate"], ids=["torch", "callstate"])


@FORMATS
def test_save_and_load_checkpoint_round_trip_model_optimizer_callbacks_and_extras(
    tmp_path: Path, suffix: str
) -> None:
    """save_checkpoint/load_checkpoint restore model, optimizer and callbacks and return the rest."""
    path = tmp_path / f"ckpt{suffix}"
    model, optimizer = _model_and_optimizer(0)
    cbs = Callbacks([Recorder("a", [])])
    cbs.call("on_step", step=0, loss=0.0)
    rng = torch.get_rng_state()
    save_checkpoint(path, cbs, model=model, optimizer=optimizer, step=5, rng=rng)

    model2, optimizer2 = _model_and_optimizer(1)
    cbs2 = Callbacks([Recorder("a", [])])
    loaded = load_checkpoint(path, cbs2, model=model2, optimizer=optimizer2, strict=True)
    assert isinstance(loaded, LoadedCheckpoint)
    assert loaded.report.restored == ("Recorder{'name': 'a'}",)
    assert set(loaded.extra) == {"step", "rng"} and loaded.extra["step"] == 5
    assert torch.equal(loaded.extra["rng"], rng), "tensors among the extras come back exactly"
    assert cbs2["Recorder{'name': 'a'}"].seen == 1  # type: ignore[attr-defined]
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(p, q), "model parameters restored exactly"
    s1, s2 = optimizer.state_dict()["state"], optimizer2.state_dict()["state"]
    assert all(torch.equal(s1[i]["exp_avg"], s2[i]["exp_avg"]) for i in s1), "optimizer state restored"


def test_torch_checkpoint_is_lightning_shaped(tmp_path: Path) -> None:
    """A .pt checkpoint is a torch.save dict whose 'callbacks' maps keys to states."""
    path = tmp_path / "ckpt.pt"
    model, _ = _model_and_optimizer(0)
    cbs = Callbacks([Recorder("a", [])])
    save_checkpoint(path, cbs, model=model, step=5)
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"model", "step", "callbacks"}
    assert raw["callbacks"] == {"Recorder{'name': 'a'}": {"seen": 0}}


def test_callstate_checkpoint_has_one_entry_per_callback_and_per_object(tmp_path: Path) -> None:
    """A .callstate checkpoint holds each callback under its key and each object under its name."""
    path = tmp_path / "ckpt.callstate"
    model, _ = _model_and_optimizer(0)
    save_checkpoint(path, Callbacks([Recorder("a", []), Recorder("b", [])]), model=model, step=5)
    assert [e.key for e in callstate.inspect(path)] == [
        "model",
        "step",
        "Recorder{'name': 'a'}",
        "Recorder{'name': 'b'}",
    ]
    assert callstate.read(path)["Recorder{'name': 'b'}"] == {"seen": 0}


def test_load_checkpoint_reads_a_plain_callstate_file(tmp_path: Path) -> None:
    """A file written by callstate.save is a checkpoint of callbacks only."""
    path = tmp_path / "cbs.callstate"
    src = Callbacks([Recorder("a", [])])
    src.call("on_step", step=0, loss=0.0)
    callstate.save(src, path)
    fresh = Callbacks([Recorder("a", [])])
    loaded = load_checkpoint(path, fresh, strict=True)
    assert loaded.report.restored == ("Recorder{'name': 'a'}",) and dict(loaded.extra) == {}
    assert fresh["Recorder{'name': 'a'}"].seen == 1  # type: ignore[attr-defined]


def test_callstate_checkpoint_refuses_an_object_named_like_a_callback(tmp_path: Path) -> None:
    """An object name equal to a callback key would be ambiguous; nothing is written."""
    path = tmp_path / "ckpt.callstate"
    save_checkpoint(path, Callbacks([]), x=1)
    with pytest.raises(TypeError, match="both object names and callback keys"):
        save_checkpoint(path, Callbacks([Recorder("a", [])]), **{"Recorder{'name': 'a'}": 1})
    assert callstate.read(path) == {"x": 1}, "the earlier file is untouched"


def test_unclaimed_callstate_states_are_decoded_into_a_torch_checkpoint(tmp_path: Path) -> None:
    """States kept undecoded from a callstate file are written to a torch file as plain states."""
    src = Callbacks([Recorder("a", []), Recorder("gone", [])])
    callstate.save(src, tmp_path / "cbs.callstate")
    fresh = Callbacks([Recorder("a", [])])
    with pytest.warns(callstate.CallstateWarning, match="no callback to claim them"):
        callstate.load(fresh, tmp_path / "cbs.callstate")
    save_checkpoint(tmp_path / "ckpt.pt", fresh)
    raw = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert raw["callbacks"]["Recorder{'name': 'gone'}"] == {"seen": 0}


@FORMATS
def test_load_checkpoint_without_an_entry_names_it_and_restores_nothing(tmp_path: Path, suffix: str) -> None:
    """Asking for an object the file lacks raises CheckpointError naming it; callbacks stay as they were."""
    path = tmp_path / f"ckpt{suffix}"
    src = Callbacks([Recorder("a", [])])
    src.call("on_step", step=0, loss=0.0)
    save_checkpoint(path, src)
    model, _ = _model_and_optimizer(0)
    fresh = Callbacks([Recorder("a", [])])
    with pytest.raises(callstate.CheckpointError, match=r"has no entry for \['model'\]") as e:
        load_checkpoint(path, fresh, model=model)
    assert e.value.key == "model" and e.value.path == str(path)
    assert fresh["Recorder{'name': 'a'}"].seen == 0  # type: ignore[attr-defined]


def test_save_checkpoint_refuses_an_object_named_callbacks(tmp_path: Path) -> None:
    """'callbacks' is reserved for the registry's states."""
    with pytest.raises(TypeError, match="the name 'callbacks' is the callbacks' own"):
        save_checkpoint(tmp_path / "x.pt", Callbacks([]), callbacks={})
    assert not (tmp_path / "x.pt").exists()


def test_load_checkpoint_refuses_objects_without_load_state_dict(tmp_path: Path) -> None:
    """Only stateful objects can be restored by name; others are read from .extra."""
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, Callbacks([]), step=3)
    with pytest.raises(TypeError, match=r"\['step'\] have no state_dict/load_state_dict"):
        load_checkpoint(path, Callbacks([]), step=3)


class Opaque:
    """A class torch.load(weights_only=True) refuses."""

    def __init__(self) -> None:
        self.value = 1


@FORMATS
def test_load_checkpoint_is_safe_by_default_and_trusted_opts_in(tmp_path: Path, suffix: str) -> None:
    """An arbitrary class in a checkpoint raises UnsafeCheckpointError unless trusted=True."""
    path = tmp_path / f"ckpt{suffix}"
    pickled = pytest.warns(callstate.PickledStateWarning) if suffix == ".callstate" else contextlib.nullcontext()
    with pickled:
        save_checkpoint(path, Callbacks([]), thing=Opaque())
    with pytest.raises(callstate.UnsafeCheckpointError, match="nothing was run") as e:
        load_checkpoint(path, Callbacks([]))
    assert e.value.global_name.endswith("Opaque") and e.value.path == str(path), e.value.global_name
    loaded = load_checkpoint(path, Callbacks([]), trusted=True)
    assert loaded.extra["thing"].value == 1


@FORMATS
def test_load_checkpoint_of_a_truncated_file_is_a_corrupt_checkpoint_error(
    tmp_path: Path, suffix: str
) -> None:
    """A truncated checkpoint raises CorruptCheckpointError naming the file; nothing is restored."""
    path = tmp_path / f"ckpt{suffix}"
    src = Callbacks([Recorder("a", [])])
    src.call("on_step", step=0, loss=0.0)
    save_checkpoint(path, src)
    path.write_bytes(path.read_bytes()[:-40])
    fresh = Callbacks([Recorder("a", [])])
    with pytest.raises(callstate.CorruptCheckpointError, match="truncated") as e:
        load_checkpoint(path, fresh)
    assert e.value.path == str(path)
    assert fresh["Recorder{'name': 'a'}"].seen == 0  # type: ignore[attr-defined]


def test_a_failed_torch_save_leaves_the_previous_checkpoint_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If writing fails midway, the old file is intact and no temporary file is left behind."""
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, Callbacks([]), step=1)
    before = path.read_bytes()

    def broken_save(obj: object, f: Any) -> None:
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, Callbacks([]), step=2)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_callstate_save_and_load_work_on_callbacks(tmp_path: Path) -> None:
    """callstate.save/callstate.load take a Callbacks like any CallbackRegistry."""
    src = Callbacks([Recorder("a", []), Recorder("b", [])])
    src.call("on_step", step=0, loss=0.0)
    callstate.save(src, tmp_path / "cbs.callstate")
    fresh = Callbacks([Recorder("b", []), Recorder("a", [])])
    report = callstate.load(fresh, tmp_path / "cbs.callstate", strict=True)
    assert set(report.restored) == {"Recorder{'name': 'a'}", "Recorder{'name': 'b'}"}
    assert [cb.seen for cb in fresh] == [1, 1]  # type: ignore[attr-defined]


def test_a_torch_checkpoint_whose_callbacks_is_not_a_mapping_names_the_field(tmp_path: Path) -> None:
    """A .pt file whose 'callbacks' is a list gives CorruptCheckpointError naming the file and the field."""
    path = tmp_path / "ckpt.pt"
    torch.save({"callbacks": [1, 2], "step": 3}, path)
    with pytest.raises(callstate.CorruptCheckpointError, match="'callbacks' entry is a list") as e:
        load_checkpoint(path, Callbacks([]))
    assert (e.value.path, e.value.key) == (str(path), "callbacks")


@pytest.mark.parametrize("meta", [{"objects": [["a"]]}, {"objects": "model"}, ["objects"], {"objects": [1]}])
def test_malformed_loop_metadata_names_the_file_and_the_field(tmp_path: Path, meta: Any) -> None:
    """A .callstate checkpoint whose callstate.loop metadata is malformed gives CorruptCheckpointError, not a TypeError."""
    path = tmp_path / "ckpt.callstate"
    callstate.save({"model": {"w": 1}}, path, meta={"callstate.loop": meta})
    with pytest.raises(callstate.CorruptCheckpointError, match=r"metadata .callstate\.loop.") as e:
        load_checkpoint(path, Callbacks([]))
    assert (e.value.path, e.value.key) == (str(path), "callstate.loop")


class _Evil:
    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {self.canary}",))


def test_a_torch_checkpoint_needing_a_blocked_global_is_unsafe_and_runs_nothing(tmp_path: Path) -> None:
    """A .pt file that would call os.system raises UnsafeCheckpointError naming the global; no canary appears."""
    canary = tmp_path / "CANARY"
    path = tmp_path / "ckpt.pt"
    torch.save({"callbacks": {}, "x": _Evil(canary)}, path)
    with pytest.raises(callstate.UnsafeCheckpointError, match="nothing was run") as e:
        load_checkpoint(path, Callbacks([]))
    assert e.value.global_name in ("posix.system", "os.system") and e.value.path == str(path)
    assert not canary.exists()


@FORMATS
def test_a_model_that_does_not_fit_rolls_the_callbacks_and_the_optimizer_back(tmp_path: Path, suffix: str) -> None:
    """A model shape mismatch after the callbacks and optimizer restored puts both back: one transaction."""
    path = tmp_path / f"ckpt{suffix}"
    model, optimizer = _model_and_optimizer(0)
    cbs = Callbacks([Recorder("a", [])])
    cbs.call("on_step", step=0, loss=0.0)
    save_checkpoint(path, cbs, optimizer=optimizer, model=model)

    torch.manual_seed(1)
    other_model = torch.nn.Linear(3, 5)  # another shape: its load_state_dict raises
    _, optimizer2 = _model_and_optimizer(1)
    before = {k: v.clone() for k, v in other_model.state_dict().items()}
    optimizer_before = optimizer2.state_dict()["state"][0]["exp_avg"].clone()
    cbs2 = Callbacks([Recorder("a", [])])
    with pytest.raises(callstate.RestoreError, match=r"Linear\.load_state_dict raised RuntimeError") as e:
        load_checkpoint(path, cbs2, optimizer=optimizer2, model=other_model)
    assert e.value.key == "model"
    assert {"Recorder{'name': 'a'}", "optimizer"} <= set(e.value.rolled_back)
    assert cbs2["Recorder{'name': 'a'}"].seen == 0  # type: ignore[attr-defined]
    assert torch.equal(optimizer2.state_dict()["state"][0]["exp_avg"], optimizer_before)
    assert all(torch.equal(v, before[k]) for k, v in other_model.state_dict().items())


@FORMATS
def test_save_and_load_checkpoint_take_a_list_of_callbacks(tmp_path: Path, suffix: str) -> None:
    """save_checkpoint and load_checkpoint take a plain list of callbacks, as every front end does."""
    path = tmp_path / f"ckpt{suffix}"
    saved = Recorder("a", [])
    saved.seen = 4
    save_checkpoint(path, [saved], step=1)
    fresh = Recorder("a", [])
    assert load_checkpoint(path, [fresh], strict=True).report.restored == ("Recorder{'name': 'a'}",)
    assert fresh.seen == 4
    with pytest.raises(callstate.errors.TargetTypeError, match="dict"):
        save_checkpoint(path, {"Recorder{'name': 'a'}": {"seen": 1}})  # type: ignore[arg-type]


VERSIONS = "callstate:versions"


def _versioned_clock(version: int) -> type:
    @callstate.stateful(identity=("name",), state=("state",), version=version)
    class Clock:
        def __init__(self, name: str) -> None:
            self.name, self.state = name, {}

    Clock.__qualname__ = "Clock"
    callstate.migration(Clock, from_version=1)(lambda s: {**s, "m12": 1})
    callstate.migration(Clock, from_version=2)(lambda s: {**s, "m23": 1})
    return Clock


def test_a_torch_checkpoint_s_top_level_versions_are_the_saved_versions(tmp_path: Path) -> None:
    """Versions beside "callbacks" (where CallstateCallback writes them) apply; a malformed entry is refused."""
    clock = _versioned_clock(3)("c")
    key = callstate.CallbackRegistry([clock]).keys()[0]
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {}, "callbacks": {key: {"state": {"a": 7}}}, VERSIONS: {key: 3}}, path)
    loaded = load_checkpoint(path, [clock], strict=True)
    assert loaded.report.migrated == {} and clock.state == {"a": 7} and VERSIONS not in loaded.extra
    torch.save({"callbacks": {key: {"state": {"a": 7}}}, VERSIONS: "garbage"}, path)
    with pytest.raises(callstate.CorruptCheckpointError, match=r"lightning\.ckpt") as caught:
        load_checkpoint(path, [clock])
    assert caught.value.key == VERSIONS and caught.value.path == str(path)




@pytest.mark.parametrize("suffix", [".pt", ".ckpt"])
def test_states_that_were_one_object_when_saved_are_restored_apart(tmp_path: Path, suffix: str) -> None:
    """torch.load gives two states one object (pickle's memo): an in-place migration changes only its own."""

    @callstate.stateful(identity=("name",), state=("seconds",), version=2)
    class Millis:
        def __init__(self, name: str) -> None:
            self.name, self.seconds = name, 0

    @callstate.migration(Millis, from_version=1)
    def _to_millis(state: dict[str, Any]) -> dict[str, Any]:
        state["seconds"] *= 1000  # in place, as a migration may
        return state

    @callstate.stateful(identity=("name",), state=("seconds",))
    class Seconds:
        def __init__(self, name: str) -> None:
            self.name, self.seconds = name, 0

    millis, plain = Millis("a"), Seconds("b")
    registry = callstate.CallbackRegistry([millis, plain])
    shared = {"seconds": 3}
    path = tmp_path / f"shared{suffix}"
    torch.save({"callbacks": dict.fromkeys(registry.keys(), shared)}, path)
    if suffix == ".pt":
        load_checkpoint(path, registry)
    else:
        from callstate.lightning import restore

        restore(registry, path)
    assert (millis.seconds, plain.seconds) == (3000, 3)



def test_load_checkpoint_relocates_the_callbacks_paths(tmp_path: Path) -> None:
    """load_checkpoint(relocate=) moves paths in the callbacks' states and reports how many."""

    class Paths:
        def __init__(self) -> None:
            self.where: dict[str, Any] = {"dir": "/old/run", "best": ["/old/run/a.pt"]}

        def state_dict(self) -> dict[str, Any]:
            return self.where

        def load_state_dict(self, state: dict[str, Any]) -> None:
            self.where = state

    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, [Paths()])
    into = Paths()
    into.where = {}
    loaded = load_checkpoint(path, [into], relocate={"/old/run": "/new/run"})
    assert into.where == {"dir": "/new/run", "best": ["/new/run/a.pt"]}
    assert list(loaded.report.relocated.values()) == [2]
