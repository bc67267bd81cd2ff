"""callstate.accelerate on real accelerate: save_state/load_state carry the callbacks, by key, safely, atomically."""

from __future__ import annotations

import os
import pickle
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("accelerate")

import torch
from accelerate_helpers import Counter, Cursor, prepared, run_ranks

import callstate
import callstate.accelerate as ca

A = "Counter{'what': 'a'}"
B = "Counter{'what': 'b'}"


class Opaque:
    """A class the data codec does not know: a state holding one is pickled, and loads only trusted."""

    def __init__(self, value: int) -> None:
        self.value = value


class Holder:
    """A callback whose state holds an Opaque."""

    def __init__(self, value: int = 0) -> None:
        self.value = value

    def state_dict(self) -> dict[str, Any]:
        return {"opaque": Opaque(self.value)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = state["opaque"].value


class Refusing(Counter):
    """A Counter whose load_state_dict raises."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise ValueError("cannot take this state")


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    """A save_state directory holding Counter a (3) and Counter b (5), and the model's weights."""
    accelerator, _, _ = prepared(seed=1)
    registry = ca.register(accelerator, [Counter("a", 3), Counter("b", 5)])
    accelerator.save_state(str(tmp_path))
    registry.detach()
    return tmp_path


def test_save_state_writes_a_callstate_file_and_load_state_restores_by_key(saved: Path) -> None:
    """save_state writes callbacks.callstate; load_state restores each callback by key, list reordered."""
    entries = callstate.read(saved / ca.CHECKPOINT_FILE)
    assert entries == {A: {"count": 3}, B: {"count": 5}}  # a world of one: no manifest
    accelerator, model, _ = prepared(seed=2)
    b, a = Counter("b"), Counter("a")
    registry = ca.register(accelerator, [b, a])
    accelerator.load_state(str(saved))
    assert (a.count, b.count) == (3, 5)
    assert registry.last_report == callstate.RestoreReport(restored=(B, A))
    trained = prepared(seed=1)[1]
    assert torch.equal(model.weight, trained.weight)  # accelerate's own restore still happens
    registry.detach()


def test_accelerate_alone_restores_custom_objects_by_position(tmp_path: Path) -> None:
    """With register_for_checkpointing alone, reordered callbacks swap states; the adapter's keys do not."""
    accelerator, _, _ = prepared()
    for cb in (Counter("a", 3), Counter("b", 5)):
        accelerator.register_for_checkpointing(cb)
    accelerator.save_state(str(tmp_path / "alone"))
    a, b = Counter("a"), Counter("b")
    accelerator._custom_objects[:] = [b, a]  # a new run registering them in another order
    accelerator.load_state(str(tmp_path / "alone"))
    assert (a.count, b.count) == (5, 3)  # swapped
    accelerator._custom_objects.clear()


def test_strict_refuses_a_mismatch_and_changes_nothing(saved: Path) -> None:
    """strict=True: a saved state with no callback raises StateMismatchError before anything is loaded."""
    accelerator, model, _ = prepared(seed=2)
    before = model.weight.detach().clone()
    a = Counter("a")
    registry = ca.register(accelerator, [a], strict=True)
    with pytest.raises(callstate.StateMismatchError) as caught:
        accelerator.load_state(str(saved))
    assert caught.value.unexpected == [B] or list(caught.value.unexpected) == [B]
    assert a.count == 0 and registry.last_report is None
    assert torch.equal(model.weight, before)  # load_state stopped before the model
    registry.detach()


def test_not_strict_keeps_unclaimed_states_and_saves_them_again(saved: Path, tmp_path: Path) -> None:
    """A state no callback claims is kept and written by the next save_state, so it comes back later."""
    accelerator, _, _ = prepared()
    a = Counter("a")
    registry = ca.register(accelerator, [a])
    with pytest.warns(callstate.CallstateWarning, match="b"):
        accelerator.load_state(str(saved))
    assert registry.last_report is not None and registry.last_report.unexpected == (B,)
    a.count += 1
    accelerator.save_state(str(tmp_path / "next"))
    registry.detach()
    b = Counter("b")
    again = ca.register(accelerator, [b, Counter("a")], strict=True)
    accelerator.load_state(str(tmp_path / "next"))
    assert b.count == 5 and again[A].count == 4  # type: ignore[attr-defined]
    again.detach()


def test_a_pickled_state_is_refused_unless_trusted(tmp_path: Path) -> None:
    """A state that needs trusted=True is refused by default (UnsafeCheckpointError, nothing run or changed)."""
    accelerator, _, _ = prepared()
    registry = ca.register(accelerator, [Holder(7), Counter("a", 3)])
    with pytest.warns(callstate.PickledStateWarning):
        accelerator.save_state(str(tmp_path))
    registry.detach()
    holder, a = Holder(), Counter("a")
    registry = ca.register(accelerator, [holder, a])
    with pytest.raises(callstate.UnsafeCheckpointError):
        accelerator.load_state(str(tmp_path))
    assert (holder.value, a.count) == (0, 0)
    registry.detach()
    registry = ca.register(accelerator, [holder, a], trusted=True)
    accelerator.load_state(str(tmp_path))
    assert (holder.value, a.count) == (7, 3)
    registry.detach()


def test_a_failing_load_state_dict_restores_no_callback(saved: Path) -> None:
    """A callback whose load_state_dict raises: RestoreError, and every callback keeps its state."""
    accelerator, _, _ = prepared()
    a, b = Counter("a", 1), Refusing("b", 2)
    registry = ca.AcceleratorCallbacks([a])
    registry.register(b, key=B)
    ca.register(accelerator, registry)
    with pytest.raises(callstate.RestoreError):
        accelerator.load_state(str(saved))
    assert (a.count, b.count) == (1, 2)
    registry.detach()


def test_a_directory_saved_without_the_adapter_warns_once_and_restores_nothing(tmp_path: Path) -> None:
    """load_state of a save_state directory without callbacks.callstate: one CallstateWarning saying so and who starts fresh; strict=True raises saying so."""
    accelerator, _, _ = prepared()
    accelerator.save_state(str(tmp_path))
    a = Counter("a", 1)
    registry = ca.register(accelerator, [a])
    with pytest.warns(callstate.CallstateWarning) as caught:
        accelerator.load_state(str(tmp_path))
    said = [str(w.message) for w in caught if issubclass(w.category, callstate.CallstateWarning)]
    assert len(said) == 1, said
    assert f"has no {ca.CHECKPOINT_FILE}" in said[0] and "Restore was partial" in said[0] and A in said[0]
    assert a.count == 1 and registry.last_report == callstate.RestoreReport(missing=(A,))
    registry.detach()
    registry = ca.register(accelerator, [a], strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", callstate.CallstateWarning)  # the error says it all
        with pytest.raises(callstate.StateMismatchError, match=f"has no {ca.CHECKPOINT_FILE}"):
            accelerator.load_state(str(tmp_path))
    registry.detach()


def _remove_weights(directory: Path) -> None:
    (directory / "model.safetensors").unlink()


def _damage_optimizer(directory: Path) -> None:
    (directory / "optimizer.bin").write_bytes(b"garbage")


@pytest.mark.parametrize(
    ("damage", "error"),
    [(_remove_weights, FileNotFoundError), (_damage_optimizer, pickle.UnpicklingError)],
    ids=["weights missing", "optimizer garbage"],
)
def test_a_load_state_failing_after_the_restore_leaves_the_callbacks_restored(
    saved: Path, damage: Any, error: type[Exception]
) -> None:
    """Documented limitation: accelerate calls nothing once it has loaded, so its failure cannot undo the callbacks.

    The guide's way back (state_dict before, discard_unclaimed and load_state_dict on failure) works.
    """
    damage(saved)
    accelerator, _, _ = prepared()
    a, b = Counter("a", 99), Counter("b", 98)
    callbacks = ca.register(accelerator, [a, b])
    before = callbacks.state_dict()
    with pytest.raises(error) as caught:
        accelerator.load_state(str(saved))
    assert not isinstance(caught.value, callstate.CallstateError)  # accelerate's own error
    assert (a.count, b.count) == (3, 5) and callbacks.last_report is not None  # restored: the limitation
    callbacks.discard_unclaimed()
    callbacks.load_state_dict(before)
    assert (a.count, b.count) == (99, 98) and dict(callbacks.unclaimed) == {}
    callbacks.detach()


@pytest.mark.parametrize("link", ["dangling", "loop"])
def test_a_broken_link_for_the_file_is_a_checkpoint_error_before_anything_loads(saved: Path, link: str) -> None:
    """callbacks.callstate a dangling or looping symlink: CheckpointError naming it, strict or not; no model loaded."""
    path = saved / ca.CHECKPOINT_FILE
    path.unlink()
    os.symlink(saved / "elsewhere" / ca.CHECKPOINT_FILE if link == "dangling" else path, path)
    for strict in (False, True):
        accelerator, model, _ = prepared()
        weights = [p.detach().clone() for p in model.parameters()]
        a = Counter("a", 99)
        callbacks = ca.register(accelerator, [a], strict=strict)
        with pytest.raises(callstate.CheckpointError, match="symbolic link") as caught:
            accelerator.load_state(str(saved))
        assert caught.value.path == str(path) and "remove the link" in str(caught.value)
        assert a.count == 99 and callbacks.last_report is None
        assert all(torch.equal(w, p) for w, p in zip(weights, model.parameters(), strict=True))
        callbacks.detach()


def test_one_registry_per_accelerator(saved: Path) -> None:
    """A second register on one Accelerator, or a plain CallbackRegistry, raises a typed error naming the fix."""
    accelerator, _, _ = prepared()
    registry = ca.register(accelerator, [Counter("a")])
    with pytest.raises(callstate.DuplicateKeyError, match="detach"):
        ca.register(accelerator, [Counter("b")])
    with pytest.raises(callstate.DuplicateKeyError, match="detach"):
        ca.register(prepared()[0], registry)
    registry.detach()
    with pytest.raises(callstate.errors.TargetTypeError, match="AcceleratorCallbacks"):
        ca.register(accelerator, callstate.CallbackRegistry([Counter("a")]))
    own = ca.AcceleratorCallbacks()
    own.register(Counter("x"), key="renamed")
    assert ca.register(accelerator, own, strict=True) is own and own.strict
    own.detach()
    accelerator.save_state(str(saved / "after-detach"))
    assert not os.path.exists(saved / "after-detach" / ca.CHECKPOINT_FILE)
    with pytest.raises(ValueError, match="on_world_size_change"):
        ca.register(accelerator, [], on_world_size_change="sometimes")  # type: ignore[arg-type]


# -- a moved project directory ----------------------------------------------------------------------------


@callstate.stateful(state=("last", "best_k"))
class Exports:
    """A callback that remembers the files it exported: paths, as values and as dict keys."""

    def __init__(self) -> None:
        self.last = ""
        self.best_k: dict[str, float] = {}


def test_load_state_of_a_moved_directory_relocates_the_paths_in_the_states(tmp_path: Path) -> None:
    """A project moved with shutil.move resumes with register(relocate=): its states point into the new place."""
    old, new = tmp_path / "old" / "project", tmp_path / "new" / "project"
    accelerator, _, _ = prepared(seed=1)
    exports = Exports()
    exports.last = str(old / "exports" / "step-2.pt")
    exports.best_k = {str(old / "exports" / "step-1.pt"): 0.5, str(old / "exports" / "step-2.pt"): 0.25}
    registry = ca.register(accelerator, [exports, Counter("a", 3)])
    accelerator.save_state(str(old / "checkpoints" / "2"))
    registry.detach()
    new.parent.mkdir()
    shutil.move(str(old), str(new))
    accelerator, _, _ = prepared(seed=2)
    back, counter = Exports(), Counter("a")
    registry = ca.register(accelerator, [back, counter], relocate={old: new})
    accelerator.load_state(str(new / "checkpoints" / "2"))
    registry.detach()
    assert back.last == str(new / "exports" / "step-2.pt") and counter.count == 3
    assert back.best_k == {str(new / "exports" / "step-1.pt"): 0.5, str(new / "exports" / "step-2.pt"): 0.25}
    assert registry.last_report is not None and dict(registry.last_report.relocated) == {"Exports": 3}


@pytest.mark.parametrize(
    ("relocate", "error", "match"),
    [({"/": "/new"}, ValueError, "empty or a root"), ({"/old": 3}, TypeError, "new prefix 3")],
)
def test_a_malformed_relocate_is_refused_by_register_and_nothing_is_hooked(
    saved: Path, relocate: Any, error: type[Exception], match: str
) -> None:
    """register(relocate=) checks the mapping as callstate.load does: the typed error, no hook, no restore."""
    accelerator, _, _ = prepared()
    counter = Counter("a")
    with pytest.raises(error, match=match):
        ca.register(accelerator, [counter], relocate=relocate)
    b = Counter("b")
    own = ca.AcceleratorCallbacks([b])
    ca.register(accelerator, own)
    with pytest.raises(error, match=match):
        ca.register(accelerator, own, relocate=relocate)  # an AcceleratorCallbacks given again: left as it was
    assert own.relocate is None
    with pytest.warns(callstate.CallstateWarning, match=r"partial(.|\n)*Counter\{'what': 'a'\}"):
        accelerator.load_state(str(saved))
    own.detach()
    assert (counter.count, b.count) == (0, 5)  # the refused register hooked nothing

# -- two processes ---------------------------------------------------------------------------------------


def _save_and_load_on_each_rank(directory: str) -> dict[str, Any]:
    import torch.distributed as dist

    accelerator, _, _ = prepared()
    rank = accelerator.process_index
    registry = ca.register(accelerator, [Counter("steps", 7), Cursor("train", 10 * rank + 1)])
    accelerator.save_state(directory)
    registry.detach()
    cursor, counter = Cursor("train"), Counter("steps")
    registry = ca.register(accelerator, [cursor, counter])
    accelerator.load_state(directory)
    report = registry.last_report
    dist.barrier()
    return {
        "backend": dist.get_backend(),
        "world": accelerator.num_processes,
        "states": (counter.count, cursor.position),
        "restored": report.restored if report else None,
    }


@pytest.mark.slow
def test_two_processes_keep_per_rank_state(tmp_path: Path) -> None:
    """Two accelerate processes (gloo, CPU): each rank gets its own per-rank state back; a world of 1 is refused."""
    results = run_ranks(_save_and_load_on_each_rank, 2, str(tmp_path))
    assert [r["states"] for r in results] == [(7, 1), (7, 11)]
    assert {r["backend"] for r in results} == {"gloo"} and {r["world"] for r in results} == {2}
    assert results[0]["restored"] == ("Cursor{'name': 'train'}", "Counter{'what': 'steps'}")
    entries = callstate.read(tmp_path / ca.CHECKPOINT_FILE)
    assert entries["Cursor{'name': 'train'}@rank1"] == {"position": 11}
    accelerator, _, _ = prepared()
    registry = ca.register(accelerator, [Cursor("train"), Counter("steps")])
    with pytest.raises(callstate.errors.RankMismatchError):
        accelerator.load_state(str(tmp_path))
    registry.detach()
    registry = ca.register(accelerator, [Cursor("train"), Counter("steps")], on_world_size_change="broadcast")
    accelerator.load_state(str(tmp_path))
    assert registry["Cursor{'name': 'train'}"].position == 1  # type: ignore[attr-defined]
    registry.detach()


# -- state versions --------------------------------------------------------------------------------------


def counter_v2(migrate: Any = None) -> type:
    """Version 2 of accelerate_helpers.Counter (the same keys): ``{"steps": n}``, no longer ``{"count": n}``.

    Its 1 -> 2 migration is ``migrate`` (default: the rename).
    """

    @callstate.stateful(identity=("what",), state=("steps",), version=2)
    class Counter:
        def __init__(self, what: str, steps: int = 0) -> None:
            self.what, self.steps = what, steps

    Counter.__qualname__ = "Counter"
    callstate.migration(Counter, from_version=1)(migrate or (lambda state: {"steps": state.pop("count")}))
    return Counter


def versions(directory: Path) -> dict[str, int]:
    """Return the version each entry of the directory's callstate file was saved at, by key."""
    return {i.key: i.version for i in callstate.inspect(directory / ca.CHECKPOINT_FILE)}


def test_load_state_migrates_an_older_state_and_the_next_save_state_writes_the_new_version(
    saved: Path, tmp_path: Path
) -> None:
    """Saved by Counter version 1, loaded by version 2: migrated before the models, re-saved at version 2."""
    assert versions(saved) == {A: 1, B: 1}
    accelerator, model, _ = prepared(seed=2)
    cls = counter_v2()
    a, b = cls("a"), cls("b")
    registry = ca.register(accelerator, [a, b], strict=True)
    accelerator.load_state(str(saved))
    assert (a.steps, b.steps) == (3, 5)
    assert registry.last_report is not None and registry.last_report.migrated == {A: (1, 2), B: (1, 2)}
    assert torch.equal(model.weight, prepared(seed=1)[1].weight)
    a.steps += 1
    accelerator.save_state(str(tmp_path / "next"))
    assert versions(tmp_path / "next") == {A: 2, B: 2}
    registry.detach()
    again = cls("a"), cls("b")
    registry = ca.register(accelerator, again, strict=True)
    accelerator.load_state(str(tmp_path / "next"))
    assert (again[0].steps, again[1].steps) == (4, 5) and registry.last_report is not None
    assert registry.last_report.migrated == {}, "saved at version 2: nothing to migrate"
    registry.detach()


def test_a_newer_saved_version_or_a_failing_migration_changes_nothing(saved: Path, tmp_path: Path) -> None:
    """StateVersionError (saved at 2, class at 1) and MigrationError from load_state: no callback, no weight changed."""
    accelerator, model, _ = prepared(seed=2)
    before = model.weight.detach().clone()
    newer = counter_v2()
    registry = ca.register(accelerator, [newer("a", 30), newer("b", 50)])
    accelerator.save_state(str(tmp_path / "v2"))
    registry.detach()
    a, b = Counter("a", 1), Counter("b", 2)
    registry = ca.register(accelerator, [a, b])
    with pytest.raises(callstate.errors.StateVersionError) as too_new:
        accelerator.load_state(str(tmp_path / "v2"))
    assert (too_new.value.key, too_new.value.saved, too_new.value.current) == (A, 2, 1)
    assert (a.count, b.count) == (1, 2) and registry.last_report is None
    assert torch.equal(model.weight, before)
    registry.detach()

    def fails_on_b(state: dict[str, Any]) -> dict[str, Any]:
        if state["count"] == 5:
            raise KeyError("unit")
        return {"steps": state["count"]}

    cls = counter_v2(fails_on_b)
    a, b = cls("a", 1), cls("b", 2)
    registry = ca.register(accelerator, [a, b])
    with pytest.raises(callstate.errors.MigrationError) as failed:
        accelerator.load_state(str(saved))
    assert (failed.value.key, failed.value.step) == (B, (1, 2)) and isinstance(failed.value.__cause__, KeyError)
    assert (a.steps, b.steps) == (1, 2) and registry.last_report is None
    assert torch.equal(model.weight, before)
    registry.detach()


# -- pickling ----------------------------------------------------------------------------------------------


def test_an_accelerator_with_callstate_registered_pickles_and_its_copy_saves_and_loads(tmp_path: Path) -> None:
    """pickle round trip of an Accelerator with register(...): the copy's hooks save and restore the copied callbacks."""
    from accelerate.state import AcceleratorState, GradientState

    # An HF Trainer run earlier in this process leaves accelerate's shared state holding a weak
    # reference, so that no Accelerator pickles, with callstate or not: start from a fresh state.
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    accelerator, _, _ = prepared()
    ca.register(accelerator, [])
    pickle.loads(pickle.dumps(accelerator))  # an empty registry too: accelerate pickles Accelerators
    accelerator, _, _ = prepared()
    original = Counter("a", 3)
    ca.register(accelerator, [original])
    copy = pickle.loads(pickle.dumps(accelerator))
    copy.save_state(str(tmp_path))
    assert callstate.read(tmp_path / ca.CHECKPOINT_FILE)[A] == {"count": 3}
    with pytest.raises(callstate.DuplicateKeyError, match="detach"):
        ca.register(copy, [Counter("b")])  # the copy knows its registry
    original.count = 0
    copy.load_state(str(tmp_path))
    assert original.count == 0  # the copy restored its own Counter, not the original
    copy.save_state(str(tmp_path / "again"))
    assert callstate.read(tmp_path / "again" / ca.CHECKPOINT_FILE)[A] == {"count": 3}


def test_rng_state_registered_brings_the_streams_back_without_accelerates_pickle(tmp_path: Path) -> None:
    """register(accelerator, [RNGState()]): load_state restores every stream, accelerate's random_states pickle removed."""
    import random

    import numpy as np

    accelerator, _, _ = prepared(seed=1)
    data = torch.Generator().manual_seed(5)
    registry = ca.register(accelerator, [callstate.RNGState(generators={"data": data})])
    accelerator.save_state(str(tmp_path))
    registry.detach()

    def draw(g: torch.Generator) -> tuple[float, ...]:
        return random.random(), float(np.random.rand()), float(torch.rand(1)), float(torch.rand(1, generator=g))

    expected = draw(data)
    pickled = list(tmp_path.glob("random_states_*.pkl"))  # accelerate's, loaded with weights_only=False
    assert pickled
    for file in pickled:
        file.unlink()
    accelerator, _, _ = prepared(seed=2)
    random.seed(2)
    np.random.seed(2)
    rng = callstate.RNGState(generators={"data": torch.Generator().manual_seed(9)})
    registry = ca.register(accelerator, [rng], strict=True)
    accelerator.load_state(str(tmp_path))
    registry.detach()
    assert {"python", "numpy", "torch", "generator:data"} <= set(rng.restored)
    assert draw(rng.generators["data"]) == expected
