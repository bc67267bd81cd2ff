"""callstate.identify: more identity fields for callbacks you do not own, with the old key as an alias."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest

import callstate


class Saver:
    """A callback like a framework's: its own state_key property leaves ``filename`` out."""

    def __init__(self, monitor: str, filename: str) -> None:
        self.monitor = monitor
        self.filename = filename
        self.best = 0.0

    @property
    def state_key(self) -> str:
        return f"Saver{ {'monitor': self.monitor}!r}"

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state["best"]


class Plain:
    """A callback with no state_key of its own."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.n = 0

    def state_dict(self) -> dict[str, Any]:
        return {"n": self.n}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.n = state["n"]


def test_two_instances_differing_in_one_field_get_two_keys() -> None:
    """identify(obj, "filename") adds the field to that instance's key, in Lightning's format; others keep theirs."""
    a = callstate.identify(Saver("loss", "best"), "filename")
    b = callstate.identify(Saver("loss", "last"), "filename")
    c = Saver("loss", "other")
    assert a.state_key == "Saver{'monitor': 'loss', 'filename': 'best'}"
    assert callstate.state_key(b) == "Saver{'monitor': 'loss', 'filename': 'last'}"
    assert c.state_key == "Saver{'monitor': 'loss'}"
    assert callstate.CallbackRegistry([a, b, c]).keys() == [a.state_key, b.state_key, c.state_key]


def test_a_state_saved_under_the_old_key_is_found_through_the_alias() -> None:
    """A state saved before identify restores into the identified callback, reported as renamed."""
    before = Saver("loss", "best")
    before.best = 0.25
    data = callstate.dumps([before])
    after = callstate.identify(Saver("loss", "best"), "filename", aliases=["Saver-older"])
    report = callstate.loads([after], data, strict=True)
    assert after.best == 0.25
    assert dict(report.renamed) == {after.state_key: "Saver{'monitor': 'loss'}"}
    older = callstate.identify(Saver("loss", "best"), "filename", aliases=["Saver-older"])
    callstate.CallbackRegistry([older]).load_state_dict({"Saver-older": {"best": 0.5}}, strict=True)
    assert older.best == 0.5


def test_class_level_form_gives_every_instance_the_fields() -> None:
    """identify(cls, field) keys every instance with the field; a class's __qualname__ key becomes Name{...}."""

    class Tracker(Plain):
        pass

    Tracker.__qualname__ = "Tracker"
    callstate.identify(Tracker, "name")
    assert callstate.state_key(Tracker("a")) == "Tracker{'name': 'a'}"
    assert callstate.state_key(Plain("a")) == "Plain"
    saved = {"Tracker": {"n": 3}}  # as saved before identify: the old key is the alias
    t = Tracker("a")
    callstate.CallbackRegistry([t]).load_state_dict(saved, strict=True)
    assert t.n == 3


def test_the_identity_survives_copies_and_pickles() -> None:
    """A copied or unpickled identified callback keeps its longer key."""
    a = callstate.identify(Saver("loss", "best"), "filename")
    assert copy.deepcopy(a).state_key == a.state_key
    assert pickle.loads(pickle.dumps(a)).state_key == a.state_key


def test_bad_uses_are_refused() -> None:
    """No field, a missing field, an unreproducible value, or a class declaring identity: typed errors."""
    with pytest.raises(TypeError, match="attribute names"):
        callstate.identify(Saver("l", "f"))
    with pytest.raises(callstate.IdentityError, match="has no attribute 'nope'") as info:
        callstate.identify(Saver("l", "f"), "nope")
    assert info.value.field == "nope"
    odd = Saver("l", "f")
    odd.filename = object()  # type: ignore[assignment]
    with pytest.raises(callstate.IdentityError, match="changes from one process to the next"):
        callstate.identify(odd, "filename")

    @callstate.stateful(identity=("name",))
    class Declared(Plain):
        pass

    with pytest.raises(TypeError, match="add \\('n',\\) to its identity="):
        callstate.identify(Declared("x"), "n")
