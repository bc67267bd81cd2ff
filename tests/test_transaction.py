"""The restore transaction: match, check, decode, snapshot, apply, and roll back, for every front end."""

from __future__ import annotations

import pickle
import warnings
from typing import Any

import pytest
from strategies import Box

import callstate
from callstate._core._transaction import Member, RestoreTransaction, Saved, match


class Fragile(Box):
    """A Box whose load_state_dict raises on a state holding "boom", after changing itself."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if state.get("value") == "boom":
            raise ValueError("boom")


class Model:
    """A model-like participant: load_state_dict raises on a shape it does not have."""

    def __init__(self, shape: int) -> None:
        self.shape, self.weights = shape, [0.0] * shape

    def state_dict(self) -> dict[str, Any]:
        return {"weights": list(self.weights)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["weights"]) != self.shape:
            raise RuntimeError(f"size mismatch: {len(state['weights'])} != {self.shape}")
        self.weights = list(state["weights"])


def registry_of(**boxes: Box) -> callstate.CallbackRegistry:
    registry = callstate.CallbackRegistry()
    for key, b in boxes.items():
        registry.register(b, key=key)
    return registry


def test_match_prefers_keys_then_aliases_then_a_lone_class_key() -> None:
    """A key wins over an alias, an alias is taken once, and a class key goes only to a lone instance."""
    a, b, c = Box(1), Box(2), Fragile(3)
    found = match(
        [Member("a", a, ("old",)), Member("b", b, ("old",)), Member("c", c)],
        {"a": 1, "old": 2, "Fragile": 3},
    )
    assert [(m.member.obj, m.source) for m in found] == [(a, "a"), (b, "old"), (c, "Fragile")]
    assert match([Member("a", a), Member("b", b)], {"Box": 1}) == [], "two Boxes: a class key is nobody's"
    assert match([Member("c", c)], {"Fragile": 1}, legacy=False) == []


def test_participants_roll_back_with_the_callbacks() -> None:
    """A model that fails after the callbacks restored puts every callback and earlier object back."""
    box, model, other = Box("before"), Model(2), Model(3)
    registry = registry_of(box=box)
    restore = registry.begin_restore(Saved({"box": {"value": "after"}}), strict=True)
    restore.include("other", other, {"weights": [1.0, 2.0, 3.0]})
    restore.include("model", model, {"weights": [1.0, 2.0, 3.0]})
    with pytest.raises(callstate.RestoreError, match=r"Model\.load_state_dict raised RuntimeError") as e:
        restore.apply()
    assert box.value == "before" and other.weights == [0.0] * 3 and model.weights == [0.0, 0.0]
    assert e.value.key == "model"
    assert set(e.value.rolled_back) == {"box", "other"}
    assert isinstance(e.value.__cause__, RuntimeError)


def test_roll_back_after_success_puts_states_and_unclaimed_back() -> None:
    """roll_back after a successful apply gives every callback its state and the unclaimed states back."""
    a, b = Box("a0"), Box("b0")
    registry = registry_of(a=a, b=b)
    with pytest.warns(callstate.CallstateWarning):
        registry.load_state_dict({"ghost": {"g": 0}})  # kept unclaimed
    restore = registry.begin_restore(Saved({"a": {"value": "a1"}, "b": {"value": "b1"}, "x": 1}), strict=False)
    with pytest.warns(callstate.CallstateWarning):
        report = restore.apply()
    assert report.restored == ("a", "b") and (a.value, b.value) == ("a1", "b1")
    assert dict(registry.unclaimed) == {"ghost": {"g": 0}, "x": 1}
    restore.roll_back()
    assert (a.value, b.value) == ("a0", "b0")
    assert dict(registry.unclaimed) == {"ghost": {"g": 0}}


def test_roll_back_of_a_restore_that_was_not_atomic_raises() -> None:
    """A restore made with atomic=False has nothing to put back: roll_back says so."""
    box = Box(0)
    restore = registry_of(box=box).begin_restore(Saved({"box": {"value": 1}}), strict=True, atomic=False)
    restore.apply()
    with pytest.raises(callstate.RestoreError, match="not atomic"):
        restore.roll_back()


def test_strict_mismatch_is_refused_at_planning() -> None:
    """A strict mismatch raises when the transaction is planned, before any state is touched."""
    box = Box(0)
    with pytest.raises(callstate.StateMismatchError) as e:
        registry_of(box=box).begin_restore(Saved({"nope": {"value": 1}}), strict=True)
    assert e.value.missing == ("box",) and e.value.unexpected == ("nope",)
    assert box.value == 0


def test_fresh_states_are_handed_over_and_others_copied() -> None:
    """States read for this restore alone are handed over as they are; a caller's states are copied."""
    box = Box(None)
    value = {"value": [1, 2]}
    registry_of(box=box).begin_restore(Saved({"box": value}, fresh=True), strict=True).apply()
    assert box.value is value["value"]
    registry_of(box=(other := Box(None))).begin_restore(Saved({"box": value}), strict=True).apply()
    assert other.value == [1, 2] and other.value is not value["value"]


def test_omits_empty_does_not_report_empty_callbacks_missing() -> None:
    """From a writer that leaves empty states out, a callback whose state is empty is not missing."""
    empty, full = Box(None), Box(1)
    empty.state_dict = lambda: {}  # type: ignore[method-assign]
    registry = registry_of(empty=empty, full=full)
    restore = registry.begin_restore(Saved({}, omits_empty=True), strict=False)
    assert restore.missing == ("full",)


def test_a_failure_names_the_file() -> None:
    """The RestoreError of a restore from a file names the file and the key."""
    box = Fragile(0)
    with pytest.raises(callstate.RestoreError, match=r"restoring 'box' from '/tmp/run\.callstate'"):
        registry_of(box=box).begin_restore(Saved({"box": {"value": "boom"}}, source="/tmp/run.callstate"), strict=True).apply()
    assert box.value == 0


def test_non_mapping_states_raise_type_error() -> None:
    """Anything but a mapping of states is refused with a TypeError naming its type."""
    with pytest.raises(TypeError, match="got list"):
        RestoreTransaction(Saved([1, 2]), [], strict=False, atomic=True, unclaimed={})  # type: ignore[arg-type]


def test_members_compute_each_key_once() -> None:
    """members() gives the stateful callbacks under their current keys, in order."""
    a, b = Box(1), Box(2)
    registry = registry_of(a=a, b=b)
    registry.register(object())
    assert [(m.key, m.obj) for m in registry.members()] == [("a", a), ("b", b)]


def test_report_pickles() -> None:
    """A RestoreReport travels between processes."""
    report = callstate.RestoreReport(restored=("a",), renamed={"a": "old"})
    assert pickle.loads(pickle.dumps(report)) == report


# --- found by review: checked before anything changes, undone exactly ---------------------------------


def bad_plain(**changes: Any) -> dict[str, Any]:
    """The plain form of an encoded state, altered."""
    plain = {"callstate:encoded": 1, "codec": "data", "checksum": 0, "key": "k", "info": {}, "parts": [b"x"]}
    plain.update(changes)
    return plain


@pytest.mark.parametrize(
    "bad",
    [bad_plain(parts=[]), bad_plain(codec="zzz"), bad_plain(**{"callstate:encoded": True}), {"callstate:encoded": 1}],
    ids=["no-parts", "unknown-codec", "true-tag", "fields-missing"],
)
def test_a_malformed_kept_state_fails_the_restore_before_anything_changes(bad: dict[str, Any]) -> None:
    """An unclaimed state marked as an encoded state but malformed raises CorruptCheckpointError, and no callback changed."""
    box = Box("before")
    registry = registry_of(box=box)
    with pytest.raises(callstate.CorruptCheckpointError, match="callstate:encoded"):
        registry.load_state_dict({"box": {"value": "after"}, "stranger": bad})
    assert box.value == "before" and dict(registry.unclaimed) == {}
    with pytest.raises(callstate.CorruptCheckpointError):
        callstate.dumps({"stranger": bad})


def test_roll_back_puts_unclaimed_states_back_when_no_callback_was_restored() -> None:
    """A restore that only kept unclaimed states is undone by roll_back too (a rank whose peer failed)."""
    registry = callstate.CallbackRegistry()
    restore = registry.begin_restore(Saved({"stranger": {"x": 1}}), strict=False)
    with pytest.warns(callstate.CallstateWarning):
        restore.apply()
    assert dict(registry.unclaimed) == {"stranger": {"x": 1}}
    restore.roll_back()
    assert dict(registry.unclaimed) == {}


class CountingDict(dict):  # type: ignore[type-arg]
    """A dict that counts how many keys are read or written through it."""

    touched = 0

    def get(self, key: Any, default: Any = None) -> Any:
        CountingDict.touched += 1
        return super().get(key, default)

    def pop(self, key: Any, *default: Any) -> Any:
        CountingDict.touched += 1
        return super().pop(key, *default)

    def __iter__(self) -> Any:
        CountingDict.touched += len(self)
        return super().__iter__()

    def copy(self) -> dict[Any, Any]:
        CountingDict.touched += len(self)
        return dict(self)


def test_keeping_states_touches_only_the_keys_it_changes() -> None:
    """A restore claiming one state among many kept ones touches a few keys, not all of them (linear registration)."""
    kept = CountingDict({f"k{i}": {"value": i} for i in range(1000)})
    box = Box(None)
    CountingDict.touched = 0
    RestoreTransaction(
        Saved({"k5": kept["k5"]}), [Member("k5", box)], strict=True, atomic=True, unclaimed=kept, legacy=False
    ).apply()
    assert box.value == 5 and "k5" not in kept and len(kept) == 999
    assert CountingDict.touched <= 10


def _mismatch(saved: dict[str, Any], *callbacks: object) -> str:
    """The message a strict restore of ``saved`` into ``callbacks`` refuses with."""
    registry = callstate.CallbackRegistry(list(callbacks))
    with pytest.raises(callstate.StateMismatchError) as e:
        registry.load_state_dict(saved, strict=True)
    return str(e.value)


@callstate.stateful(identity=("what",), state=("n",))
class Meter:
    def __init__(self, what: str) -> None:
        self.what = what
        self.n = 0


@callstate.stateful(identity=("what",), state=("n",))
class Gauge:
    def __init__(self, what: str) -> None:
        self.what = what
        self.n = 0


def test_a_checkpoint_without_callback_states_is_named_as_such() -> None:
    """Nothing saved at all: the message says the checkpoint was written without callstate, not 'identity changed'."""
    text = _mismatch({}, Meter("loss"))
    assert "holds no callback states: it was written without callstate" in text
    assert "identity" not in text.split("\n", 3)[-1]


def test_a_renamed_class_is_named_as_such() -> None:
    """A saved state with the same identity under another class name is reported as a renamed class."""
    text = _mismatch({"Gauge{'what': 'loss'}": {"n": 1}}, Meter("loss"))
    assert "under another class name: the class was renamed" in text
    assert "identity value changed" not in text and "removed since the save" not in text


def test_a_changed_identity_a_new_and_a_removed_callback_are_each_named() -> None:
    """Each cause the keys show gets its own line: identity changed, added since the save, removed since."""
    saved = {"Meter{'what': 'los'}": {"n": 1}, "Other{'x': 1}": {}}
    text = _mismatch(saved, Meter("loss"), Gauge("acc"))
    tail = text.splitlines()[-3:]
    assert tail[0].startswith("1 callback(s) have a saved state of their class under another identity")
    assert tail[1].startswith("1 callback(s) have no state of their class saved: added since the save")
    assert tail[2].startswith("1 saved state(s) have no callback of their class here: removed since the save")


def test_causes_scale_with_the_number_of_saved_keys() -> None:
    """A file with 200,000 unclaimed keys is described by counting, not by comparing every pair."""
    saved = {f"Other{{'i': {i}}}": {} for i in range(200_000)}
    text = _mismatch(saved, *[Meter(str(i)) for i in range(200)])
    assert "200 callback(s) have no state of their class saved" in text
    assert "200000 saved state(s) have no callback of their class here" in text


def test_a_note_on_the_saved_states_is_said_once_per_restore() -> None:
    """Saved(note=...) opens the partial-restore warning or the StateMismatchError, or is a warning alone when all matched: one per restore."""
    note = "run/checkpoint-4: has no callbacks.callstate"
    for states, expected in (({}, "Restore was partial"), ({"Gauge{'what': 'loss'}": {"n": 3}}, None)):
        registry = callstate.CallbackRegistry([Gauge("loss")])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            registry.begin_restore(Saved(states, note=note), strict=False).apply()
        said = [str(w.message) for w in caught]
        assert len(said) == 1 and said[0].startswith(note + ("\n" if expected else "")), said
        assert (expected in said[0]) if expected else said[0] == note
    with pytest.raises(callstate.StateMismatchError, match=f"^{note}\nStrict restore refused"):
        callstate.CallbackRegistry([Gauge("loss")]).begin_restore(Saved({}, note=note), strict=True)
