"""Registries at scale: many callbacks, and large states (arrays, tensors) restored with rollback."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import callstate

MB = 1 << 20


class InPlace:
    """Copies the incoming arrays into its own (as EMA callbacks often do), then maybe fails."""

    def __init__(self, key: str, make: Any, fail: bool = False) -> None:
        self.state_key = key
        self.weights = make()
        self.fail = fail

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if isinstance(self.weights, np.ndarray):
            self.weights[...] = state["weights"]
        else:
            self.weights.copy_(state["weights"])
        if self.fail:
            raise RuntimeError("boom")


# The two homes of a large rollback copy: memory (the default, when it fits), and a temporary file,
# forced through the documented variable that caps the memory it may take.
BUDGETS = {"memory": None, "file": "0"}


@pytest.fixture(params=sorted(BUDGETS))
def rollback_home(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Where the rollback copy of large buffers must go: "memory" or "file" (CALLSTATE_ROLLBACK_MEMORY=0)."""
    value = BUDGETS[request.param]
    if value is None:
        monkeypatch.delenv("CALLSTATE_ROLLBACK_MEMORY", raising=False)
    else:
        monkeypatch.setenv("CALLSTATE_ROLLBACK_MEMORY", value)
    return str(request.param)


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_rollback_restores_large_states_changed_in_place(lib: str, rollback_home: str) -> None:
    """A failed restore puts back large arrays/tensors that callbacks had overwritten in place, the copy in memory or spilled."""

    def make(value: float) -> Any:
        if lib == "numpy":
            return lambda: np.full(MB, value, dtype=np.float32)  # 4 MB: a large buffer of the copy
        return lambda: torch.full((MB,), value, dtype=torch.float32)

    first, second = InPlace("first", make(1.0)), InPlace("second", make(2.0))
    registry = callstate.CallbackRegistry([first, second])
    data = callstate.dumps({"first": {"weights": make(7.0)()}, "second": {"weights": make(8.0)()}})
    assert callstate.loads(registry, data).rollback_copy == rollback_home
    first.weights[:5] = 1.0
    second.weights[:5] = 2.0
    second.fail = True
    with pytest.raises(callstate.RestoreError, match="'second'") as e:
        callstate.loads(registry, callstate.dumps({"first": {"weights": make(3.0)()}, "second": {"weights": make(4.0)()}}))
    assert e.value.key == "second" and "first" in e.value.rolled_back, e.value.rolled_back
    for cb, before in ((first, make(7.0)()), (second, make(8.0)())):
        before[:5] = 1.0 if cb is first else 2.0
        assert bool((cb.weights == before).all()), f"{cb.state_key} was not put back exactly"


def test_rollback_keeps_tensor_kind_and_grad_flag() -> None:
    """Rolled-back tensors come back as Parameters with requires_grad, like the originals."""

    class Holder:
        state_key = "holder"

        def __init__(self) -> None:
            self.p = torch.nn.Parameter(torch.ones(MB))

        def state_dict(self) -> dict[str, Any]:
            return {"p": self.p}

        def load_state_dict(self, state: dict[str, Any]) -> None:
            self.p = state["p"]
            if not self.p.requires_grad:
                raise ValueError("expects a parameter that requires grad")

    holder = Holder()
    registry = callstate.CallbackRegistry([holder])
    with pytest.raises(callstate.RestoreError, match="'holder'") as e:
        registry.load_state_dict({"holder": {"p": torch.zeros(MB)}})
    assert e.value.key == "holder"
    assert isinstance(holder.p, torch.nn.Parameter) and holder.p.requires_grad, type(holder.p)
    assert float(holder.p.detach().sum()) == MB, "the parameter's values were not put back"


@pytest.mark.parametrize(("budget", "home"), [(8 * MB, "memory"), (6 * MB, "file"), (0, "file")])
def test_large_buffers_of_the_rollback_copy_stay_in_memory_within_the_budget(budget: int, home: str) -> None:
    """The rollback copy keeps buffers of 1 MB and more in memory within its budget, else all in a temp file, and reads them back intact."""
    from callstate._core._snapshot import _pickled_snapshot, kept_in

    big, other, small = np.arange(MB, dtype=np.float32), np.ones(MB, dtype=np.float32), np.arange(10, dtype=np.float32)
    snapshot = _pickled_snapshot([{"big": big, "small": small}, [1, 2], {"other": other}], budget)
    assert kept_in(snapshot) == home and len(snapshot) == 3
    big[:] = -1  # the originals change in place; the copy must not
    other[:] = -1
    restored = list(snapshot)
    assert np.array_equal(restored[0]["big"], np.arange(MB, dtype=np.float32)), "held buffer changed"
    assert np.array_equal(restored[2]["other"], np.ones(MB, dtype=np.float32)), "held buffer changed"
    assert np.array_equal(restored[0]["small"], small) and restored[1] == [1, 2], restored
    assert restored[0]["big"].flags.writeable, "a restored array must be writable"
    assert kept_in(_pickled_snapshot([{"small": small}], 0)) == "memory", "small states stay in memory"


@callstate.stateful(identity=("index",), per_rank=True)
class Ranked:
    def __init__(self, index: int) -> None:
        self.index = index

    def state_dict(self) -> dict[str, int]:
        return {"index": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.index = state["index"]


def test_constructor_matches_registering_one_by_one() -> None:
    """CallbackRegistry(callbacks) gives the same keys, order and per-rank flags as register() in turn."""
    callbacks = [Ranked(i) for i in range(2000)]
    built = callstate.CallbackRegistry(callbacks)
    one_by_one = callstate.CallbackRegistry()
    for cb in callbacks:
        one_by_one.register(cb)
    assert built.keys() == one_by_one.keys() == [f"Ranked{{'index': {i}}}" for i in range(2000)]
    assert list(built) == callbacks
    assert all(built.is_per_rank(cb) for cb in callbacks), "per_rank=True was not taken from @stateful"


@pytest.mark.parametrize("same_object", [False, True])
def test_constructor_raises_the_clash_register_would(same_object: bool) -> None:
    """A key clash (or one object twice) in the constructor raises register()'s DuplicateKeyError."""
    first = Ranked(1)
    callbacks = [first, Ranked(2), first if same_object else Ranked(1)]
    with pytest.raises(callstate.DuplicateKeyError, match=r"callback #0 .* #2|#0 .* already registered") as e:
        callstate.CallbackRegistry(callbacks)
    assert e.value.key == "Ranked{'index': 1}"
    one_by_one = callstate.CallbackRegistry(callbacks[:2])
    with pytest.raises(callstate.DuplicateKeyError) as sequential:
        one_by_one.register(callbacks[2])
    assert str(e.value) == str(sequential.value), "the constructor's message differs from register()'s"


def test_constructor_calls_an_overridden_register() -> None:
    """A subclass that overrides register() sees every callback given to the constructor."""
    seen: list[object] = []

    class Recording(callstate.CallbackRegistry):
        def register(self, obj: object, **kwargs: Any) -> str:
            seen.append(obj)
            return super().register(obj, **kwargs)

    callbacks = [Ranked(i) for i in range(3)]
    registry = Recording(callbacks)
    assert seen == callbacks and len(registry) == 3, seen


def test_state_dict_with_kept_states_survives_torch_save_and_a_weights_only_load(tmp_path: Any) -> None:
    """registry.state_dict() with an unclaimed encoded state goes through torch.save/torch.load(weights_only=True) and back byte for byte."""
    data = callstate.dumps({"ghost": {"w": torch.arange(6.0), "n": 3}, "mine": {"index": 7}})
    registry = callstate.CallbackRegistry([holder := Ranked(0)])
    with pytest.warns(callstate.CallstateWarning):
        callstate.loads(registry, data)
    path = tmp_path / "sd.pt"
    torch.save(registry.state_dict(), path)
    states = torch.load(path, weights_only=True)
    again = callstate.CallbackRegistry([Ranked(0)])
    with pytest.warns(callstate.CallstateWarning):
        again.load_state_dict(states)
    assert callstate.dumps(again) == callstate.dumps(registry)
    ghost = callstate.read(callstate.dumps(again))["ghost"]
    assert torch.equal(ghost["w"], torch.arange(6.0)) and ghost["n"] == 3
    assert holder.index == 0
