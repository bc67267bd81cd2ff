"""Copies of states: a private copy of an incoming state, and the snapshot a rollback puts back."""

from __future__ import annotations

import threading

import pytest

import callstate
from callstate._core._snapshot import own, share_objects, snapshot


def test_own_shares_nothing_mutable_and_keeps_immutables() -> None:
    """own() copies anything mutable, nested too, and hands immutable values back as they are."""
    state = {"a": [1, [2]], "t": (1, "x")}
    copy = own(state)
    assert copy == state and copy is not state and copy["a"][1] is not state["a"][1]
    frozen = (1, "x", frozenset({2}))
    assert own(frozen) is frozen


class Holder:
    """A hand-written callback whose loader writes into its list in place."""

    def __init__(self) -> None:
        self.items = [1]

    def state_dict(self) -> dict[str, list[int]]:
        return {"items": self.items}

    def load_state_dict(self, state: dict[str, list[int]]) -> None:
        self.items[:] = state["items"]


def test_snapshot_copies_current_states() -> None:
    """A snapshot holds copies: changing the callbacks' states afterwards does not change it."""
    h = Holder()
    copies = snapshot(["h"], [h])
    h.items.append(2)
    assert list(copies) == [{"items": [1]}]


def test_a_state_that_cannot_be_copied_raises_restore_error() -> None:
    """A current state that neither pickles nor deep-copies raises RestoreError naming its key."""

    class Locked:
        def state_dict(self) -> dict[str, object]:
            return {"lock": threading.Lock()}

    with pytest.raises(callstate.RestoreError, match="cannot be copied to roll back to") as e:
        snapshot(["locked"], [Locked()])
    assert e.value.key == "locked"


@callstate.stateful(state=("weights", "steps"))
class Averaged:
    """A callback whose state methods are the generated ones."""

    def __init__(self, size: int) -> None:
        self.weights = bytearray(size)
        self.steps = 0


def test_a_generated_state_is_kept_without_a_copy() -> None:
    """A @stateful(state=...) callback's previous values are held as they are (its loader only rebinds): no copy."""
    a = Averaged(4 << 20)
    previous = snapshot(["a"], [a])
    assert previous[0]["weights"] is a.weights and len(previous) == 1


def test_only_hand_written_states_are_copied() -> None:
    """Next to a generated state, a hand-written callback's state is still copied (its loader may write in place)."""
    a, h = Averaged(10), Holder()
    previous = snapshot(["a", "h"], [a, h])
    h.items.append(2)
    assert previous[0]["weights"] is a.weights and previous[1] == {"items": [1]}


def test_a_generated_state_kept_without_a_copy_is_rolled_back() -> None:
    """A restore that fails after a @stateful callback took its new state puts its previous values back."""

    class Failing:
        state_key = "failing"

        def state_dict(self) -> dict[str, int]:
            return {}

        def load_state_dict(self, state: dict[str, int]) -> None:
            raise ValueError("no")

    a = Averaged(2 << 20)
    a.weights[:3] = b"old"
    weights = a.weights
    registry = callstate.CallbackRegistry([a, Failing()])
    incoming = {registry.key_of(a): {"weights": bytearray(b"new"), "steps": 5}, "failing": {}}
    with pytest.raises(callstate.RestoreError):
        registry.load_state_dict(incoming)
    assert a.weights is weights and a.weights[:3] == b"old" and a.steps == 0


def test_share_objects_tells_states_holding_one_object() -> None:
    """Plain states apart share nothing; one list, one tensor storage, or an opaque object is shared."""
    torch = pytest.importorskip("torch")
    inner = [1, 2]
    tensor = torch.zeros(4)
    assert not share_objects([{"a": [1, 2], "t": torch.zeros(2)}, {"a": [1, 2], "n": None}, 3])
    assert not share_objects([{"x": inner, "y": inner}, {"z": (1, "s")}])  # twice within one state
    cycle: list[object] = []
    cycle.append(cycle)
    assert not share_objects([cycle, [cycle[:0]]])
    assert share_objects([{"a": inner}, [inner]])
    assert share_objects([{"t": tensor}, {"v": tensor[1:]}])  # a view: one storage
    assert share_objects([{"o": threading.Lock()}])
