"""State versions in real Lightning runs: an old plain-Lightning checkpoint migrates on resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lightning_helpers import LIGHTNING_NOISE, NAMESPACES, Kit, kit

import callstate

if not NAMESPACES:
    pytest.skip("Lightning is not installed: pip install 'callstate[lightning]'", allow_module_level=True)

import torch

from callstate import lightning as cl
from callstate.lightning import CallstateCallback

pytestmark = [pytest.mark.filterwarnings(f) for f in LIGHTNING_NOISE]
VERSIONS = "callstate:versions"


@pytest.fixture(params=NAMESPACES)
def lk(request: pytest.FixtureRequest) -> Kit:
    """The test kit of each installed Lightning namespace."""
    return kit(request.param)


def meter_class(lk: Kit, version: int) -> type:
    """A Lightning Callback counting batches: ``{"count": n}`` at version 1, ``{"batches": n}`` at 2."""
    field = "count" if version == 1 else "batches"

    class Meter(lk.Callback):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            self.n = 0

        def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
            self.n += 1

        def state_dict(self) -> dict[str, int]:
            return {field: self.n}

        def load_state_dict(self, state: dict[str, int]) -> None:
            self.n = state[field]  # a version 1 state here would be a KeyError

    Meter.__qualname__ = "Meter"
    if version == 1:
        return Meter
    decorated: type = callstate.stateful(version=version)(Meter)
    callstate.migration(decorated, from_version=1)(lambda state: {"batches": state.pop("count")})
    return decorated


def gauge_class(version: int) -> type:
    """A plain object: ``{"level": float}`` at version 1, ``{"percent": float}`` at 2."""
    field = "level" if version == 1 else "percent"

    @callstate.stateful(identity=("name",), state=(field,), version=version)
    class Gauge:
        def __init__(self, name: str, value: float = 0.0) -> None:
            self.name = name
            setattr(self, field, value)

    Gauge.__qualname__ = "Gauge"
    if version == 2:
        callstate.migration(Gauge, from_version=1)(lambda s: {"percent": s["level"] * 100})
    return Gauge


def checkpoints(lk: Kit, root: Path) -> Any:
    return lk.ModelCheckpoint(dirpath=root / "ckpt", save_last=True)


def test_a_rename_migration_on_a_real_resume_from_a_plain_lightning_checkpoint(lk: Kit, tmp_path: Path) -> None:
    """A .ckpt written by Lightning alone is version 1; resuming with version 2 renames the field first."""
    old = meter_class(lk, 1)()
    lk.trainer(tmp_path, [old, checkpoints(lk, tmp_path)], max_epochs=1).fit(lk.model())
    last = tmp_path / "ckpt" / "last.ckpt"
    written = torch.load(last, weights_only=True)
    assert written["callbacks"]["Meter"] == {"count": 16} and VERSIONS not in written

    new_class = meter_class(lk, 2)
    meter, adapter = new_class(), CallstateCallback()
    lk.trainer(tmp_path, [meter, checkpoints(lk, tmp_path), adapter], max_epochs=2).fit(
        lk.model(), ckpt_path=last
    )
    assert adapter.last_report is not None
    assert adapter.last_report.migrated == {"Meter": (1, 2)}
    assert meter.n == 32, "16 restored through the migration, then 16 more"
    resaved = torch.load(last, weights_only=True)
    assert resaved["callbacks"]["Meter"] == {"batches": 32}
    assert resaved[VERSIONS] == {"Meter": 2}

    # Lightning alone resumes from the new checkpoint: the versions entry is ignored.
    plain = new_class()
    lk.trainer(tmp_path, [plain, checkpoints(lk, tmp_path)], max_epochs=3).fit(lk.model(), ckpt_path=last)
    assert plain.n == 48


def test_a_failing_migration_on_resume_changes_no_callback(lk: Kit, tmp_path: Path) -> None:
    """A migration that raises in a Trainer resume fails the fit with MigrationError; nothing was loaded."""
    old = meter_class(lk, 1)()
    lk.trainer(tmp_path, [old, checkpoints(lk, tmp_path)], max_epochs=1).fit(lk.model())

    class Broken(meter_class(lk, 1)):  # type: ignore[misc]
        pass

    Broken.__qualname__ = "Meter"
    broken_class: type = callstate.stateful(version=2)(Broken)
    callstate.migration(broken_class, from_version=1)(lambda state: state["missing"])
    meter = broken_class()
    meter.n = 7
    with pytest.raises(callstate.errors.MigrationError, match="Meter") as caught:
        lk.trainer(tmp_path, [meter, checkpoints(lk, tmp_path), CallstateCallback()], max_epochs=2).fit(
            lk.model(), ckpt_path=tmp_path / "ckpt" / "last.ckpt"
        )
    assert caught.value.step == (1, 2) and isinstance(caught.value.__cause__, KeyError)
    assert meter.n == 7


def test_a_malformed_versions_entry_on_resume_names_the_checkpoint(lk: Kit, tmp_path: Path) -> None:
    """A top-level "callstate:versions" that is no versions table fails the resume naming the .ckpt."""
    old = meter_class(lk, 1)()
    lk.trainer(tmp_path, [old, checkpoints(lk, tmp_path)], max_epochs=1).fit(lk.model())
    last = tmp_path / "ckpt" / "last.ckpt"
    hostile = tmp_path / "hostile.ckpt"
    torch.save({**torch.load(last, weights_only=True), VERSIONS: [1]}, hostile)
    meter = meter_class(lk, 2)()
    with pytest.raises(callstate.CorruptCheckpointError, match=r"hostile\.ckpt") as caught:
        lk.trainer(tmp_path, [meter, checkpoints(lk, tmp_path), CallstateCallback()], max_epochs=2).fit(
            lk.model(), ckpt_path=hostile
        )
    assert (caught.value.path, caught.value.key) == (str(hostile), VERSIONS)
    assert meter.n == 0


def test_plain_objects_versions_survive_lightning_checkpoints(lk: Kit, tmp_path: Path) -> None:
    """A CallstateCallback object migrates on resume, is saved at its new version, and reads back so."""
    last = tmp_path / "ckpt" / "last.ckpt"
    first = CallstateCallback([gauge_class(1)("fuel", 0.25)])
    lk.trainer(tmp_path, [checkpoints(lk, tmp_path), first], max_epochs=1).fit(lk.model())
    assert VERSIONS not in torch.load(last, weights_only=True)

    gauge = gauge_class(2)("fuel")
    adapter = CallstateCallback([gauge], strict=True)
    lk.trainer(tmp_path, [checkpoints(lk, tmp_path), adapter], max_epochs=2).fit(lk.model(), ckpt_path=last)
    assert adapter.last_report is not None and adapter.last_report.migrated == {"Gauge{'name': 'fuel'}": (1, 2)}
    assert gauge.percent == 25.0
    assert torch.load(last, weights_only=True)[VERSIONS] == {"Gauge{'name': 'fuel'}": 2}

    # Outside the Trainer: restore and to_callstate read the checkpoint's versions too.
    again = gauge_class(2)("fuel")
    registry = callstate.CallbackRegistry([again])
    with pytest.warns(callstate.CallstateWarning, match="partial"):  # the ModelCheckpoint's state is kept
        assert cl.restore(registry, last).migrated == {}
    assert again.percent == 25.0
    out = tmp_path / "states.callstate"
    cl.to_callstate(last, out)
    assert {i.key: i.version for i in callstate.inspect(out)}["Gauge{'name': 'fuel'}"] == 2
    patched = cl.from_callstate(out, {"callbacks": {}})
    assert patched[VERSIONS] == {"Gauge{'name': 'fuel'}": 2}


def test_a_trainer_callbacks_version_wins_over_an_unclaimed_state_under_its_key(
    lk: Kit, tmp_path: Path
) -> None:
    """A kept state at version 2 under a version 1 Trainer callback's key: the checkpoint says nothing."""
    adapter = CallstateCallback()
    with pytest.warns(callstate.CallstateWarning, match="partial"):
        adapter.registry.load_state_dict({"Meter": {"batches": 5}, VERSIONS: {"Meter": 2}})
    meter = meter_class(lk, 1)()
    lk.trainer(tmp_path, [meter, checkpoints(lk, tmp_path), adapter], max_epochs=1).fit(lk.model())
    written = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert written["callbacks"]["Meter"] == {"count": 16}, "Lightning's own state of the callback"
    assert VERSIONS not in written
