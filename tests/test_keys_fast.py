"""Keys built from plain values are remembered, and never confused with those of look-alike values."""

from __future__ import annotations

from typing import Any

import pytest

import callstate
from callstate._core import _keys


@callstate.stateful(identity=("what",))
class Counter:
    def __init__(self, what: Any) -> None:
        self.what = what


@callstate.stateful(identity=("monitor", "mode"))
class Stopper:
    def __init__(self, monitor: Any, mode: Any) -> None:
        self.monitor, self.mode = monitor, mode


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ((1, True, 1.0), ["Counter{'what': 1}", "Counter{'what': True}", "Counter{'what': 1.0}"]),
        ((0.0, -0.0, 0, False), ["Counter{'what': 0.0}", "Counter{'what': -0.0}", "Counter{'what': 0}",
                                 "Counter{'what': False}"]),
        ((float("nan"), None, "x"), ["Counter{'what': nan}", "Counter{'what': None}", "Counter{'what': 'x'}"]),
    ],
)
def test_equal_values_with_different_reprs_keep_their_own_keys(values: tuple[Any, ...], expected: list[str]) -> None:
    """1, True and 1.0 (or 0.0 and -0.0) are equal but make different keys, asked in any order, twice."""
    for _ in range(2):
        assert [callstate.state_key(Counter(v)) for v in values] == expected
        assert [callstate.state_key(Counter(v)) for v in reversed(values)] == expected[::-1]


def test_key_follows_a_changed_identity_value() -> None:
    """A key is built from the values the callback has now, not those it had at the first call."""
    stopper = Stopper("val_loss", "min")
    assert callstate.state_key(stopper) == "Stopper{'monitor': 'val_loss', 'mode': 'min'}"
    stopper.mode = "max"
    assert callstate.state_key(stopper) == "Stopper{'monitor': 'val_loss', 'mode': 'max'}"
    assert stopper.state_key == "Stopper{'monitor': 'val_loss', 'mode': 'max'}", "the property disagrees"


def test_key_follows_a_renamed_class() -> None:
    """A class whose __qualname__ changes gets keys under its new name."""

    @callstate.stateful(identity=("what",))
    class Local:
        def __init__(self) -> None:
            self.what = "epochs"

    Local.__qualname__ = "Before"
    assert callstate.state_key(Local()) == "Before{'what': 'epochs'}"
    Local.__qualname__ = "After"
    assert callstate.state_key(Local()) == "After{'what': 'epochs'}"


def test_unreproducible_values_still_raise_every_time() -> None:
    """A plain-looking key is remembered, but an unreproducible value raises IdentityError at each call."""
    obj = Counter(object())
    for _ in range(2):
        with pytest.raises(callstate.IdentityError, match=r"Counter\.what cannot be part of a state key") as e:
            callstate.state_key(obj)
        assert e.value.field == "what"


def test_remembered_keys_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The memory of built keys never grows past its limit."""
    monkeypatch.setattr(_keys, "_BUILT_MAX", 8)
    monkeypatch.setattr(_keys, "_built", {})
    keys = [callstate.state_key(Counter(i)) for i in range(50)]
    assert keys == [f"Counter{{'what': {i}}}" for i in range(50)]
    assert 0 < len(_keys._built) <= 8, len(_keys._built)
