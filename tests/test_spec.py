"""Declarations: generated state_dict/load_state_dict, decorator validation, the Stateful protocol."""

from __future__ import annotations

import dataclasses
from typing import Any

import attrs
import pytest
from strategies import Box, Counter, Stateless

import callstate


@callstate.stateful(identity=("what",), state=("epochs", "batches"))
class Tally:
    def __init__(self, what: str) -> None:
        self.what = what
        self.epochs = 0
        self.batches = 0


@callstate.stateful
@attrs.define
class AttrsTally:
    what: str = callstate.field(identity=True)
    epochs: int = callstate.field(state=True, default=0)
    batches: int = callstate.field(state=True, default=0)
    verbose: bool = True


@callstate.stateful
@attrs.frozen
class FrozenTally:
    seen: int = callstate.field(state=True, default=0)


def test_generated_state_dict_reads_declared_attributes() -> None:
    """state= generates a state_dict returning the declared attributes, in declared order."""
    t = Tally("epochs")
    t.epochs, t.batches = 2, 32
    assert t.state_dict() == {"epochs": 2, "batches": 32}  # type: ignore[attr-defined]
    assert list(t.state_dict()) == ["epochs", "batches"]  # type: ignore[attr-defined]


def test_generated_load_state_dict_writes_attributes() -> None:
    """The generated load_state_dict sets the declared attributes; absent ones keep their value."""
    t = Tally("epochs")
    t.load_state_dict({"epochs": 5})  # type: ignore[attr-defined]
    assert (t.epochs, t.batches) == (5, 0)
    t.load_state_dict({"epochs": 6, "batches": 7})  # type: ignore[attr-defined]
    assert (t.epochs, t.batches) == (6, 7)


def test_generated_methods_make_a_stateful_callback() -> None:
    """A class with state= is Stateful and round-trips through a registry under its identity key."""
    a, b = Tally("epochs"), Tally("batches")
    a.epochs, b.batches = 2, 32
    assert isinstance(a, callstate.Stateful)
    saved = callstate.CallbackRegistry([a, b]).state_dict()
    assert saved == {
        "Tally{'what': 'epochs'}": {"epochs": 2, "batches": 0},
        "Tally{'what': 'batches'}": {"epochs": 0, "batches": 32},
    }
    fresh_a, fresh_b = Tally("epochs"), Tally("batches")
    callstate.CallbackRegistry([fresh_b, fresh_a]).load_state_dict(saved, strict=True)
    assert (fresh_a.epochs, fresh_a.batches, fresh_b.epochs, fresh_b.batches) == (2, 0, 0, 32)


def test_attrs_field_state() -> None:
    """callstate.field(state=True) on an attrs class under bare @stateful generates the state methods."""
    t = AttrsTally("epochs", epochs=3)
    assert t.state_dict() == {"epochs": 3, "batches": 0}  # type: ignore[attr-defined]
    assert callstate.state_key(t) == "AttrsTally{'what': 'epochs'}"
    t.load_state_dict({"batches": 9})  # type: ignore[attr-defined]
    assert (t.epochs, t.batches, t.verbose) == (3, 9, True)


def test_frozen_attrs_state_is_restored() -> None:
    """The generated load_state_dict restores state fields even on a frozen attrs class."""
    t = FrozenTally()
    t.load_state_dict({"seen": 4})  # type: ignore[attr-defined]
    assert t.seen == 4


def test_dataclass_state() -> None:
    """state= works on a dataclass."""

    @callstate.stateful(state=("n",))
    @dataclasses.dataclass
    class DC:
        n: int = 0

    d = DC()
    d.load_state_dict({"n": 3})  # type: ignore[attr-defined]
    assert d.state_dict() == {"n": 3}  # type: ignore[attr-defined]


def test_subclass_inherits_state_and_identity() -> None:
    """A subclass decorated again without arguments keeps its parent's identity and state."""

    @callstate.stateful
    class SubTally(Tally):
        pass

    s = SubTally("x")
    s.epochs = 1
    assert s.state_dict() == {"epochs": 1, "batches": 0}  # type: ignore[attr-defined]
    assert callstate.state_key(s) == SubTally.__qualname__ + "{'what': 'x'}"


def test_load_unknown_field_raises() -> None:
    """A state with fields outside the declared state raises InvalidStateError and changes nothing."""
    t = Tally("epochs")
    with pytest.raises(
        callstate.errors.InvalidStateError,
        match=r"Tally\.load_state_dict got fields \['bogus'\] that are not among its declared state "
        r"\('epochs', 'batches'\): add them to state=, or drop them from the saved state\.",
    ) as e:
        t.load_state_dict({"epochs": 9, "bogus": 1})  # type: ignore[attr-defined]
    assert e.value.cls is Tally
    assert e.value.unknown == ("bogus",)
    assert t.epochs == 0


def test_load_non_mapping_raises() -> None:
    """A state that is not a mapping raises InvalidStateError naming the class and the type."""
    with pytest.raises(
        callstate.errors.InvalidStateError, match=r"Tally\.load_state_dict expects a mapping of .*, got list\."
    ) as e:
        Tally("x").load_state_dict([1, 2])  # type: ignore[attr-defined]
    assert e.value.cls is Tally
    assert e.value.unknown == ()


def test_state_dict_missing_attribute_raises() -> None:
    """A declared state attribute the instance lacks raises InvalidStateError from state_dict."""

    @callstate.stateful(state=("n",))
    class Unset:
        pass

    with pytest.raises(callstate.errors.InvalidStateError, match=r"Unset declares state fields \('n',\)") as e:
        Unset().state_dict()  # type: ignore[attr-defined]
    assert e.value.cls is Unset
    assert isinstance(e.value.__cause__, AttributeError)


def test_state_with_own_methods_is_refused() -> None:
    """state= on a class that defines state_dict raises TypeError naming the methods."""
    with pytest.raises(TypeError, match=r"defines \['state_dict'\]: remove state=, or remove those methods"):

        @callstate.stateful(state=("n",))
        class Both:
            def state_dict(self) -> dict[str, Any]:
                return {}


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"identity": "what"}, r"identity= takes a tuple of attribute names; write identity=\('what',\)"),
        ({"state": "n"}, r"state= takes a tuple of attribute names; write state=\('n',\)"),
        ({"identity": ("ok", "not a name")}, r"\['not a name'\] are not attribute names"),
        ({"identity": ("a", 1)}, r"\[1\] are not attribute names"),
        ({"state": ("a", "a")}, r"repeats a name"),
    ],
    ids=["identity-str", "state-str", "bad-name", "not-str", "repeated"],
)
def test_bad_declarations_raise(kwargs: dict[str, Any], pattern: str) -> None:
    """Malformed identity=/state= raise TypeError naming the class and the fix."""
    with pytest.raises(TypeError, match=pattern) as e:

        @callstate.stateful(**kwargs)
        class Bad:
            pass

    assert "Bad" in str(e.value)


def test_stateful_decorates_classes_only() -> None:
    """@stateful on a function raises TypeError."""
    with pytest.raises(TypeError, match=r"@callstate.stateful decorates a class, not"):
        callstate.stateful(identity=("x",))(len)  # type: ignore[type-var]


def test_stateful_protocol() -> None:
    """callstate.Stateful matches objects with callable state_dict and load_state_dict only."""

    class Half:
        def state_dict(self) -> dict[str, Any]:
            return {}

    assert isinstance(Box(), callstate.Stateful)
    assert isinstance(Counter(), callstate.Stateful)
    assert not isinstance(Stateless(), callstate.Stateful)
    assert not isinstance(Half(), callstate.Stateful)


def test_per_rank_declaration() -> None:
    """@stateful(per_rank=True) is what a registry reports for the callback, unless register overrides."""

    @callstate.stateful(per_rank=True, state=("seed",))
    class Sampler:
        seed = 0

    s, c = Sampler(), Counter()
    registry = callstate.CallbackRegistry([s, c])
    assert registry.is_per_rank(s)
    assert not registry.is_per_rank(c)
    other = callstate.CallbackRegistry()
    other.register(Sampler(), per_rank=False)
    assert not other.is_per_rank(Sampler.__qualname__)


def test_state_key_property_is_a_property() -> None:
    """The decorated class gets a documented, read-only state_key property."""
    prop = Counter.__dict__["state_key"]
    assert isinstance(prop, property)
    assert prop.fset is None
    assert "callstate.state_key" in (prop.__doc__ or "")


def test_attrs_field_state_with_stateful_below_attrs() -> None:
    """callstate.field(state=True) works when @stateful sits below @attrs.define too."""

    @attrs.define
    @callstate.stateful
    class Below:
        what: str = callstate.field(identity=True)
        n: int = callstate.field(state=True, default=0)

    b = Below("a")
    assert b.state_dict() == {"n": 0}  # type: ignore[attr-defined]
    b.load_state_dict({"n": 3})  # type: ignore[attr-defined]
    assert b.n == 3
    assert callstate.state_key(b) == Below.__qualname__ + "{'what': 'a'}"
