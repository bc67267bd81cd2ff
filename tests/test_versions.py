"""State schema versions and migrations: declared versions, chains, errors, and versions on every path."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import callstate
from callstate._core import _versions

KEY = "Thermo{'room': 'lab'}"
OTHER = "Thermo{'room': 'hall'}"
VERSIONS = "callstate:versions"


def thermo_class(version: int, *, migrations: bool = True, calls: list[tuple[int, int]] | None = None) -> type:
    """Return a fresh class ``Thermo`` at ``version`` of a state that changed shape twice.

    1: ``{"celsius": float}``; 2: ``{"kelvin": float}`` (a new unit and name);
    3: ``{"kelvin": float, "readings": int}`` (a new field). With ``migrations``, 1 -> 2 and
    2 -> 3 are registered (each records its step in ``calls``).
    """
    fields = {1: ("celsius",), 2: ("kelvin",), 3: ("kelvin", "readings")}[version]

    @callstate.stateful(identity=("room",), state=fields, version=version)
    class Thermo:
        def __init__(self, room: str, **values: Any) -> None:
            self.room = room
            for name in fields:
                setattr(self, name, values.get(name, 0))

    Thermo.__qualname__ = "Thermo"
    if migrations:

        @callstate.migration(Thermo, from_version=1)
        def to_kelvin(state: dict[str, Any]) -> dict[str, Any]:
            if calls is not None:
                calls.append((1, 2))
            return {"kelvin": state.pop("celsius") + 273.15}

        @callstate.migration(Thermo, from_version=2)
        def count_readings(state: dict[str, Any]) -> dict[str, Any]:
            if calls is not None:
                calls.append((2, 3))
            return {**state, "readings": 0}

    return Thermo


SAVED = {1: {"celsius": 20.0}, 2: {"kelvin": 293.15}, 3: {"kelvin": 293.15, "readings": 0}}


def saved_at(version: int, tmp_path: Path, **values: Any) -> Path:
    """Write a file holding one Thermo state saved by version ``version`` of the class."""
    cls = thermo_class(version, migrations=False)
    path = tmp_path / f"v{version}.callstate"
    callstate.save([cls("lab", **(values or SAVED[version]))], path)
    return path


# -- declaring versions ----------------------------------------------------------------------------


def test_a_class_that_declares_no_version_is_at_version_1() -> None:
    """Undecorated, decorated without version=, or a plain object: version 1."""

    @callstate.stateful(identity=("a",))
    class A:
        a = 1

    class Plain:
        pass

    assert _versions.version_of(A) == _versions.version_of(Plain) == 1


def test_a_subclass_inherits_its_bases_version_and_migrations() -> None:
    """A decorated subclass without version= is at its base's version and uses its base's steps."""
    base = thermo_class(3)

    @callstate.stateful(identity=("room",))
    class Sub(base):  # type: ignore[misc,valid-type]
        pass

    Sub.__qualname__ = "Thermo"
    sub = Sub("lab")
    report = callstate.CallbackRegistry([sub]).load_state_dict({KEY: {"celsius": 0.0}})
    assert _versions.version_of(Sub) == 3 and report.migrated == {KEY: (1, 3)}
    assert (sub.kelvin, sub.readings) == (273.15, 0)


def test_an_undecorated_class_declares_its_version_with_an_attribute() -> None:
    """``__callstate_version__`` gives a plain class (a Lightning Callback, say) its version."""

    class Meter:
        __callstate_version__ = 2

        def __init__(self) -> None:
            self.total = 0

        def state_dict(self) -> dict[str, int]:
            return {"total": self.total}

        def load_state_dict(self, state: dict[str, int]) -> None:
            self.total = state["total"]

    Meter.__qualname__ = "Meter"
    callstate.migration(Meter, from_version=1)(lambda s: {"total": s["count"]})
    meter = Meter()
    registry = callstate.CallbackRegistry([meter])
    assert registry.load_state_dict({"Meter": {"count": 4}}).migrated == {"Meter": (1, 2)}
    assert meter.total == 4
    assert registry.state_dict() == {"Meter": {"total": 4}, VERSIONS: {"Meter": 2}}


@pytest.mark.parametrize("bad", [0, -1, True, 1.0, "2", 10**9])
def test_a_version_is_an_int_from_1(bad: Any) -> None:
    """version= and from_version= refuse what is not an int from 1, bools included."""
    with pytest.raises((TypeError, ValueError), match="version"):
        callstate.stateful(version=bad)
    with pytest.raises((TypeError, ValueError), match="version"):
        callstate.migration(thermo_class(1, migrations=False), from_version=bad)


def test_a_migration_is_one_step_up_or_down() -> None:
    """to_version must be from_version + 1 or - 1; a class is required."""
    cls = thermo_class(3, migrations=False)
    with pytest.raises(ValueError, match="one step"):
        callstate.migration(cls, from_version=1, to_version=3)
    with pytest.raises(TypeError, match="class"):
        callstate.migration(object(), from_version=1)  # type: ignore[arg-type]


def test_registering_a_step_twice_is_refused_naming_both_functions() -> None:
    """A second migration for the same class and step raises ValueError; the first stays."""
    cls = thermo_class(3)

    def again(state: Any) -> Any:
        return state

    with pytest.raises(ValueError, match=r"from version 1 to 2 already \(.*to_kelvin\).*again"):
        callstate.migration(cls, from_version=1)(again)
    assert _versions._step(cls, 1, 2).__name__ == "to_kelvin"  # type: ignore[union-attr]


# -- the chain -------------------------------------------------------------------------------------


@pytest.mark.parametrize("saved", [1, 2])
def test_a_three_version_chain_applies_from_each_old_version(saved: int, tmp_path: Path) -> None:
    """A state saved at version 1 or 2 goes through every step to 3, in order, from a file and a dict."""
    calls: list[tuple[int, int]] = []
    cls = thermo_class(3, calls=calls)
    thermo = cls("lab", kelvin=1.0, readings=9)
    report = callstate.load([thermo], saved_at(saved, tmp_path), strict=True)
    assert calls == [(1, 2), (2, 3)][saved - 1 :]
    assert (thermo.kelvin, thermo.readings) == (293.15, 0)
    assert report.migrated == {KEY: (saved, 3)} and report.restored == (KEY,)

    again = cls("lab")
    states = {KEY: dict(SAVED[saved]), VERSIONS: {KEY: saved}}
    callstate.CallbackRegistry([again]).load_state_dict(states, strict=True)
    assert (again.kelvin, again.readings) == (293.15, 0)
    assert states[KEY] == SAVED[saved], "the given mapping is never changed"


def test_a_state_at_its_class_version_is_not_migrated(tmp_path: Path) -> None:
    """Saved at version 3 and loaded by version 3: no migration runs, migrated is empty."""
    calls: list[tuple[int, int]] = []
    thermo = thermo_class(3, calls=calls)("lab")
    assert callstate.load([thermo], saved_at(3, tmp_path)).migrated == {}
    assert calls == []


@given(current=st.integers(1, 8), data=st.data())
def test_any_chain_from_any_version_reaches_the_current_one(current: int, data: st.DataObject) -> None:
    """For any N and K (up or down, with downgrades registered), the state goes K -> ... -> N in order."""
    saved = data.draw(st.integers(1, 8), label="saved")

    @callstate.stateful(identity=("i",), state=("path",), version=current)
    class Step:
        def __init__(self) -> None:
            self.i, self.path = 0, []

    Step.__qualname__ = "Step"
    for k in range(1, 9):
        for to in (k + 1, k - 1):
            if 1 <= to <= 8:
                callstate.migration(Step, from_version=k, to_version=to)(
                    lambda s, to=to: {"path": [*s["path"], to]}
                )
    step = Step()
    report = callstate.CallbackRegistry([step]).load_state_dict(
        {"Step{'i': 0}": {"path": [saved]}, VERSIONS: {"Step{'i': 0}": saved}}, strict=True
    )
    direction = 1 if current >= saved else -1
    assert step.path == list(range(saved, current + direction, direction))
    assert report.migrated == ({} if saved == current else {"Step{'i': 0}": (saved, current)})


def test_a_migration_receives_a_state_of_its_own() -> None:
    """A migration that changes the state in place changes neither the caller's mapping nor a kept state."""
    cls = thermo_class(3)
    registry = callstate.CallbackRegistry([cls("lab")])
    given = {KEY: {"celsius": 1.0}}
    registry.load_state_dict(given)
    assert given == {KEY: {"celsius": 1.0}}


# -- failures change nothing ---------------------------------------------------------------------------


def test_a_failing_migration_rolls_everything_back(tmp_path: Path) -> None:
    """The second state's migration raises: MigrationError names key, step and cause; nothing changed."""
    cls = thermo_class(3)
    lab, hall = cls("lab", kelvin=5.0, readings=5), cls("hall", kelvin=6.0, readings=6)

    @callstate.stateful(identity=("room",), state=("celsius",))
    class Old:
        def __init__(self, room: str, celsius: Any) -> None:
            self.room, self.celsius = room, celsius

    Old.__qualname__ = "Thermo"
    path = tmp_path / "mixed.callstate"
    states = callstate.CallbackRegistry([Old("lab", 20.0), Old("hall", "warm")]).state_dict()
    callstate.save({**states, "Kept": {"k": 1}}, path)
    registry = callstate.CallbackRegistry([lab, hall])
    with pytest.raises(callstate.errors.MigrationError) as caught:
        callstate.load(registry, path)
    err = caught.value
    assert err.key == OTHER and err.step == (1, 2)
    assert isinstance(err.__cause__, TypeError)
    assert "from version 1 to 2" in str(err) and "to_kelvin raised TypeError" in str(err)
    assert "Nothing was changed" in str(err) and str(path) in str(err)
    assert (lab.kelvin, lab.readings, hall.kelvin, hall.readings) == (5.0, 5, 6.0, 6)
    assert dict(registry.unclaimed) == {}, "the unclaimed state was not kept either"


def test_a_migration_returning_none_is_a_migration_error() -> None:
    """A migration that changes the state in place and forgets to return it is named, nothing changed."""

    @callstate.stateful(identity=(), state=("x",), version=2)
    class Forgetful:
        x = 0

    Forgetful.__qualname__ = "Forgetful"
    callstate.migration(Forgetful, from_version=1)(lambda s: s.update(x=1))
    obj = Forgetful()
    with pytest.raises(callstate.errors.MigrationError, match="returned None") as caught:
        callstate.CallbackRegistry([obj]).load_state_dict({"Forgetful": {"x": 5}})
    assert caught.value.step == (1, 2) and obj.x == 0


@pytest.mark.parametrize("strict", [True, False])
def test_a_missing_step_raises_before_anything_changes(strict: bool) -> None:
    """No 2 -> 3: StateVersionError names the step before any migration or load_state_dict runs."""
    calls: list[tuple[int, int]] = []
    cls = thermo_class(3, migrations=False)
    callstate.migration(cls, from_version=1)(lambda s: calls.append((1, 2)) or {"kelvin": 0.0})
    lab, hall = cls("lab", kelvin=5.0), cls("hall", kelvin=6.0)
    states = {OTHER: {"kelvin": 1.0, "readings": 1}, KEY: {"celsius": 1.0}, VERSIONS: {OTHER: 3}, "X": 1}
    registry = callstate.CallbackRegistry([hall, lab])
    with pytest.raises(callstate.errors.StateVersionError) as caught:
        registry.load_state_dict({k: v for k, v in states.items() if k != "X" or not strict}, strict=strict)
    err = caught.value
    assert (err.key, err.saved, err.current, err.step) == (KEY, 1, 3, (2, 3))
    assert "@callstate.migration(Thermo, from_version=2)" in str(err)
    assert isinstance(err, ValueError) and isinstance(err, callstate.CallstateError)
    assert calls == [] and (lab.kelvin, hall.kelvin) == (5.0, 6.0) and dict(registry.unclaimed) == {}


def test_every_state_that_cannot_reach_its_version_is_named_at_once() -> None:
    """Two states without a way to their versions: one StateVersionError names both; .key is the first's."""
    cls = thermo_class(2, migrations=False)
    states = {KEY: {"celsius": 1.0}, OTHER: {"kelvin": 1.0, "readings": 0}, VERSIONS: {OTHER: 3}}
    with pytest.raises(callstate.errors.StateVersionError) as caught:
        callstate.CallbackRegistry([cls("lab"), cls("hall")]).load_state_dict(states)
    assert caught.value.key == KEY and caught.value.step == (1, 2)
    assert "1 more state(s)" in str(caught.value) and OTHER in str(caught.value)


@pytest.mark.parametrize("strict", [True, False])
def test_a_newer_saved_version_raises_before_anything_changes(strict: bool, tmp_path: Path) -> None:
    """Saved by version 3, loaded by version 2: StateVersionError with the fix, strict or not."""
    path = saved_at(3, tmp_path)
    cls = thermo_class(2)
    thermo = cls("lab", kelvin=7.0)
    with pytest.raises(callstate.errors.StateVersionError) as caught:
        callstate.load([thermo], path, strict=strict)
    err = caught.value
    assert (err.key, err.saved, err.current, err.step) == (KEY, 3, 2, (3, 2))
    assert "newer" in str(err) and "upgrade" in str(err)
    assert "@callstate.migration(Thermo, from_version=3, to_version=2)" in str(err)
    assert thermo.kelvin == 7.0


def test_a_registered_downgrade_loads_a_newer_state() -> None:
    """With a 3 -> 2 migration, a version 3 state loads into version 2 (migrated (3, 2))."""
    cls = thermo_class(2)
    callstate.migration(cls, from_version=3, to_version=2)(lambda s: {"kelvin": s["kelvin"]})
    thermo = cls("lab")
    report = callstate.CallbackRegistry([thermo]).load_state_dict(
        {KEY: {"kelvin": 3.0, "readings": 2}, VERSIONS: {KEY: 3}}
    )
    assert report.migrated == {KEY: (3, 2)} and thermo.kelvin == 3.0


# -- versions travel with the states -----------------------------------------------------------------


def test_state_dict_has_no_versions_entry_when_every_version_is_1() -> None:
    """The {key: state} shape is unchanged for classes that declare no version."""
    cls = thermo_class(1, migrations=False)
    assert callstate.CallbackRegistry([cls("lab", celsius=2.0)]).state_dict() == {KEY: {"celsius": 2.0}}


def test_an_old_mapping_without_versions_loads_as_version_1() -> None:
    """A state dict saved before versions existed is version 1 and is migrated."""
    thermo = thermo_class(3)("lab")
    report = callstate.CallbackRegistry([thermo]).load_state_dict({KEY: {"celsius": 0.0}}, strict=True)
    assert report.migrated == {KEY: (1, 3)} and thermo.kelvin == 273.15


def test_migrated_states_are_saved_at_the_new_version_by_the_next_save(tmp_path: Path) -> None:
    """After loading a version 1 file, the next save records version 3 and loads with no migration."""
    path = saved_at(1, tmp_path)
    cls = thermo_class(3)
    thermo = cls("lab")
    callstate.load([thermo], path)
    callstate.save([thermo], path)
    [info] = callstate.inspect(path)
    assert info.version == 3 and info.info == {"version": "3"}
    assert callstate.read(path) == {KEY: SAVED[3], VERSIONS: {KEY: 3}}
    assert callstate.load([cls("lab")], path).migrated == {}
    registry = callstate.CallbackRegistry([thermo])
    assert registry.state_dict() == {KEY: SAVED[3], VERSIONS: {KEY: 3}}
    assert callstate.loads([cls("lab")], callstate.dumps(registry.state_dict())).migrated == {}


def test_read_then_save_keeps_the_versions(tmp_path: Path) -> None:
    """callstate.save(callstate.read(path), path) writes the same versions back."""
    path = tmp_path / "a.callstate"
    callstate.save([thermo_class(2, migrations=False)("lab", kelvin=1.0)], path)
    callstate.save(callstate.read(path), path)
    assert [i.version for i in callstate.inspect(path)] == [2]


def test_an_unclaimed_state_keeps_its_version(tmp_path: Path) -> None:
    """A versioned state no callback claims is saved again at its version and migrated when claimed."""
    path = saved_at(2, tmp_path)
    registry = callstate.CallbackRegistry()
    with pytest.warns(callstate.CallstateWarning):
        callstate.load(registry, path)
    out = tmp_path / "again.callstate"
    callstate.save(registry, out)
    assert [i.version for i in callstate.inspect(out)] == [2]
    assert registry.state_dict()[VERSIONS] == {KEY: 2}
    assert (path.read_bytes() == out.read_bytes()), "kept byte for byte, version included"

    plain = callstate.CallbackRegistry()
    with pytest.warns(callstate.CallstateWarning):
        plain.load_state_dict({KEY: {"kelvin": 1.5}, VERSIONS: {KEY: 2}})
    assert plain.state_dict() == {KEY: {"kelvin": 1.5}, VERSIONS: {KEY: 2}}
    thermo = thermo_class(3)("lab")
    plain.register(thermo)  # delivered from the kept state, through the 2 -> 3 migration
    assert (thermo.kelvin, thermo.readings) == (1.5, 0)
    assert plain.state_dict() == {KEY: {"kelvin": 1.5, "readings": 0}, VERSIONS: {KEY: 3}}


def test_a_report_with_migrations_pickles() -> None:
    """RestoreReport.migrated survives pickling (reports travel between ranks)."""
    report = callstate.RestoreReport(restored=("a",), migrated={"a": (1, 3)})
    assert pickle.loads(pickle.dumps(report)) == report
    assert pickle.loads(pickle.dumps(report)).migrated == {"a": (1, 3)}


def test_a_malformed_versions_entry_is_a_corrupt_checkpoint() -> None:
    """A versions entry that is not {key: int from 1} raises CorruptCheckpointError, changing nothing."""
    thermo = thermo_class(3)("lab", kelvin=2.0)
    for bad in ({KEY: "3"}, {KEY: 0}, {KEY: True}, [KEY]):
        with pytest.raises(callstate.CorruptCheckpointError, match="callstate:versions") as caught:
            callstate.CallbackRegistry([thermo]).load_state_dict({KEY: {"celsius": 1.0}, VERSIONS: bad})
        assert caught.value.key == VERSIONS
    assert thermo.kelvin == 2.0


def test_a_malformed_versions_entry_is_named_without_its_repr() -> None:
    """A huge or self-nesting bad value is named by its type, never by walking its repr."""
    nested: list[Any] = []
    nested.append(nested)
    huge = {KEY: [0] * 1_000_000}
    for bad in (nested, {KEY: nested}, huge):
        with pytest.raises(callstate.CorruptCheckpointError) as caught:
            callstate.CallbackRegistry().load_state_dict({VERSIONS: bad})
        assert len(str(caught.value)) < 400


def test_a_malformed_version_in_a_file_names_the_file_and_entry(tmp_path: Path) -> None:
    """An entry whose info records a version that is no number: CorruptCheckpointError naming both.

    inspect reports it as that entry's damage (``ok=False``); the other entries are described as usual.
    """
    path = tmp_path / "v.callstate"
    callstate.save([thermo_class(2, migrations=False)("lab")], path)
    plain = callstate.read(path, lazy=True)[KEY].to_plain()
    plain["info"] = {"version": "²"}
    callstate.save({KEY: plain, "Other": {"x": 1}}, path)
    assert [(i.key, i.ok, i.version) for i in callstate.inspect(path)] == [(KEY, False, 1), ("Other", True, 1)]
    with pytest.raises(callstate.CorruptCheckpointError, match=r"entry .*Thermo.*version") as caught:
        callstate.load([thermo_class(3)("lab")], path)
    assert caught.value.path == str(path) and caught.value.key == KEY


@pytest.mark.parametrize(("declared", "builtin"), [("2", TypeError), (0, ValueError), (True, TypeError)])
def test_a_malformed_version_attribute_is_refused_at_register(declared: object, builtin: type) -> None:
    """``__callstate_version__ = "2"``: a VersionDeclarationError naming the class, when it is registered."""

    class Meter:
        __callstate_version__ = declared

        def state_dict(self) -> dict[str, int]:
            return {}

        def load_state_dict(self, state: dict[str, int]) -> None:
            pass

    registry = callstate.CallbackRegistry()
    with pytest.raises(callstate.errors.VersionDeclarationError, match=r"Meter\.__callstate_version__") as caught:
        registry.register(Meter())
    assert isinstance(caught.value, builtin) and (caught.value.cls, caught.value.value) == (Meter, declared)
    assert registry.keys() == []


def test_a_callback_keyed_like_the_versions_entry_is_refused() -> None:
    """A callback keyed "callstate:versions" is refused at register, or, its key changed since, at save."""
    registry = callstate.CallbackRegistry()
    with pytest.raises(callstate.DuplicateKeyError, match="another key="):
        registry.register(thermo_class(1, migrations=False)("lab"), key=VERSIONS)

    class Renamed:
        state_key = "mine"

        def state_dict(self) -> dict[str, Any]:
            return {}

        def load_state_dict(self, state: dict[str, Any]) -> None:
            pass

    renamed = Renamed()
    registry.register(renamed)
    renamed.state_key = VERSIONS
    with pytest.raises(callstate.DuplicateKeyError, match="versions"):
        registry.state_dict()


# -- other front ends ----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pt", ".callstate"])
def test_loop_checkpoints_carry_versions(suffix: str, tmp_path: Path) -> None:
    """save_checkpoint/load_checkpoint: an old checkpoint migrates; a new one is at version 3."""
    pytest.importorskip("torch")
    from callstate.loop import load_checkpoint, save_checkpoint

    path = tmp_path / f"last{suffix}"
    save_checkpoint(path, [thermo_class(1, migrations=False)("lab", celsius=20.0)], step=3)
    cls = thermo_class(3)
    thermo = cls("lab")
    loaded = load_checkpoint(path, [thermo], strict=True)
    assert loaded.report.migrated == {KEY: (1, 3)} and thermo.kelvin == 293.15
    save_checkpoint(path, [thermo], step=4)
    again = cls("lab")
    loaded = load_checkpoint(path, [again], strict=True)
    assert loaded.report.migrated == {} and (again.kelvin, again.readings) == (293.15, 0)
    assert loaded.extra == {"step": 4}


def test_distributed_layouts_carry_versions_of_per_rank_states(tmp_path: Path) -> None:
    """csd.save/load and state_dict/load_state_dict (a world of 1) record and apply per-rank versions."""
    pytest.importorskip("torch")
    import callstate.distributed as csd

    def cursor(version: int) -> type:
        fields = {1: ("seen",), 2: ("positions",)}[version]

        @callstate.stateful(identity=("name",), state=fields, per_rank=True, version=version)
        class Cursor:
            def __init__(self, name: str, **values: Any) -> None:
                self.name = name
                for f in fields:
                    setattr(self, f, values.get(f, []))

        Cursor.__qualname__ = "Cursor"
        return Cursor

    path = tmp_path / "dist.callstate"
    csd.save([cursor(1)("train", seen=[1, 2])], path)
    new = cursor(2)
    callstate.migration(new, from_version=1)(lambda s: {"positions": s["seen"]})
    restored = new("train")
    report = csd.load([restored], path, strict=True)
    assert report.migrated == {"Cursor{'name': 'train'}": (1, 2)} and restored.positions == [1, 2]

    csd.save([restored], path)
    by_key = {i.key: i.version for i in callstate.inspect(path)}
    assert by_key["Cursor{'name': 'train'}@rank0"] == 2
    layout = csd.state_dict([restored])
    assert layout is not None and layout[VERSIONS] == {"Cursor{'name': 'train'}": 2}
    again = new("train")
    assert csd.load_state_dict([again], layout, strict=True).migrated == {}
    assert csd.load([again], path, strict=True).migrated == {} and again.positions == [1, 2]


def test_read_of_a_per_rank_file_keeps_versions_keyed_by_rank_key(tmp_path: Path) -> None:
    """callstate.read() names a per-rank version by its rank key; load_state_dict applies it to the state."""
    pytest.importorskip("torch")
    import callstate.distributed as csd

    def probe(version: int) -> type:
        @callstate.stateful(identity=("room",), state=("millis",), per_rank=True, version=version)
        class Probe:
            def __init__(self, room: str, millis: int = 0) -> None:
                self.room, self.millis = room, millis

        Probe.__qualname__ = "Probe"
        return Probe

    path = tmp_path / "rank.callstate"
    csd.save([probe(2)("lab", millis=1500)], path)
    new = probe(3)
    callstate.migration(new, from_version=1)(lambda s: {"millis": s["seconds"] * 1000})
    callstate.migration(new, from_version=2)(lambda s: {"millis": s["millis"] + 1})
    mapping = callstate.read(path)
    assert mapping[VERSIONS] == {"Probe{'room': 'lab'}@rank0": 2}
    restored = new("lab")
    report = csd.load_state_dict([restored], mapping, strict=True)
    assert report.migrated == {"Probe{'room': 'lab'}": (2, 3)} and restored.millis == 1501


def test_dcp_state_entries_carry_versions() -> None:
    """DCPState (a world of 1, no DCP): its global and per-rank entries record their versions."""
    pytest.importorskip("torch")
    import callstate.distributed as csd

    @callstate.stateful(identity=("room",), state=("kelvin",), per_rank=True, version=2)
    class Probe:
        def __init__(self, room: str, kelvin: float = 0.0) -> None:
            self.room, self.kelvin = room, kelvin

    Probe.__qualname__ = "Probe"
    entries = csd.DCPState([Probe("lab", 4.0), thermo_class(3)("hall", kelvin=1.0)]).state_dict()
    versions = {i.key: i.version for blob in entries.values() for i in callstate.inspect(blob)}
    assert versions["Probe{'room': 'lab'}@rank0"] == 2 and versions[OTHER] == 3
    target = csd.DCPState([Probe("lab"), thermo_class(3)("hall")], strict=True)
    target.load_state_dict(entries)
    assert target.report is not None and target.report.migrated == {}


# -- golden files --------------------------------------------------------------------------------------

GOLDEN = Path(__file__).parent / "golden" / "v2"


def test_golden_files_saved_at_versions_1_and_2_load_into_version_3() -> None:
    """Files written by versions 1 and 2 of Thermometer (kept forever) load into version 3, migrated."""
    import sys

    sys.path.insert(0, str(GOLDEN.parent))
    try:
        import golden_states
    finally:
        sys.path.remove(str(GOLDEN.parent))
    lab, hall = golden_states.LAB, golden_states.HALL
    assert b'"version":"2"' in (GOLDEN / "thermometer_v2.callstate").read_bytes(), "the format of the record"
    assert [i.version for i in callstate.inspect(GOLDEN / "thermometer_v1.callstate")] == [1, 1]

    cls = golden_states.thermometer(3)
    rooms = [cls("lab"), cls("hall")]
    report = callstate.load(rooms, GOLDEN / "thermometer_v1.callstate", strict=True)
    assert report.migrated == {lab: (1, 3), hall: (1, 3)}
    assert [(t.kelvin, t.readings) for t in rooms] == [(294.65, 0), (270.15, 0)]

    room = cls("lab")
    assert callstate.load([room], GOLDEN / "thermometer_v2.callstate", strict=True).migrated == {lab: (2, 3)}
    assert (room.kelvin, room.readings) == (294.65, 0)
