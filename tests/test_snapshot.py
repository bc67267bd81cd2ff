"""Copies of states: a private copy of an incoming state, and the snapshot a rollback puts back."""

from __future__ import annotations

import os
import pickle
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


def _meminfo_bytes(field: str) -> int:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def test_rollback_memory_is_the_available_memory_less_the_documented_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset, the rollback copy may take MemAvailable less max(MemTotal / 8, 512 MiB); set, the variable's bytes."""
    from callstate._core._snapshot import rollback_memory

    monkeypatch.delenv("CALLSTATE_ROLLBACK_MEMORY", raising=False)
    if not os.path.exists("/proc/meminfo"):
        pytest.skip("no /proc/meminfo on this system: the budget comes from sysconf")
    before = _meminfo_bytes("MemAvailable")
    measured = rollback_memory()
    after = _meminfo_bytes("MemAvailable")
    margin = max(_meminfo_bytes("MemTotal") // 8, 512 << 20)
    # MemAvailable moves with the other processes of the machine between the reads.
    assert min(before, after) - margin - (64 << 20) <= measured <= max(before, after) - margin + (64 << 20)
    monkeypatch.setenv("CALLSTATE_ROLLBACK_MEMORY", "12345")
    assert rollback_memory() == 12345


@pytest.mark.parametrize("value", ["lots", "-1", "1e9"])
def test_a_malformed_rollback_memory_variable_warns_and_is_ignored(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """CALLSTATE_ROLLBACK_MEMORY that is not a byte count warns, naming it, and the available memory decides."""
    from callstate._core._snapshot import rollback_memory

    monkeypatch.setenv("CALLSTATE_ROLLBACK_MEMORY", value)
    with pytest.warns(callstate.CallstateWarning, match=f"CALLSTATE_ROLLBACK_MEMORY='{value}' is not a number of bytes"):
        budget = rollback_memory()
    monkeypatch.delenv("CALLSTATE_ROLLBACK_MEMORY")
    assert abs(budget - rollback_memory()) < 256 << 20


def test_the_report_says_where_the_rollback_copy_was_kept() -> None:
    """RestoreReport.rollback_copy: "memory" for a hand-written callback, "none" without atomic or for @stateful, ignored by ==."""

    @callstate.stateful(state=("items",))
    class Generated:
        def __init__(self) -> None:
            self.items = [1]

    registry = callstate.CallbackRegistry()
    registry.register(Holder(), key="h")
    report = registry.load_state_dict({"h": {"items": [2]}})
    assert report.rollback_copy == pickle.loads(pickle.dumps(report)).rollback_copy == "memory"
    assert registry.load_state_dict({"h": {"items": [3]}}, atomic=False).rollback_copy == "none"
    assert report == callstate.RestoreReport(restored=("h",)), "rollback_copy is not part of equality"
    generated = callstate.CallbackRegistry([Generated()])
    assert generated.load_state_dict(generated.state_dict()).rollback_copy == "none"


def test_plain_previous_states_are_unpickled_only_by_a_rollback(monkeypatch: pytest.MonkeyPatch) -> None:
    """A snapshot of plain data is kept as its pickle: a restore that succeeds never unpickles it,
    and a rollback gets back copies of the states as they were."""
    from callstate._core import _snapshot

    h = Holder()
    h.items = [1, (2.5, "x"), {"k": {3}}]
    loads = []
    real = pickle.loads
    monkeypatch.setattr(_snapshot.pickle, "loads", lambda *a, **k: loads.append(1) or real(*a, **k))
    copies = snapshot(["h"], [h])
    assert not loads, "nothing unpickled before a rollback needs it"
    h.items.append("later")
    assert copies[0] == {"items": [1, (2.5, "x"), {"k": {3}}]} and copies[0]["items"] is not h.items
    assert loads == [1]


class Unloadable:
    """An object whose pickle does not load back (its reconstructor refuses), but which deepcopies."""

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (_refuse, ())

    def __deepcopy__(self, memo: object) -> Unloadable:
        return Unloadable()


def _refuse() -> None:
    raise RuntimeError("cannot be rebuilt")


def test_a_state_whose_pickle_does_not_load_back_is_copied_at_the_snapshot() -> None:
    """A state holding anything but plain data is unpickled when the snapshot is made, so one whose
    pickle does not load back is deep-copied then, not found broken at a rollback."""
    h = Holder()
    h.items = [Unloadable()]  # type: ignore[list-item]
    copies = snapshot(["h"], [h])
    assert isinstance(copies[0]["items"][0], Unloadable) and copies[0]["items"][0] is not h.items[0]
