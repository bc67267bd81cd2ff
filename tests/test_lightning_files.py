"""callstate.lightning outside the Trainer: reading, restoring and converting Lightning checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lightning_helpers import LIGHTNING_NOISE, NAMESPACES, REFERENCE_STATES, Kit, Tally, kit, same

import callstate

if not NAMESPACES:
    pytest.skip("Lightning is not installed: pip install 'callstate[lightning]'", allow_module_level=True)

import torch

from callstate import lightning as cl

pytestmark = [pytest.mark.filterwarnings(f) for f in LIGHTNING_NOISE]

# ModelCheckpoint(monitor="val_loss")'s key before Lightning 1.9 and after.
OLD_MC_KEY = (
    "ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min', 'every_n_train_steps': 0, "
    "'every_n_epochs': 1, 'train_time_interval': None, 'save_on_train_epoch_end': True}"
)
NEW_MC_KEY = (
    "ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min', 'every_n_train_steps': 0, "
    "'every_n_epochs': 1, 'train_time_interval': None}"
)
ES_STATE = {"wait_count": 2, "stopped_epoch": 0, "best_score": torch.tensor(0.5), "patience": 3}
MC_STATE = {"best_model_score": torch.tensor(0.25), "best_model_path": "epoch=3.ckpt"}

touched: list[str] = []


class Blob:
    """A class torch.load(weights_only=True) refuses; records any attempt to rebuild it."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __setstate__(self, state: dict[str, Any]) -> None:
        touched.append("Blob.__setstate__")
        self.__dict__.update(state)


@pytest.fixture(scope="module", params=NAMESPACES)
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Kit, Path]:
    """A real checkpoint per namespace: the reference Counters, ModelCheckpoint and EarlyStopping."""
    lk = kit(request.param)
    root = tmp_path_factory.mktemp("run")
    callbacks = [
        lk.Counter("epochs"),
        lk.Counter("batches"),
        lk.ModelCheckpoint(monitor="val_loss", dirpath=root, save_last=True),
        lk.EarlyStopping(monitor="val_loss"),
    ]
    lk.trainer(root, callbacks).fit(lk.model())
    return lk, root / "last.ckpt"


@pytest.fixture(params=NAMESPACES)
def lk(request: pytest.FixtureRequest) -> Kit:
    """The test kit of each installed Lightning namespace."""
    return kit(request.param)


def save(tmp_path: Path, checkpoint: dict[Any, Any], name: str = "hand.ckpt") -> Path:
    """Write a hand-made checkpoint with torch.save, as an old Lightning would have."""
    path = tmp_path / name
    torch.save(checkpoint, path)
    return path


# --- read_callback_states ----------------------------------------------------------------------------


def test_read_callback_states_is_the_checkpoints_callbacks(run: tuple[Kit, Path]) -> None:
    """read_callback_states returns the Trainer checkpoint's "callbacks", keys and order unchanged."""
    _, path = run
    expected = torch.load(path, weights_only=True)["callbacks"]
    states = cl.read_callback_states(path)
    assert list(states) == list(expected)
    assert same(states, expected)
    assert {k: states[k] for k in REFERENCE_STATES} == REFERENCE_STATES


def test_weights_only_checkpoint_has_no_callback_states(tmp_path: Path) -> None:
    """A Lightning checkpoint saved with weights only gives no states, not an error."""
    path = save(tmp_path, {"pytorch-lightning_version": "2.6.0", "state_dict": {}})
    assert cl.read_callback_states(path) == {}


def test_unsafe_global_is_named_and_not_run(tmp_path: Path) -> None:
    """Without trusted=True a checkpoint needing a foreign class raises UnsafeCheckpointError naming it."""
    path = save(tmp_path, {"pytorch-lightning_version": "2.6.0", "callbacks": {"Blob": {"b": Blob(7)}}})
    touched.clear()
    with pytest.raises(callstate.UnsafeCheckpointError, match=r"needs the global .*Blob.*trusted=True") as e:
        cl.read_callback_states(path)
    assert e.value.global_name == f"{Blob.__module__}.Blob"
    assert e.value.path == str(path)
    assert touched == [], "nothing from the file may run"
    assert cl.read_callback_states(path, trusted=True)["Blob"]["b"].value == 7


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"not a checkpoint at all", "not a readable torch checkpoint"),
        ([1, 2, 3], "holds a list, not a Lightning checkpoint"),
        ({"state_dict": {}}, "not a Lightning checkpoint"),
        ({"pytorch-lightning_version": "2.6.0", "callbacks": [1]}, "not a mapping"),
    ],
)
def test_unreadable_checkpoints_raise_corrupt_checkpoint_error(
    tmp_path: Path, content: Any, problem: str
) -> None:
    """A file that is not a Lightning checkpoint raises CorruptCheckpointError naming the file."""
    path = tmp_path / "bad.ckpt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(callstate.CorruptCheckpointError, match=problem) as e:
        cl.read_callback_states(path)
    assert e.value.path == str(path)


def test_truncated_checkpoint_raises_corrupt_checkpoint_error(run: tuple[Kit, Path], tmp_path: Path) -> None:
    """A Trainer checkpoint cut short raises CorruptCheckpointError, not a torch internal error."""
    _, path = run
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(callstate.CorruptCheckpointError, match="truncated") as e:
        cl.read_callback_states(cut)
    assert e.value.path == str(cut)


def test_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    """A path that does not exist raises FileNotFoundError."""
    with pytest.raises(FileNotFoundError):
        cl.read_callback_states(tmp_path / "nowhere.ckpt")


# --- legacy keys ----------------------------------------------------------------------------------------


def test_legacy_class_keys_are_recognised(lk: Kit, tmp_path: Path) -> None:
    """States keyed by class (Lightning < 1.5) are read under the class name and restored by class."""
    path = save(
        tmp_path,
        {
            "pytorch-lightning_version": "1.4.9",
            "callbacks": {lk.ModelCheckpoint: dict(MC_STATE), lk.EarlyStopping: dict(ES_STATE)},
        },
    )
    module = lk.ModelCheckpoint.__module__
    with pytest.raises(callstate.UnsafeCheckpointError) as e:
        cl.read_callback_states(path)
    assert e.value.global_name == f"{module}.ModelCheckpoint"

    assert list(cl.read_callback_states(path, trusted=True)) == ["ModelCheckpoint", "EarlyStopping"]
    mc, es = lk.ModelCheckpoint(monitor="val_loss"), lk.EarlyStopping(monitor="val_loss")
    report = cl.restore([mc, es], path, trusted=True, strict=True)
    assert report.restored == (mc.state_key, es.state_key)
    assert dict(report.renamed) == {mc.state_key: "ModelCheckpoint", es.state_key: "EarlyStopping"}
    assert mc.best_model_path == "epoch=3.ckpt" and float(mc.best_model_score) == 0.25
    assert es.wait_count == 2 and float(es.best_score) == 0.5


def test_legacy_class_key_colliding_with_its_name_stays_a_class(lk: Kit, tmp_path: Path) -> None:
    """A class key whose name is already a key is kept as the class, so neither state is lost."""
    states = {lk.EarlyStopping: {"wait_count": 1}, "EarlyStopping": {"wait_count": 2}}
    path = save(tmp_path, {"pytorch-lightning_version": "1.4.9", "callbacks": states})
    read = cl.read_callback_states(path, trusted=True)
    assert read == {lk.EarlyStopping: {"wait_count": 1}, "EarlyStopping": {"wait_count": 2}}
    with pytest.raises(callstate.CallstateError, match="not a str") as e:
        cl.to_callstate(path, tmp_path / "out.callstate", trusted=True)
    assert isinstance(e.value, TypeError)
    assert not (tmp_path / "out.callstate").exists()


def test_pre_1_9_model_checkpoint_key_is_migrated(lk: Kit, tmp_path: Path) -> None:
    """A ModelCheckpoint key from Lightning < 1.9 loses save_on_train_epoch_end, as Lightning migrates it."""
    path = save(tmp_path, {"pytorch-lightning_version": "1.8.6", "callbacks": {OLD_MC_KEY: dict(MC_STATE)}})
    assert list(cl.read_callback_states(path)) == [NEW_MC_KEY]
    mc = lk.ModelCheckpoint(monitor="val_loss")
    assert mc.state_key == NEW_MC_KEY
    report = cl.restore([mc], path, strict=True)
    assert report.restored == (NEW_MC_KEY,)
    assert mc.best_model_path == "epoch=3.ckpt"


def test_post_1_9_keys_and_colliding_migrations_stay_as_saved(tmp_path: Path) -> None:
    """Keys of Lightning >= 1.9 are not rewritten, nor pre-1.9 keys that would collide once rewritten."""
    newer = save(
        tmp_path, {"pytorch-lightning_version": "1.9.0", "callbacks": {OLD_MC_KEY: {}}}, "newer.ckpt"
    )
    assert list(cl.read_callback_states(newer)) == [OLD_MC_KEY]
    twin = OLD_MC_KEY.replace("True}", "False}")
    both = save(tmp_path, {"pytorch-lightning_version": "1.8.0", "callbacks": {OLD_MC_KEY: {}, twin: {}}})
    assert list(cl.read_callback_states(both)) == [OLD_MC_KEY, twin]


# --- restore --------------------------------------------------------------------------------------------


def test_restore_into_a_registry_without_a_trainer(run: tuple[Kit, Path]) -> None:
    """restore() gives each callback its state and keeps the states nobody claimed."""
    lk, path = run
    registry = callstate.CallbackRegistry([lk.Counter("epochs"), lk.Counter("batches")])
    with pytest.warns(callstate.CallstateWarning, match="no callback to claim them"):
        report = cl.restore(registry, path)
    assert report.restored == ("Counter{'what': 'epochs'}", "Counter{'what': 'batches'}")
    assert report.missing == ()
    assert set(report.unexpected) == set(registry.unclaimed)
    assert {k[:13] for k in report.unexpected} == {"ModelCheckpoi", "EarlyStopping"}
    assert registry.state_dict() == {**REFERENCE_STATES, **registry.unclaimed}


def test_strict_restore_refuses_and_changes_nothing(run: tuple[Kit, Path]) -> None:
    """restore(strict=True) raises StateMismatchError listing what does not match; nothing changes."""
    lk, path = run
    counters = [lk.Counter("epochs"), lk.Counter("steps")]
    with pytest.raises(callstate.StateMismatchError, match="nothing was changed") as e:
        cl.restore(counters, path, strict=True)
    assert e.value.missing == ("Counter{'what': 'steps'}",)
    assert "Counter{'what': 'batches'}" in e.value.unexpected
    assert counters[0].state == {"epochs": 0, "batches": 0}


def test_restore_does_not_count_an_empty_state_as_missing(tmp_path: Path) -> None:
    """A callback whose current state is empty needs no saved state, even with strict=True."""

    class Empty:
        def state_dict(self) -> dict[str, int]:
            return {}

        def load_state_dict(self, state: dict[str, int]) -> None:
            raise AssertionError("nothing to load")

    path = save(
        tmp_path, {"pytorch-lightning_version": "2.6.0", "callbacks": {"Tally{'name': 'a'}": {"count": 5}}}
    )
    tally = Tally("a")
    report = cl.restore([tally, Empty()], path, strict=True)
    assert report.restored == ("Tally{'name': 'a'}",) and report.missing == ()
    assert tally.count == 5


def test_restore_is_atomic(tmp_path: Path) -> None:
    """A load_state_dict that raises gives every callback restored before it its previous state."""

    class Refuses:
        def state_dict(self) -> dict[str, int]:
            return {"n": 0}

        def load_state_dict(self, state: dict[str, int]) -> None:
            raise ValueError("no")

    Refuses.__qualname__ = "Refuses"
    states = {"Tally{'name': 'a'}": {"count": 5}, "Refuses": {"n": 1}}
    path = save(tmp_path, {"pytorch-lightning_version": "2.6.0", "callbacks": states})
    tally = Tally("a")
    with pytest.raises(callstate.RestoreError, match="Refuses") as e:
        cl.restore([tally, Refuses()], path)
    assert e.value.key == "Refuses" and e.value.rolled_back == ("Tally{'name': 'a'}",)
    assert tally.count == 0


# --- conversion -----------------------------------------------------------------------------------------


def test_to_callstate_writes_the_same_keys_and_states(run: tuple[Kit, Path], tmp_path: Path) -> None:
    """A Lightning checkpoint's "callbacks" become a callstate file with the same keys and states."""
    _, path = run
    out = tmp_path / "callbacks.callstate"
    keys = cl.to_callstate(path, out)
    expected = torch.load(path, weights_only=True)["callbacks"]
    assert keys == list(expected)
    read = callstate.read(out)
    assert list(read) == list(expected)
    assert same(read, expected)


def test_round_trip_into_a_checkpoint_file(run: tuple[Kit, Path], tmp_path: Path) -> None:
    """from_callstate puts a callstate file's states back into a .ckpt, keys unchanged, others kept."""
    lk, path = run
    out = tmp_path / "callbacks.callstate"
    cl.to_callstate(path, out)
    original = torch.load(path, weights_only=True)
    stripped = dict(original, callbacks={"Other": {"x": 1}})
    target = save(tmp_path, stripped, "stripped.ckpt")

    returned = cl.from_callstate(out, target)
    written = torch.load(target, weights_only=True)
    assert list(written["callbacks"]) == ["Other", *original["callbacks"]]
    assert same(written["callbacks"], {"Other": {"x": 1}, **original["callbacks"]})
    assert same(returned["callbacks"], written["callbacks"])
    assert same(written["state_dict"], original["state_dict"])
    assert list(tmp_path.glob(".*.tmp")) == [], "the atomic write leaves no temp file"

    # The Trainer resumes from the rebuilt file as from the original.
    counters = [lk.Counter("epochs"), lk.Counter("batches")]
    lk.trainer(tmp_path, counters, enable_checkpointing=False).fit(lk.model(), ckpt_path=target)
    assert {c.state_key: c.state for c in counters} == REFERENCE_STATES


def test_from_callstate_into_a_dict_and_to_another_path(tmp_path: Path) -> None:
    """from_callstate updates a checkpoint dict in place, replacing same-key states, and can write it."""
    out = tmp_path / "s.callstate"
    callstate.save({"Tally{'name': 'a'}": {"count": 9}}, out)
    checkpoint: dict[str, Any] = {"pytorch-lightning_version": "2.6.0"}
    assert cl.from_callstate(out, checkpoint) is checkpoint
    assert checkpoint["callbacks"] == {"Tally{'name': 'a'}": {"count": 9}}

    checkpoint["callbacks"] = {"Tally{'name': 'a'}": {"count": 1}, "B": {"n": 2}}
    cl.from_callstate(out, checkpoint, out_path=tmp_path / "new.ckpt")
    assert torch.load(tmp_path / "new.ckpt", weights_only=True)["callbacks"] == {
        "Tally{'name': 'a'}": {"count": 9},
        "B": {"n": 2},
    }


def test_from_callstate_refuses_an_unsafe_checkpoint_and_writes_nothing(tmp_path: Path) -> None:
    """An untrusted target checkpoint needing a foreign class is not loaded, and not rewritten."""
    out = tmp_path / "s.callstate"
    callstate.save({"K": {"n": 1}}, out)
    target = save(tmp_path, {"pytorch-lightning_version": "2.6.0", "callbacks": {}, "extra": Blob(1)})
    before = target.read_bytes()
    with pytest.raises(callstate.UnsafeCheckpointError) as e:
        cl.from_callstate(out, target)
    assert e.value.global_name.endswith("Blob")
    assert target.read_bytes() == before
