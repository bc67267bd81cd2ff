"""CallbackRegistry: membership, duplicate keys, gathering and restoring states, losing none."""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Hashable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import Box, Counter, Stateless, identity_values, keys, run_epochs, states

import callstate

EPOCHS = "Counter{'what': 'epochs'}"
BATCHES = "Counter{'what': 'batches'}"


class Spy(Box):
    """A Box counting its state_dict calls too."""

    def __init__(self, value: Any = None) -> None:
        super().__init__(value)
        self.dumps = 0

    def state_dict(self) -> dict[str, Any]:
        self.dumps += 1
        return super().state_dict()


def boxes(registry: callstate.CallbackRegistry, *names: str, cls: type[Box] = Box) -> list[Box]:
    """Register one fresh box per name under that key, and return them."""
    made = [cls(name) for name in names]
    for name, b in zip(names, made, strict=True):
        registry.register(b, key=name)
    return made


# --- the example of the issue -----------------------------------------------------------------------


def test_done_when_example() -> None:
    """After 2 epochs of 16 batches the states are exactly the reference's, and fresh instances get them."""
    registry = callstate.CallbackRegistry([Counter("epochs"), Counter("batches")])
    assert list(registry.keys()) == [EPOCHS, BATCHES]
    run_epochs(registry, epochs=2, batches=16)
    states = registry.state_dict()
    assert states == {EPOCHS: {"epochs": 2, "batches": 0}, BATCHES: {"epochs": 0, "batches": 32}}

    fresh_epochs, fresh_batches = Counter("epochs"), Counter("batches", verbose=False)
    fresh = callstate.CallbackRegistry([fresh_batches, fresh_epochs])
    report = fresh.load_state_dict(states, strict=True)
    assert fresh_epochs.state == {"epochs": 2, "batches": 0}
    assert fresh_batches.state == {"epochs": 0, "batches": 32}
    assert report == callstate.RestoreReport(restored=(BATCHES, EPOCHS))
    assert fresh.state_dict() == states


# --- registration and membership --------------------------------------------------------------------


def test_register_returns_key() -> None:
    """register returns the natural key, or the explicit key= when given."""
    registry = callstate.CallbackRegistry()
    assert registry.register(Counter("epochs")) == EPOCHS
    assert registry.register(Counter("epochs"), key="second") == "second"
    assert registry.keys() == [EPOCHS, "second"]


def test_register_argument_types() -> None:
    """key= must be a str and aliases= strs; one str alias is accepted as a single alias."""
    registry = callstate.CallbackRegistry()
    with pytest.raises(TypeError, match=r"key= must be a str, got 3\."):
        registry.register(Box(), key=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"aliases= must be strs, got \('a', 1\)\."):
        registry.register(Box(), aliases=("a", 1))  # type: ignore[arg-type]
    b = Box()
    registry.register(b, key="b", aliases="old")
    registry.load_state_dict({"old": {"value": 1}}, strict=True)
    assert b.value == 1
    assert len(registry) == 1


def test_duplicate_key_at_registration() -> None:
    """A second object with the same key raises DuplicateKeyError naming both and the differing fields."""
    first, second = Counter("epochs"), Counter("epochs", verbose=False)
    registry = callstate.CallbackRegistry([first])
    with pytest.raises(callstate.DuplicateKeyError) as e:
        registry.register(second)
    assert e.value.key == EPOCHS
    assert e.value.callbacks == (first, second)
    message = str(e.value)
    assert message.startswith(
        f"State key {EPOCHS!r} is shared by callback #0 Counter(what='epochs', verbose=True"
    )
    assert "callback #1 Counter(what='epochs', verbose=False" in message
    assert (
        "the fields that differ between them are ('verbose',): add one to identity=, or pass key=" in message
    )
    assert isinstance(e.value, ValueError)
    assert list(registry) == [first]


def test_duplicate_key_in_constructor() -> None:
    """The constructor raises DuplicateKeyError for two callbacks with one key."""
    with pytest.raises(callstate.DuplicateKeyError, match=re.escape(f"State key {EPOCHS!r} is shared")):
        callstate.CallbackRegistry([Counter("epochs"), Counter("epochs")])


def test_duplicate_without_differing_fields() -> None:
    """When no public attribute differs, the message says to pass key=."""
    a, b = Box(1), Box(1)
    with pytest.raises(
        callstate.DuplicateKeyError,
        match=r"shared by callback #0 Box\(value=1, loads=0\) and callback #1 Box\(value=1, loads=0\); "
        r"no public attribute differs between them: pass key= explicitly\.$",
    ) as e:
        callstate.CallbackRegistry([a, b])
    assert e.value.callbacks == (a, b)
    assert e.value.key == "Box"


def test_duplicate_uses_custom_repr() -> None:
    """A class with its own __repr__ is named by it in the message."""

    class Named(Box):
        def __repr__(self) -> str:
            return f"Named<{self.value}>"

    with pytest.raises(callstate.DuplicateKeyError, match=r"callback #0 Named<1> and callback #1 Named<2>"):
        callstate.CallbackRegistry([Named(1), Named(2)])


def test_same_object_twice() -> None:
    """Registering one object twice raises DuplicateKeyError, even under another key."""
    c = Counter("epochs")
    registry = callstate.CallbackRegistry([c])
    with pytest.raises(
        callstate.DuplicateKeyError,
        match=r"callback #0 Counter\(.*\) is already registered; register each object once\.",
    ) as e:
        registry.register(c, key="other")
    assert e.value.callbacks == (c, c)
    assert len(registry) == 1


def test_explicit_key_collision() -> None:
    """An explicit key= equal to another callback's key raises DuplicateKeyError."""
    registry = callstate.CallbackRegistry([Counter("epochs")])
    with pytest.raises(callstate.DuplicateKeyError) as e:
        registry.register(Box(), key=EPOCHS)
    assert e.value.key == EPOCHS
    assert "add one to identity=, or pass key= explicitly" in str(e.value)


def test_unregister_by_object_and_key() -> None:
    """unregister takes the object or its key and returns the object."""
    a, b = Counter("epochs"), Counter("batches")
    registry = callstate.CallbackRegistry([a, b])
    assert registry.unregister(BATCHES) is b
    assert registry.unregister(a) is a
    assert len(registry) == 0


def test_unregister_unknown() -> None:
    """Unknown keys and objects raise NotRegisteredError (a KeyError) with the closest keys."""
    registry = callstate.CallbackRegistry([Counter("epochs")])
    with pytest.raises(
        callstate.errors.NotRegisteredError,
        match=re.escape(
            f"No callback is registered under key \"Counter{{'what': 'epoch'}}\". Closest: {EPOCHS!r}."
        ),
    ) as e:
        registry.unregister("Counter{'what': 'epoch'}")
    assert e.value.key == "Counter{'what': 'epoch'}"
    assert isinstance(e.value, KeyError)
    stranger = Box()
    with pytest.raises(callstate.errors.NotRegisteredError, match=r"Box object .* is not registered\.") as e2:
        registry.unregister(stranger)
    assert e2.value.key is stranger


def test_contains_getitem_iter_len_keys_items() -> None:
    """in (key or object), [key], iteration in registration order, len, keys() and items()."""
    a, s, b = Counter("epochs"), Stateless(), Counter("batches")
    registry = callstate.CallbackRegistry([a, s, b])
    assert EPOCHS in registry and a in registry and s in registry and "Stateless" in registry
    assert "Counter" not in registry and Counter("epochs") not in registry
    assert registry[BATCHES] is b and registry["Stateless"] is s
    with pytest.raises(callstate.errors.NotRegisteredError, match="No callback is registered under key 'nope'"):
        registry["nope"]
    assert list(registry) == [a, s, b]
    assert len(registry) == 3
    assert registry.keys() == [EPOCHS, "Stateless", BATCHES]
    assert registry.items() == [(EPOCHS, a), ("Stateless", s), (BATCHES, b)]
    assert repr(registry) == f"CallbackRegistry([{EPOCHS!r}, 'Stateless', {BATCHES!r}])"


def test_stateless_callbacks_carry_no_state() -> None:
    """Stateless objects register and dispatch, but are neither saved nor reported missing."""
    s = Stateless()
    registry = callstate.CallbackRegistry([s, Counter("epochs")])
    assert not isinstance(s, callstate.Stateful)
    assert list(registry.state_dict()) == [EPOCHS]
    report = registry.load_state_dict({EPOCHS: {"epochs": 1}}, strict=True)
    assert report.missing == () and report.restored == (EPOCHS,)


# --- keys recomputed ----------------------------------------------------------------------------------


def test_keys_follow_identity_changes() -> None:
    """keys(), in and [key] use the identity values of now, not of registration."""
    c = Counter("epochs")
    registry = callstate.CallbackRegistry([c])
    c.what = "steps"
    assert registry.keys() == ["Counter{'what': 'steps'}"]
    assert registry["Counter{'what': 'steps'}"] is c
    assert EPOCHS not in registry


def test_collision_after_mutation_blocks_save_and_restore() -> None:
    """An identity change that makes two keys collide raises DuplicateKeyError before any state moves."""

    class SpyCounter(Counter):
        def __init__(self, what: str) -> None:
            super().__init__(what)
            self.calls = 0

        def state_dict(self) -> dict[str, int]:
            self.calls += 1
            return super().state_dict()

        def load_state_dict(self, state: dict[str, int]) -> None:
            self.calls += 1
            super().load_state_dict(state)

    a, b = SpyCounter("epochs"), SpyCounter("batches")
    registry = callstate.CallbackRegistry([a, b])
    b.what = "epochs"
    key = SpyCounter.__qualname__ + "{'what': 'epochs'}"
    for action in (registry.state_dict, lambda: registry.load_state_dict({key: {"epochs": 9}})):
        with pytest.raises(
            callstate.DuplicateKeyError, match=re.escape(f"State key {key!r} is shared by callback #0")
        ) as e:
            action()
        assert e.value.callbacks == (a, b)
        assert str(e.value).endswith("no public attribute differs between them: pass key= explicitly.")
    assert a.calls == b.calls == 0
    assert a.state == b.state == {"epochs": 0, "batches": 0}


# --- state_dict ---------------------------------------------------------------------------------------


def test_state_dict_order_empty_states_and_unclaimed() -> None:
    """state_dict has every stateful callback in order, empty states included, then unclaimed states."""

    class Empty:
        def state_dict(self) -> dict[str, Any]:
            return {}

        def load_state_dict(self, state: dict[str, Any]) -> None:
            pass

    registry = callstate.CallbackRegistry()
    registry.register(Box(2), key="z")
    registry.register(Empty(), key="empty")
    registry.register(Box(1), key="a")
    with pytest.warns(callstate.CallstateWarning):
        registry.load_state_dict({"z": {"value": 2}, "gone": {"x": 1}})
    saved = registry.state_dict()
    assert list(saved) == ["z", "empty", "a", "gone"]
    assert saved == {"z": {"value": 2}, "empty": {}, "a": {"value": 1}, "gone": {"x": 1}}


def test_callback_key_equal_to_unclaimed_key_raises() -> None:
    """A callback whose key became an unclaimed state's key raises DuplicateKeyError, dropping neither."""
    c = Counter("batches")
    registry = callstate.CallbackRegistry([c])
    with pytest.warns(callstate.CallstateWarning):
        registry.load_state_dict({EPOCHS: {"epochs": 7}})
    c.what = "epochs"
    with pytest.raises(
        callstate.DuplicateKeyError, match=re.escape(f"State key {EPOCHS!r} of callback #0 Counter(")
    ) as e:
        registry.state_dict()
    assert "registry.discard_unclaimed" in str(e.value)
    assert e.value.key == EPOCHS and e.value.callbacks == (c,)
    registry.load_state_dict({EPOCHS: registry.unclaimed[EPOCHS]}, strict=True)
    assert c.state == {"epochs": 7, "batches": 0}
    assert registry.state_dict() == {EPOCHS: {"epochs": 7, "batches": 0}}


# --- load_state_dict: lookup -----------------------------------------------------------------------


def test_lookup_by_alias() -> None:
    """A state saved under an alias is found, and reported in renamed; the key wins over an alias."""
    registry = callstate.CallbackRegistry()
    new = Box()
    registry.register(new, key="new", aliases=("older", "old"))
    report = registry.load_state_dict({"old": {"value": "o"}}, strict=True)
    assert new.value == "o"
    assert report.restored == ("new",) and dict(report.renamed) == {"new": "old"}
    with pytest.warns(callstate.CallstateWarning, match="'old'"):
        report2 = registry.load_state_dict({"new": {"value": "n"}, "old": {"value": "o"}})
    assert new.value == "n"
    assert dict(report2.renamed) == {} and report2.unexpected == ("old",)


def test_lookup_by_legacy_qualname() -> None:
    """A bare class qualname key (an old checkpoint) restores the only callback of that class."""
    c = Counter("epochs")
    registry = callstate.CallbackRegistry([c, Box()])
    with pytest.warns(callstate.CallstateWarning, match="'Box'"):
        report = registry.load_state_dict({"Counter": {"epochs": 4}})
    assert c.state["epochs"] == 4
    assert dict(report.renamed) == {EPOCHS: "Counter"}
    assert report.missing == ("Box",)


def test_lookup_by_legacy_class_object() -> None:
    """A class-object key, as Lightning < 1.5 wrote, restores the only callback of that class."""
    c = Counter("epochs")
    registry = callstate.CallbackRegistry([c])
    report = registry.load_state_dict({Counter: {"epochs": 5}}, strict=True)
    assert c.state["epochs"] == 5
    assert report.renamed[EPOCHS] is Counter


def test_legacy_key_ambiguous_with_two_of_a_class() -> None:
    """With two callbacks of the class, a legacy key is claimed by neither and kept unclaimed."""
    a, b = Counter("epochs"), Counter("batches")
    registry = callstate.CallbackRegistry([a, b])
    with pytest.raises(callstate.StateMismatchError) as e:
        registry.load_state_dict({"Counter": {"epochs": 1}, Counter: {"epochs": 2}}, strict=True)
    assert e.value.unexpected == ("Counter", Counter)
    assert "a class, as Lightning < 1.5 wrote" in str(e.value)
    with pytest.warns(callstate.CallstateWarning):
        report = registry.load_state_dict({"Counter": {"epochs": 1}})
    assert report.restored == () and a.state["epochs"] == 0
    assert dict(registry.unclaimed) == {"Counter": {"epochs": 1}}


# --- strict and non-strict -------------------------------------------------------------------------


def test_strict_mismatch_touches_nothing() -> None:
    """strict=True raises StateMismatchError listing missing, unexpected and close keys, changing nothing."""
    a, b = Counter("epochs"), Counter("batches")
    registry = callstate.CallbackRegistry([a, b])
    saved = {EPOCHS: {"epochs": 3}, "Counter{'what': 'batch'}": {"batches": 3}, "Other": {}}
    with pytest.raises(callstate.StateMismatchError) as e:
        registry.load_state_dict(saved, strict=True)
    assert e.value.missing == (BATCHES,)
    assert e.value.unexpected == ("Counter{'what': 'batch'}", "Other")
    assert isinstance(e.value, KeyError)
    assert str(e.value) == (
        "Strict restore refused; nothing was changed.\n"
        "1 stateful callback(s) have no saved state:\n"
        f"  {BATCHES!r} (closest saved: \"Counter{{'what': 'batch'}}\")\n"
        "2 saved state(s) have no callback to claim them:\n"
        "  \"Counter{'what': 'batch'}\"\n"
        "  'Other'\n"
        "1 callback(s) have a saved state of their class under another identity: an identity value changed. "
        "Pass the old key in aliases= when registering, or rename the key in the checkpoint (callstate rename).\n"
        "1 saved state(s) have no callback of their class here: removed since the save, or not registered (yet)."
    )
    assert a.state == b.state == {"epochs": 0, "batches": 0}
    assert dict(registry.unclaimed) == {}


def test_strict_unexpected_only() -> None:
    """strict=True also refuses a state that no callback claims."""
    registry = callstate.CallbackRegistry([Counter("epochs")])
    with pytest.raises(callstate.StateMismatchError, match=r"1 saved state\(s\) have no callback") as e:
        registry.load_state_dict({EPOCHS: {}, "extra": {}}, strict=True)
    assert e.value.missing == () and e.value.unexpected == ("extra",)
    assert "have no saved state" not in str(e.value)


def test_non_strict_warns_once_and_reports() -> None:
    """strict=False restores what matches, warns exactly once, and reports missing and unexpected."""
    a, b = Counter("epochs"), Counter("batches")
    registry = callstate.CallbackRegistry([a, b])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = registry.load_state_dict({EPOCHS: {"epochs": 3}, "Counter{'what': 'batch'}": {"batches": 1}})
    assert len(caught) == 1
    (w,) = caught
    assert w.category is callstate.CallstateWarning
    assert w.filename == __file__
    text = str(w.message)
    assert text.startswith("Restore was partial.\n1 stateful callback(s) have no saved state:\n")
    assert f"{BATCHES!r} (closest saved: \"Counter{{'what': 'batch'}}\")" in text
    assert text.endswith(
        "Unclaimed states are kept and saved again; a callback registered later receives its own."
    )
    assert report.restored == (EPOCHS,)
    assert report.missing == (BATCHES,)
    assert report.unexpected == ("Counter{'what': 'batch'}",)
    assert dict(report.renamed) == {}
    assert a.state["epochs"] == 3 and b.state["batches"] == 0


def test_full_match_does_not_warn() -> None:
    """A restore where everything matches emits no warning."""
    registry = callstate.CallbackRegistry([Counter("epochs")])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = registry.load_state_dict({EPOCHS: {"epochs": 1}})
    assert report.restored == (EPOCHS,) and not report.missing and not report.unexpected


def test_load_requires_a_mapping() -> None:
    """A non-mapping raises TypeError naming the type."""
    with pytest.raises(TypeError, match=r"load_state_dict expects a mapping of key -> state, got list\."):
        callstate.CallbackRegistry().load_state_dict([("a", 1)])  # type: ignore[arg-type]


# --- atomicity ----------------------------------------------------------------------------------------


def test_atomic_rollback() -> None:
    """A failing load_state_dict puts every callback back and raises RestoreError with the cause chained."""
    registry = callstate.CallbackRegistry()
    a, b, c = boxes(registry, "a", "b", "c")
    saved = {"a": {"value": 1}, "b": {"value": 2, "poison": True}, "c": {"value": 3}}
    with pytest.raises(callstate.RestoreError) as e:
        registry.load_state_dict(saved)
    assert (a.value, b.value, c.value) == ("a", "b", "c")
    assert e.value.key == "b"
    assert isinstance(e.value.__cause__, ValueError)
    assert "poisoned state" in str(e.value.__cause__)
    assert e.value.rolled_back == ("b", "a")
    assert isinstance(e.value, RuntimeError)
    assert str(e.value) == (
        "Box.load_state_dict raised ValueError: poisoned state {'value': 2, 'poison': True} while restoring "
        "'b'; every callback restored in this call (1) has its previous state back. Fix the state or the "
        "callback, then restore again."
    )
    assert c.loads == 0
    assert dict(registry.unclaimed) == {}


def test_failing_callback_unchanged_is_not_reloaded() -> None:
    """A callback that raised without changing is not called again; only the others are put back."""

    class Refuses(Box):
        def load_state_dict(self, state: dict[str, Any]) -> None:
            self.loads += 1
            raise KeyError("refused")

    registry = callstate.CallbackRegistry()
    (a,) = boxes(registry, "a")
    r = Refuses("r")
    registry.register(r, key="r")
    with pytest.raises(callstate.RestoreError, match="every callback restored in this call") as e:
        registry.load_state_dict({"a": {"value": 1}, "r": {"value": 2}})
    assert e.value.rolled_back == ("a",)
    assert isinstance(e.value.__cause__, KeyError)
    assert r.loads == 1 and a.value == "a"


def test_rollback_that_fails_too() -> None:
    """If putting a callback back fails too, RestoreError says which ones are in an unknown state."""

    class Broken(Box):
        def load_state_dict(self, state: dict[str, Any]) -> None:
            self.value = "half"
            raise OSError("disk")

    registry = callstate.CallbackRegistry()
    (a,) = boxes(registry, "a")
    registry.register(Broken("x"), key="x")
    with pytest.raises(
        callstate.RestoreError, match=r"putting back the previous state failed too for 'x' \(OSError: disk\)"
    ) as e:
        registry.load_state_dict({"a": {"value": 1}, "x": {"value": 2}})
    assert e.value.key == "x"
    assert isinstance(e.value.__cause__, OSError)
    assert e.value.rolled_back == ("a",)
    assert a.value == "a"


def test_non_atomic_keeps_earlier_restores() -> None:
    """atomic=False leaves callbacks restored before the failure with their new state."""
    registry = callstate.CallbackRegistry()
    a, _ = boxes(registry, "a", "b")
    with pytest.raises(
        callstate.RestoreError, match=r"1 callback\(s\) before it were restored and keep their new state"
    ) as e:
        registry.load_state_dict({"a": {"value": 1}, "b": {"value": 2, "poison": True}}, atomic=False)
    assert e.value.rolled_back == ()
    assert a.value == 1


def test_uncopyable_state_raises_before_any_change() -> None:
    """A state that cannot be copied raises RestoreError naming its key before any callback changes."""
    registry = callstate.CallbackRegistry()
    a, b = boxes(registry, "a", "b")

    class NoCopy:
        def __reduce__(self) -> Any:
            raise TypeError("no copies")

        def __deepcopy__(self, memo: Any) -> Any:
            raise TypeError("no copies")

    with pytest.raises(
        callstate.RestoreError, match=r"The saved state for 'b' cannot be copied .*; nothing was restored\."
    ) as e:
        registry.load_state_dict({"a": {"value": 1}, "b": {"value": NoCopy()}})
    assert e.value.key == "b"
    assert a.loads == b.loads == 0


# --- ownership -------------------------------------------------------------------------------------


def test_each_callback_owns_its_state() -> None:
    """Callbacks get neither the caller's objects nor one shared with another callback; input is unchanged."""
    registry = callstate.CallbackRegistry()
    a, b = boxes(registry, "a", "b")
    shared = {"nested": [1, 2]}
    saved = {"a": {"value": shared}, "b": {"value": shared}}
    registry.load_state_dict(saved, strict=True)
    assert a.value == b.value == shared
    assert a.value is not shared and b.value is not shared and a.value is not b.value
    assert a.value["nested"] is not shared["nested"]
    a.value["nested"].append(3)
    assert shared == {"nested": [1, 2]} and b.value == {"nested": [1, 2]}
    assert saved == {"a": {"value": shared}, "b": {"value": shared}}


def test_encoded_state_is_decoded_for_callbacks_and_kept_for_unclaimed() -> None:
    """An EncodedState is decoded for its callback and kept encoded, as is, when unclaimed."""
    decoded: list[Any] = []

    def decoder(e: callstate.EncodedState) -> Any:
        decoded.append(e)
        return {"value": b"".join(e.parts).decode()}

    mine = callstate.EncodedState(codec="pickle", parts=(b"hello",), checksum=1, decoder=decoder)
    theirs = callstate.EncodedState(codec="pickle", parts=(b"other",), checksum=2, decoder=decoder)
    registry = callstate.CallbackRegistry()
    (a,) = boxes(registry, "a")
    with pytest.warns(callstate.CallstateWarning):
        registry.load_state_dict({"a": mine, "z": theirs})
    assert a.value == "hello"
    assert decoded == [mine]
    assert registry.unclaimed["z"] is theirs
    assert registry.state_dict()["z"] == theirs.to_plain()


# --- unclaimed ----------------------------------------------------------------------------------------


def test_unclaimed_is_read_only_and_survives_cycles() -> None:
    """Unclaimed states are a read-only mapping, and are saved again after any number of restores."""
    registry = callstate.CallbackRegistry([Counter("epochs")])
    with pytest.warns(callstate.CallstateWarning):
        registry.load_state_dict({EPOCHS: {"epochs": 1}, "ghost": {"g": 1}})
    with pytest.raises(TypeError):
        registry.unclaimed["x"] = 1  # type: ignore[index]
    for _ in range(3):
        saved = registry.state_dict()
        assert saved["ghost"] == {"g": 1}
        fresh = callstate.CallbackRegistry([Counter("epochs")])
        with pytest.warns(callstate.CallstateWarning, match="'ghost'"):
            fresh.load_state_dict(saved)
        registry = fresh
    # A restore without it keeps it too.
    registry.load_state_dict({EPOCHS: {"epochs": 2}})
    assert dict(registry.unclaimed) == {"ghost": {"g": 1}}
    assert registry.state_dict() == {EPOCHS: {"epochs": 2, "batches": 0}, "ghost": {"g": 1}}
    assert repr(registry) == f"CallbackRegistry([{EPOCHS!r}], 1 unclaimed)"


def test_unclaimed_is_a_private_copy() -> None:
    """Changing the caller's mapping after a restore does not change the kept unclaimed state."""
    registry = callstate.CallbackRegistry()
    ghost = {"g": [1]}
    with pytest.warns(callstate.CallstateWarning):
        registry.load_state_dict({"ghost": ghost})
    ghost["g"].append(2)
    assert registry.unclaimed["ghost"] == {"g": [1]}


def test_discard_unclaimed() -> None:
    """discard_unclaimed drops chosen keys, or all; an absent key raises and drops nothing."""
    registry = callstate.CallbackRegistry()
    with pytest.warns(callstate.CallstateWarning):
        registry.load_state_dict({"x": 1, "y": 2, "z": 3})
    with pytest.raises(
        callstate.errors.NotRegisteredError,
        match=r"Cannot discard \['nope'\]: not among the unclaimed states \['x', 'y', 'z'\]\.",
    ) as e:
        registry.discard_unclaimed(["x", "nope"])
    assert e.value.key == "nope"
    assert list(registry.unclaimed) == ["x", "y", "z"]
    registry.discard_unclaimed(["y"])
    assert list(registry.state_dict()) == ["x", "z"]
    registry.discard_unclaimed()
    assert registry.state_dict() == {}


def test_unclaimed_delivered_at_registration() -> None:
    """A callback registered later whose key (or alias) matches an unclaimed state receives it then."""
    registry = callstate.CallbackRegistry()
    with pytest.warns(callstate.CallstateWarning):
        registry.load_state_dict({EPOCHS: {"epochs": 2}, "old-box": {"value": 9}})
    c = Counter("epochs")
    assert registry.register(c) == EPOCHS
    assert c.state == {"epochs": 2, "batches": 0}
    b = Box()
    registry.register(b, key="box", aliases=("old-box",))
    assert b.value == 9
    assert dict(registry.unclaimed) == {}
    assert registry.state_dict() == {EPOCHS: {"epochs": 2, "batches": 0}, "box": {"value": 9}}


def test_failed_delivery_registers_nothing() -> None:
    """If the delivered state fails to load, RestoreError is raised, and the object is not registered."""
    registry = callstate.CallbackRegistry()
    with pytest.warns(callstate.CallstateWarning):
        registry.load_state_dict({"b": {"value": 1, "poison": True}})
    b = Box("before")
    with pytest.raises(callstate.RestoreError, match="while restoring 'b'") as e:
        registry.register(b, key="b")
    assert isinstance(e.value.__cause__, ValueError)
    assert b.value == "before"
    assert len(registry) == 0
    assert "b" in registry.unclaimed


# --- properties ---------------------------------------------------------------------------------------


@st.composite
def saved_mappings(draw: st.DrawFn) -> dict[str, Any]:
    """A {key: Box state} mapping with distinct keys."""
    names = draw(st.lists(keys, unique=True, max_size=6))
    return {k: {"value": draw(states)} for k in names}


@callstate.stateful(identity=("tag",))
class Tagged(Box):
    """A Box told apart by an identity value."""

    def __init__(self, tag: Any, value: Any = None) -> None:
        super().__init__(value)
        self.tag = tag


# A callback spec: (kind, key or identity value, state value); build() makes a fresh instance of it.
Spec = tuple[str, Any, Any]


def build(spec: Spec, registry: callstate.CallbackRegistry, *, with_state: bool) -> object:
    kind, param, value = spec
    v = value if with_state else None
    if kind == "tagged":
        obj: object = Tagged(param, v)
        registry.register(obj)
    elif kind == "box":
        obj = Box(v)
        registry.register(obj, key=param)
    else:
        obj = Stateless()
        registry.register(obj, key=param)
    return obj


def spec_key(spec: Spec) -> str:
    kind, param, _ = spec
    return f"Tagged{ {'tag': param}!r}" if kind == "tagged" else str(param)


specs = st.lists(
    st.one_of(
        st.tuples(st.just("tagged"), identity_values, states),
        st.tuples(st.just("box"), keys, states),
        st.tuples(st.just("stateless"), keys, st.none()),
    ),
    unique_by=spec_key,
    max_size=7,
)


@given(callbacks=specs, data=st.data())
def test_random_registries_round_trip(callbacks: list[Spec], data: st.DataObject) -> None:
    """Any registry's states restore strictly into fresh instances, in any order, which save the same."""
    source = callstate.CallbackRegistry()
    for spec in callbacks:
        build(spec, source, with_state=True)
    saved = source.state_dict()
    expected = {spec_key(c): {"value": c[2]} for c in callbacks if c[0] != "stateless"}
    assert saved == expected
    assert list(saved) == list(expected)
    frozen = pickle.dumps(saved)

    fresh = callstate.CallbackRegistry()
    for spec in data.draw(st.permutations(callbacks)):
        build(spec, fresh, with_state=False)
    report = fresh.load_state_dict(saved, strict=True)
    assert set(report.restored) == set(expected)
    assert report.missing == report.unexpected == ()
    assert fresh.state_dict() == expected
    assert pickle.dumps(saved) == frozen  # the input was not changed


@given(
    saved=saved_mappings(),
    data=st.data(),
    cycles=st.integers(min_value=1, max_value=4),
)
def test_unclaimed_survive_any_number_of_cycles(
    saved: dict[str, Any], data: st.DataObject, cycles: int
) -> None:
    """States no callback claims are saved again, unchanged, after any number of load/save cycles."""
    claimed = data.draw(st.sets(st.sampled_from(sorted(saved))) if saved else st.just(set()))
    unclaimed = {k: v for k, v in saved.items() if k not in claimed}
    current: dict[Hashable, Any] = dict(saved)
    for _ in range(cycles):
        registry = callstate.CallbackRegistry()
        boxes(registry, *sorted(claimed))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", callstate.CallstateWarning)
            report = registry.load_state_dict(current)
        assert set(report.unexpected) == set(unclaimed)
        assert dict(registry.unclaimed) == unclaimed
        current = registry.state_dict()
        assert current == saved


@given(
    values=st.lists(states, min_size=1, max_size=6),
    data=st.data(),
)
def test_failure_at_any_position_changes_nothing(values: list[Any], data: st.DataObject) -> None:
    """A load_state_dict failing at any position leaves every callback, and unclaimed, as it was."""
    n = len(values)
    bad = data.draw(st.integers(min_value=0, max_value=n - 1))
    registry = callstate.CallbackRegistry()
    originals = [f"orig-{i}" for i in range(n)]
    made = [Box(v) for v in originals]
    for i, b in enumerate(made):
        registry.register(b, key=f"k{i}")
    saved: dict[Hashable, Any] = {f"k{i}": {"value": v} for i, v in enumerate(values)}
    saved[f"k{bad}"] = {"value": values[bad], "poison": True}
    saved["extra"] = {"value": 0}
    with pytest.raises(callstate.RestoreError) as e:
        registry.load_state_dict(saved)
    assert e.value.key == f"k{bad}"
    assert [b.value for b in made] == originals
    assert dict(registry.unclaimed) == {}
    assert registry.state_dict() == {f"k{i}": {"value": v} for i, v in enumerate(originals)}


def test_uncopyable_current_state_raises_before_any_change() -> None:
    """If a current state cannot be kept for a rollback, RestoreError names its key and nothing changes."""
    import threading

    class Locked(Box):
        def state_dict(self) -> dict[str, Any]:
            return {"value": self.value, "lock": threading.Lock()}

    registry = callstate.CallbackRegistry()
    (a,) = boxes(registry, "a")
    registry.register(Locked("l"), key="l")
    with pytest.raises(
        callstate.RestoreError,
        match=r"State key 'l': the current state cannot be copied to roll back to \(TypeError: .*\); "
        r"nothing was restored\. Make its state_dict\(\) copyable, or restore with atomic=False\.",
    ) as e:
        registry.load_state_dict({"a": {"value": 1}, "l": {"value": 2}})
    assert e.value.key == "l"
    assert isinstance(e.value.__cause__, TypeError)
    assert a.loads == 0
    registry.load_state_dict({"a": {"value": 1}, "l": {"value": 2}}, atomic=False)
    assert registry["l"].value == 2  # type: ignore[attr-defined]


def test_failing_state_dict_during_snapshot() -> None:
    """A state_dict raising while the rollback copy is made raises RestoreError, changing nothing."""

    class NoSave(Box):
        def state_dict(self) -> dict[str, Any]:
            raise RuntimeError("cannot save now")

    registry = callstate.CallbackRegistry()
    (a,) = boxes(registry, "a")
    registry.register(NoSave(), key="n")
    with pytest.raises(
        callstate.RestoreError,
        match=r"State key 'n': .*NoSave\.state_dict raised RuntimeError: cannot save now",
    ) as e:
        registry.load_state_dict({"a": {"value": 1}, "n": {"value": 2}})
    assert isinstance(e.value.__cause__, RuntimeError)
    assert a.loads == 0


def test_discard_unclaimed_single_str_key() -> None:
    """A single str passed to discard_unclaimed is one key, not a sequence of characters."""
    registry = callstate.CallbackRegistry()
    with pytest.warns(callstate.CallstateWarning):
        registry.load_state_dict({"ghost": 1, "g": 2})
    registry.discard_unclaimed("ghost")
    assert dict(registry.unclaimed) == {"g": 2}


def test_lookup_precedence_key_alias_legacy() -> None:
    """A callback's key beats its aliases, its aliases are tried in order, and both beat a legacy key."""
    registry = callstate.CallbackRegistry()
    b = Box()
    registry.register(b, key="new", aliases=("older", "old"))
    with pytest.warns(callstate.CallstateWarning):
        report = registry.load_state_dict(
            {"Box": {"value": "legacy"}, "old": {"value": 2}, "older": {"value": 1}}
        )
    assert b.value == 1
    assert dict(report.renamed) == {"new": "older"}
    assert report.unexpected == ("Box", "old")
    with pytest.warns(callstate.CallstateWarning):
        report = registry.load_state_dict({"Box": {"value": "legacy"}, "old": {"value": 2}})
    assert b.value == 2 and report.unexpected == ("Box",)
    report = registry.load_state_dict({"Box": {"value": "legacy"}}, strict=True)
    assert b.value == "legacy" and dict(report.renamed) == {"new": "Box"}


def test_repr_survives_a_collision() -> None:
    """repr of a registry whose keys collide says so instead of raising."""
    a, b = Counter("epochs"), Counter("batches")
    registry = callstate.CallbackRegistry([a, b])
    b.what = "epochs"
    assert repr(registry) == "CallbackRegistry([<keys unavailable: DuplicateKeyError>])"
    with pytest.raises(callstate.DuplicateKeyError):
        registry.state_dict()
    assert len(registry) == 2


def test_immutable_states_are_not_copied() -> None:
    """A state nothing can change (str, numbers, tuples of them) is handed over as is; others are copied."""

    class Raw:
        def __init__(self) -> None:
            self.state: Any = None

        def state_dict(self) -> Any:
            return self.state

        def load_state_dict(self, state: Any) -> None:
            self.state = state

    registry = callstate.CallbackRegistry()
    a, b = Raw(), Raw()
    registry.register(a, key="a")
    registry.register(b, key="b")
    frozen = ("x" * 100, (1, 2.5, None), frozenset({3}), b"bytes")
    mixed = ("x", [1])
    registry.load_state_dict({"a": frozen, "b": mixed}, strict=True)
    assert a.state is frozen
    assert b.state == mixed and b.state is not mixed and b.state[1] is not mixed[1]


# --- linear operations (issue 12) -------------------------------------------------------------------


class Counted:
    """A callback whose state_key counts how often it is computed (shared count per class)."""

    computed = 0

    def __init__(self, name: str) -> None:
        self.name = name
        self.state = {"n": 0}

    @property
    def state_key(self) -> str:
        type(self).computed += 1
        return f"Counted[{self.name}]"

    def state_dict(self) -> dict[str, Any]:
        return dict(self.state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = dict(state)


def computed_during(action: Any) -> int:
    Counted.computed = 0
    action()
    return Counted.computed


def test_registering_one_by_one_computes_each_key_a_bounded_number_of_times() -> None:
    """Registering N callbacks one by one computes O(N) keys in all, not O(N^2)."""
    cbs = [Counted(str(i)) for i in range(300)]
    registry = callstate.CallbackRegistry()
    assert computed_during(lambda: [registry.register(cb) for cb in cbs]) <= 2 * len(cbs)
    assert computed_during(lambda: callstate.CallbackRegistry(cbs)) <= 2 * len(cbs)


def test_lookups_compute_a_constant_number_of_keys() -> None:
    """registry[key], `key in registry` and `obj in registry` compute at most a couple of keys each."""
    cbs = [Counted(str(i)) for i in range(300)]
    registry = callstate.CallbackRegistry(cbs)
    assert computed_during(lambda: [registry[f"Counted[{i}]"] for i in range(300)]) <= 2 * 300
    assert computed_during(lambda: [f"Counted[{i}]" in registry for i in range(300)]) <= 2 * 300
    assert computed_during(lambda: [cb in registry for cb in cbs]) == 0
    assert computed_during(lambda: [registry.is_per_rank(cb) for cb in cbs]) == 0


def test_state_dict_restore_and_save_compute_each_key_once() -> None:
    """state_dict, a restore and a save each compute every key exactly once."""
    cbs = [Counted(str(i)) for i in range(50)]
    registry = callstate.CallbackRegistry(cbs)
    states: dict[Hashable, Any] = {}
    assert computed_during(lambda: states.update(registry.state_dict())) == 50
    assert computed_during(lambda: registry.load_state_dict(states, strict=True)) == 50
    assert computed_during(lambda: callstate.dumps(registry)) == 50


def test_keys_follow_identity_changed_after_registration() -> None:
    """A callback whose identity changed is found under its new key and no longer under the old one."""
    a, b = Counter("epochs"), Counter("batches")
    registry = callstate.CallbackRegistry([a, b])
    a.what = "steps"
    assert registry["Counter{'what': 'steps'}"] is a
    assert "Counter{'what': 'epochs'}" not in registry
    assert registry.key_of(a) == "Counter{'what': 'steps'}"
    # A new callback may now take the old key.
    c = Counter("epochs")
    assert registry.register(c) == EPOCHS
    assert registry.keys() == ["Counter{'what': 'steps'}", BATCHES, EPOCHS]


def test_a_clash_made_by_an_identity_change_is_raised_by_the_next_save() -> None:
    """Two callbacks whose identities came to agree make state_dict raise DuplicateKeyError."""
    a, b = Counter("epochs"), Counter("batches")
    registry = callstate.CallbackRegistry([a, b])
    b.what = "epochs"
    with pytest.raises(callstate.DuplicateKeyError, match="is shared by callback #0"):
        registry.state_dict()


def test_unregister_then_register_again() -> None:
    """An unregistered callback's key is free again; order is registration order."""
    a, b = Counter("epochs"), Counter("batches")
    registry = callstate.CallbackRegistry([a, b])
    assert registry.unregister(EPOCHS) is a
    assert EPOCHS not in registry and a not in registry
    registry.register(a)
    assert registry.keys() == [BATCHES, EPOCHS]


# --- what the registry accepts and gives (issue 12) -------------------------------------------------


@pytest.mark.parametrize("bad", [{"k": {"n": 1}}, "callbacks", b"x", 42])
def test_registry_of_something_that_is_not_a_list_of_callbacks_raises(bad: object) -> None:
    """A mapping (states), a str or a number given as the callbacks raises TargetTypeError naming its type."""
    with pytest.raises(callstate.errors.TargetTypeError, match=type(bad).__qualname__) as e:
        callstate.CallbackRegistry(bad)  # type: ignore[arg-type]
    assert e.value.got is type(bad)
    assert isinstance(e.value, TypeError)


def test_every_front_end_takes_a_list_and_refuses_a_number(tmp_path: Any) -> None:
    """save, load, dumps and loads take a list of callbacks; anything else raises TargetTypeError."""
    cb = Counter("epochs")
    data = callstate.dumps([cb])
    assert callstate.loads([Counter("epochs")], data).restored == (EPOCHS,)
    with pytest.raises(callstate.errors.TargetTypeError, match="int"):
        callstate.loads(7, data)  # type: ignore[arg-type]
    with pytest.raises(callstate.errors.TargetTypeError, match="int"):
        callstate.dumps(7)  # type: ignore[arg-type]


def test_state_dict_with_an_encoded_unclaimed_state_is_plain_data() -> None:
    """After a load leaves a state unclaimed, state_dict() pickles, and load_state_dict takes it back byte for byte."""
    data = callstate.dumps({EPOCHS: {"epochs": 3, "batches": 0}, "ghost": {"g": [1, 2.5]}})
    registry = callstate.CallbackRegistry([Counter("epochs")])
    with pytest.warns(callstate.CallstateWarning):
        callstate.loads(registry, data)
    assert isinstance(registry.unclaimed["ghost"], callstate.EncodedState)
    states = pickle.loads(pickle.dumps(registry.state_dict()))
    assert states["ghost"]["callstate:encoded"] == 1
    again = callstate.CallbackRegistry([Counter("epochs")])
    with pytest.warns(callstate.CallstateWarning):
        again.load_state_dict(states)
    kept = again.unclaimed["ghost"]
    assert isinstance(kept, callstate.EncodedState) and kept == registry.unclaimed["ghost"]
    assert callstate.read(callstate.dumps(again))["ghost"] == {"g": [1, 2.5]}
    assert callstate.dumps(again) == callstate.dumps(registry)
    # A callback registered later decodes it.
    ghost = Box()
    ghost.load_state_dict = lambda state: setattr(ghost, "value", state)  # type: ignore[method-assign]
    again.register(ghost, key="ghost")
    assert ghost.value == {"g": [1, 2.5]}


def test_a_damaged_plain_encoded_state_is_refused() -> None:
    """A state marked as the plain form of an encoded state but altered raises CorruptCheckpointError."""
    data = callstate.dumps({"ghost": {"g": 1}})
    registry = callstate.CallbackRegistry()
    with pytest.warns(callstate.CallstateWarning):
        callstate.loads(registry, data)
    plain = registry.state_dict()["ghost"]
    registry2 = callstate.CallbackRegistry()
    with pytest.raises(callstate.CorruptCheckpointError, match="callstate:encoded"):
        registry2.load_state_dict({"ghost": {**plain, "parts": "nope"}})
    assert dict(registry2.unclaimed) == {}
    with pytest.raises(callstate.CorruptCheckpointError, match=r"checksum|damaged"):
        callstate.dumps({"ghost": {**plain, "checksum": (plain["checksum"] + 1) % (1 << 32)}})


def test_a_failed_key_computation_leaves_the_index_as_it_was() -> None:
    """After keys() raised on a transient clash, unregistering one callback leaves no stale lookup behind."""
    a, b, c = Counter("a"), Counter("b"), Counter("c")
    registry = callstate.CallbackRegistry([a, b, c])
    a.what = c.what = "x"
    with pytest.raises(callstate.DuplicateKeyError):
        registry.keys()
    c.what = "c"
    assert registry.unregister(a) is a
    a.what = "a"
    key = callstate.state_key(a)
    assert key not in registry and a not in registry
    with pytest.raises(callstate.errors.NotRegisteredError):
        registry[key]
    assert registry.register(Counter("a")) == key
    assert registry.keys() == ["Counter{'what': 'b'}", "Counter{'what': 'c'}", key]


def test_discarding_an_unhashable_key_is_a_not_registered_error() -> None:
    """discard_unclaimed with a key that cannot be a key raises NotRegisteredError, dropping nothing."""
    registry = callstate.CallbackRegistry()
    with pytest.warns(callstate.CallstateWarning):
        registry.load_state_dict({"x": 1})
    with pytest.raises(callstate.errors.NotRegisteredError):
        registry.discard_unclaimed([["x"]])  # type: ignore[list-item]
    assert dict(registry.unclaimed) == {"x": 1}


def test_saving_something_that_is_not_callbacks_nor_states_says_what_it_takes(tmp_path: Any) -> None:
    """save(5, path) names what it takes: a registry, a list of callbacks or a mapping."""
    with pytest.raises(callstate.errors.TargetTypeError, match=r"a registry, a list of callbacks or a mapping"):
        callstate.save(5, tmp_path / "x.callstate")  # type: ignore[arg-type]


@pytest.mark.parametrize("reserved", ["callstate:versions", "callstate:distributed"])
def test_register_refuses_the_keys_of_callstate_s_own_entries(reserved: str) -> None:
    """A callback under (or aliased to) the versions or the manifest key is refused at register."""
    registry = callstate.CallbackRegistry()
    box = Box(1)
    with pytest.raises(callstate.DuplicateKeyError, match="another key=") as caught:
        registry.register(box, key=reserved)
    assert (caught.value.key, caught.value.callbacks) == (reserved, (box,))
    with pytest.raises(callstate.DuplicateKeyError):
        registry.register(box, aliases=[reserved])
    assert registry.keys() == []


def test_a_pickled_or_deep_copied_registry_finds_and_restores_its_copied_callbacks() -> None:
    """A registry's copy (pickle, copy.deepcopy) indexes the copied callbacks: in, key_of, unregister and restore work."""
    import copy

    registry = callstate.CallbackRegistry([Counter("a"), Counter("b")])
    for twin in (pickle.loads(pickle.dumps(registry)), copy.deepcopy(registry)):
        copied = [obj for _, obj in twin.items()]
        assert all(obj in twin for obj in copied) and twin.key_of(copied[0]) == registry.keys()[0]
        twin.load_state_dict(registry.state_dict())
        twin.unregister(copied[1])
        assert twin.keys() == registry.keys()[:1]


def test_an_identity_without_state_warns_once_per_class() -> None:
    """A class declared @stateful(identity=...) with no state warns once at register, naming what is missing."""

    @callstate.stateful(identity=("what",))
    class Forgetful:
        def __init__(self, what: str) -> None:
            self.what = what
            self.count = 0

    with pytest.warns(callstate.errors.NoStateWarning) as caught:
        registry = callstate.CallbackRegistry([Forgetful("a"), Forgetful("b")])
    assert len(caught) == 1
    warning = caught[0].message
    assert isinstance(warning, callstate.errors.NoStateWarning)
    assert warning.key.endswith("Forgetful{'what': 'a'}") and warning.class_name.endswith("Forgetful")
    assert "neither state= nor state_dict/load_state_dict" in str(warning)
    assert registry.state_dict() == {}


def test_a_stateless_class_without_declaration_does_not_warn() -> None:
    """A plain stateless object, or a declared class with state, registers without a warning."""

    @callstate.stateful(identity=("what",), state=("count",))
    class Counted:
        def __init__(self) -> None:
            self.what = "x"
            self.count = 1

    class Plain:
        pass

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        callstate.CallbackRegistry([Counted(), Plain()])
