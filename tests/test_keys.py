"""State keys: precedence, Lightning's exact format, identity declarations, unreproducible values."""

from __future__ import annotations

import dataclasses
import gc
import re
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import Box, Counter, class_names, field_names, identity_values

import callstate

# --- precedence -----------------------------------------------------------------------------------


class OwnKey:
    """A class with its own ``state_key``, as every Lightning Callback has."""

    @property
    def state_key(self) -> str:
        return "own-key"


@callstate.stateful(identity=("what",), state=())
class IdentityOverOwn(OwnKey):
    def __init__(self, what: str) -> None:
        self.what = what


class Plain:
    pass


class Outer:
    class Inner:
        pass


def test_qualname_when_nothing_declared() -> None:
    """An object with no identity, no state_key and no explicit key is keyed by its class qualname."""
    assert callstate.state_key(Plain()) == "Plain"
    assert callstate.state_key(Outer.Inner()) == "Outer.Inner"


def test_own_state_key_beats_qualname() -> None:
    """An object's own ``state_key`` attribute is used when no identity is declared."""
    assert callstate.state_key(OwnKey()) == "own-key"


def test_identity_beats_own_state_key() -> None:
    """Identity declared with callstate wins over a state_key inherited from a base class."""
    obj = IdentityOverOwn("x")
    assert callstate.state_key(obj) == "IdentityOverOwn{'what': 'x'}"
    assert obj.state_key == "IdentityOverOwn{'what': 'x'}"  # type: ignore[attr-defined]


def test_explicit_key_belongs_to_its_registry() -> None:
    """A key= given at registration is the registry's (key_of); state_key depends on the object alone."""
    obj = IdentityOverOwn("x")
    registry = callstate.CallbackRegistry()
    assert registry.register(obj, key="explicit") == "explicit"
    assert registry.key_of(obj) == "explicit"
    assert callstate.state_key(obj) == "IdentityOverOwn{'what': 'x'}" == obj.state_key  # type: ignore[attr-defined]
    other = callstate.CallbackRegistry([obj])
    assert other.key_of(obj) == "IdentityOverOwn{'what': 'x'}"
    del registry
    gc.collect()
    assert callstate.state_key(obj) == "IdentityOverOwn{'what': 'x'}"


def test_key_of_an_unregistered_object_raises() -> None:
    """key_of names an object that is not registered with NotRegisteredError."""
    with pytest.raises(callstate.errors.NotRegisteredError, match=r"Box object .* is not registered"):
        callstate.CallbackRegistry().key_of(Box())


def test_own_state_key_not_a_str_raises() -> None:
    """A state_key attribute that is not a str raises IdentityError naming the class and the value."""

    class Weird:
        state_key = 42

    with pytest.raises(callstate.IdentityError, match=r"Weird\.state_key is 42, not a str") as e:
        callstate.state_key(Weird())
    assert e.value.field == "state_key"
    assert e.value.cls is Weird
    assert e.value.value_repr == "42"


# --- format ---------------------------------------------------------------------------------------


def test_counter_key_byte_for_byte() -> None:
    """The issue's Counter is keyed exactly as Lightning's docs show."""
    assert callstate.state_key(Counter("epochs")) == "Counter{'what': 'epochs'}"
    assert callstate.state_key(Counter(what="batches", verbose=False)) == "Counter{'what': 'batches'}"
    assert Counter("epochs").state_key == "Counter{'what': 'epochs'}"  # type: ignore[attr-defined]


def test_fields_in_declared_order() -> None:
    """Identity fields appear in declared order, not alphabetical or definition order."""

    @callstate.stateful(identity=("b", "a"))
    class Two:
        def __init__(self) -> None:
            self.a, self.b = 1, "x"

    assert callstate.state_key(Two()) == Two.__qualname__ + "{'b': 'x', 'a': 1}"


def test_key_follows_identity_changes() -> None:
    """The key is computed from the identity values at call time."""
    c = Counter("epochs")
    c.what = "steps"
    assert callstate.state_key(c) == "Counter{'what': 'steps'}"


def test_subclass_uses_its_own_qualname() -> None:
    """A subclass of a decorated class inherits its identity and is keyed by its own name."""

    class Sub(Counter):
        pass

    assert callstate.state_key(Sub("epochs")) == Sub.__qualname__ + "{'what': 'epochs'}"


def test_empty_identity_falls_back() -> None:
    """identity=() declares nothing: the key falls back to the class's own state_key or qualname."""

    @callstate.stateful(identity=())
    class Nothing:
        pass

    @callstate.stateful(identity=())
    class Owning(OwnKey):
        pass

    assert callstate.state_key(Nothing()) == Nothing.__qualname__
    assert callstate.state_key(Owning()) == "own-key"


@given(
    name=class_names,
    fields=st.dictionaries(field_names, identity_values, min_size=1, max_size=4),
)
def test_identity_key_matches_lightning_formula(name: str, fields: dict[str, Any]) -> None:
    """For random identity values, the key is ``f"{type(obj).__qualname__}{fields!r}"``."""
    cls = callstate.stateful(identity=tuple(fields))(type(name, (), {}))
    obj = cls()
    for k, v in fields.items():
        setattr(obj, k, v)
    expected = f"{type(obj).__qualname__}{fields!r}"
    assert callstate.state_key(obj) == expected
    assert obj.state_key == expected


def test_reproducible_strings_are_fine() -> None:
    """Strings that merely contain '<lambda>', '<locals>' or ' at 0x' are valid identity values."""

    @callstate.stateful(identity=("tag",))
    class Tagged:
        def __init__(self, tag: Any) -> None:
            self.tag = tag

    for tag in ("<lambda>", "f.<locals>.g", "<obj at 0x1234>", ("<lambda>", ["<locals>"])):
        assert callstate.state_key(Tagged(tag)) == f"{Tagged.__qualname__}{ {'tag': tag}!r}"


def test_module_level_class_value_is_fine() -> None:
    """A module-level class has a reproducible repr and may be an identity value."""

    @callstate.stateful(identity=("kind",))
    class Kinded:
        def __init__(self, kind: Any) -> None:
            self.kind = kind

    assert callstate.state_key(Kinded(Plain)) == f"{Kinded.__qualname__}{ {'kind': Plain}!r}"


# --- identity on every kind of class --------------------------------------------------------------


@callstate.stateful(identity=("what",))
@dataclasses.dataclass
class DataCounter:
    what: str
    verbose: bool = True


@callstate.stateful(identity=("what",))
@attrs.define
class AttrsCounter:
    what: str
    verbose: bool = True


@callstate.stateful
@attrs.define
class FieldCounter:
    what: str = callstate.field(identity=True)
    verbose: bool = True
    phase: int = callstate.field(identity=True, default=0)


@callstate.stateful
@attrs.frozen
class FrozenFieldCounter:
    what: str = callstate.field(identity=True)


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (DataCounter("epochs"), "DataCounter{'what': 'epochs'}"),
        (AttrsCounter("epochs", verbose=False), "AttrsCounter{'what': 'epochs'}"),
        (FieldCounter("epochs"), "FieldCounter{'what': 'epochs', 'phase': 0}"),
        (FrozenFieldCounter("epochs"), "FrozenFieldCounter{'what': 'epochs'}"),
    ],
    ids=["dataclass", "attrs", "attrs-field", "attrs-frozen-field"],
)
def test_identity_on_class_kinds(obj: Any, expected: str) -> None:
    """Identity works on dataclasses and attrs classes, by identity= or by callstate.field(identity=True)."""
    assert callstate.state_key(obj) == expected
    assert obj.state_key == expected


def test_field_identity_subclass_adds_fields() -> None:
    """An attrs subclass adding identity fields gets them in its key; the base keeps its own."""

    @callstate.stateful
    @attrs.define
    class Sub(FieldCounter):
        extra: str = callstate.field(identity=True, default="e")

    assert callstate.state_key(Sub("x")) == Sub.__qualname__ + repr({"what": "x", "phase": 0, "extra": "e"})
    assert callstate.state_key(FieldCounter("x")) == "FieldCounter{'what': 'x', 'phase': 0}"


def test_field_passes_attrs_options() -> None:
    """callstate.field forwards attrs options and keeps the caller's metadata."""

    @attrs.define
    class WithMeta:
        x: int = callstate.field(identity=True, default=3, metadata={"mine": 1})

    (f,) = attrs.fields(WithMeta)
    assert f.default == 3
    assert f.metadata["mine"] == 1
    assert f.metadata["callstate"] == {"identity": True, "state": False}


# --- Lightning --------------------------------------------------------------------------------------


def test_lightning_callback_subclass_matches_generate_state_key() -> None:
    """On a Lightning Callback subclass, the key equals Lightning's own ``_generate_state_key``."""
    pytest.importorskip("lightning.pytorch")
    from lightning.pytorch import Callback

    @callstate.stateful(identity=("what", "every"))
    class LCounter(Callback):
        def __init__(self, what: str, every: Any) -> None:
            self.what, self.every = what, every

    cb = LCounter("epochs", (1, 2.5, None))
    lightning_key = cb._generate_state_key(what="epochs", every=(1, 2.5, None))
    assert cb.state_key == lightning_key
    assert callstate.state_key(cb) == lightning_key
    assert lightning_key == LCounter.__qualname__ + "{'what': 'epochs', 'every': (1, 2.5, None)}"


@given(fields=st.dictionaries(field_names, identity_values, min_size=1, max_size=3))
def test_lightning_generate_state_key_property(fields: dict[str, Any]) -> None:
    """For random identity values, callstate's key equals Lightning's ``_generate_state_key``."""
    pytest.importorskip("lightning.pytorch")
    from lightning.pytorch import Callback

    cls = callstate.stateful(identity=tuple(fields))(type("Dyn", (Callback,), {}))
    cb = cls()
    for k, v in fields.items():
        setattr(cb, k, v)
    assert callstate.state_key(cb) == cb._generate_state_key(**fields)


def test_lightning_default_and_builtin_keys() -> None:
    """Undecorated Lightning callbacks keep Lightning's keys: the qualname, or the built-in's own."""
    pytest.importorskip("lightning.pytorch")
    from lightning.pytorch import Callback
    from lightning.pytorch.callbacks import ModelCheckpoint

    class Bare(Callback):
        pass

    mc = ModelCheckpoint(monitor="val_loss", mode="max")
    assert callstate.state_key(Bare()) == Bare().state_key == Bare.__qualname__
    assert callstate.state_key(mc) == mc.state_key
    assert mc.state_key.startswith("ModelCheckpoint{'monitor': 'val_loss', 'mode': 'max'")


def test_lightning_decorated_without_identity_keeps_lightning_key() -> None:
    """@stateful(state=...) on a Lightning Callback leaves Lightning's default state_key in place."""
    pytest.importorskip("lightning.pytorch")
    from lightning.pytorch import Callback

    @callstate.stateful(state=("n",))
    class Tally(Callback):
        def __init__(self) -> None:
            self.n = 0

    assert Tally().state_key == callstate.state_key(Tally()) == Tally.__qualname__


def test_lightning_trainer_uses_the_same_key() -> None:
    """Lightning's own Trainer saves and restores decorated callbacks under callstate's keys, no adapter."""
    pytest.importorskip("lightning.pytorch")
    from lightning.pytorch import Callback, Trainer
    from lightning.pytorch.trainer import call

    @callstate.stateful(identity=("what",), state=("n",))
    class LCounter(Callback):
        def __init__(self, what: str, n: int = 0) -> None:
            self.what, self.n = what, n

    def trainer(*cbs: Callback) -> Trainer:
        return Trainer(
            callbacks=list(cbs),
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            accelerator="cpu",
        )

    cbs = [LCounter("epochs", 2), LCounter("batches", 32)]
    saved = call._call_callbacks_state_dict(trainer(*cbs))
    ours = callstate.CallbackRegistry(cbs).state_dict()
    assert saved == ours
    name = LCounter.__qualname__
    assert list(saved) == [f"{name}{{'what': 'epochs'}}", f"{name}{{'what': 'batches'}}"]

    # Saved by callstate, restored by Lightning's Trainer; and the other way round.
    fresh = [LCounter("batches"), LCounter("epochs")]
    call._call_callbacks_load_state_dict(trainer(*fresh), {"callbacks": ours})
    assert [c.n for c in fresh] == [32, 2]
    again = [LCounter("epochs"), LCounter("batches")]
    callstate.CallbackRegistry(again).load_state_dict(saved, strict=True)
    assert [c.n for c in again] == [2, 32]


# --- IdentityError ------------------------------------------------------------------------------------


@callstate.stateful(identity=("fn",))
class Holder:
    def __init__(self, fn: Any) -> None:
        self.fn = fn


def module_function() -> None:
    pass


def _local_function() -> Any:
    def inner() -> None:
        pass

    return inner


class _Local:
    pass


@pytest.mark.parametrize(
    ("value", "marker"),
    [
        (_Local(), "object at 0x"),
        (lambda: 0, "<lambda>"),
        (_local_function(), "<locals>"),
        (module_function, " at 0x"),
        (("ok", _Local()), "object at 0x"),
        ({"k": [1, lambda: 0]}, "<lambda>"),
    ],
    ids=["address", "lambda", "local-function", "function-address", "nested-tuple", "nested-dict"],
)
def test_unreproducible_identity_raises(value: Any, marker: str) -> None:
    """A value whose repr changes between processes raises IdentityError naming class, field, repr."""
    with pytest.raises(callstate.IdentityError) as e:
        callstate.state_key(Holder(value))
    message = str(e.value)
    assert message.startswith("Holder.fn cannot be part of a state key: its repr ")
    assert repr(repr(value)) in message
    assert "leave the field out of identity=" in message
    assert e.value.cls is Holder
    assert e.value.field == "fn"
    assert e.value.value_repr == repr(value)
    assert marker in e.value.value_repr
    assert isinstance(e.value, ValueError)


def test_unreproducible_identity_raises_at_registration() -> None:
    """Registering a callback whose key cannot be computed raises IdentityError and registers nothing."""
    registry = callstate.CallbackRegistry()
    with pytest.raises(callstate.IdentityError, match=re.escape("Holder.fn cannot be part of a state key")):
        registry.register(Holder(lambda: 0))
    assert len(registry) == 0


def test_missing_identity_field_raises() -> None:
    """A declared identity field the instance lacks raises IdentityError naming class and field."""

    @callstate.stateful(identity=("what", "missing"))
    class Lacking:
        def __init__(self) -> None:
            self.what = "x"

    with pytest.raises(
        callstate.IdentityError,
        match=r"Lacking declares identity field 'missing', but the instance has no attribute 'missing': "
        r"set it in __init__ or remove it from identity=\.$",
    ) as e:
        callstate.state_key(Lacking())
    assert e.value.cls is Lacking
    assert e.value.field == "missing"
    assert e.value.value_repr is None
    with pytest.raises(callstate.IdentityError):
        _ = Lacking().state_key  # type: ignore[attr-defined]


# --- reading keys back ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "cls", "identity"),
    [
        ("Counter{'what': 'epochs'}", "Counter", {"what": "epochs"}),
        ("Outer.Inner{'a': 1, 'b': (2, 3)}", "Outer.Inner", {"a": 1, "b": (2, 3)}),
        ("EarlyStopping", "EarlyStopping", None),
        ("EMA{'decay': tensor(0.9)}", "EMA", "{'decay': tensor(0.9)}"),
        ("Odd{1: 2}", "Odd", "{1: 2}"),
        ("{'a': 1}", "{'a': 1}", None),
        ("<class lightning.pytorch.callbacks.early_stopping.EarlyStopping>", "EarlyStopping", None),
        (IdentityOverOwn, "IdentityOverOwn", None),
    ],
    ids=["lightning", "nested-tuple", "bare", "non-literal", "non-str-field", "no-class", "class-text", "class"],
)
def test_parse_key_reads_class_and_identity_without_evaluating_code(
    key: object, cls: str, identity: object
) -> None:
    """Keys in Lightning's format split into class and literal identity; a class key (Lightning < 1.5) shows its name."""
    from callstate._core._keys import parse_key

    assert parse_key(key) == (cls, identity)
