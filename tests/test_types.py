"""callstate.register_type: user types written as a registered name plus plain data, rebuilt only by from_data."""

from __future__ import annotations

import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import callstate


class Point:
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (other.x, other.y) == (self.x, self.y)

    def __hash__(self) -> int:
        return hash((self.x, self.y))


class Other:
    pass


@pytest.fixture
def point() -> Iterator[None]:
    callstate.register_type(Point, to_data=lambda p: [p.x, p.y], from_data=lambda d: Point(*d), name="test.Point")
    try:
        yield
    finally:
        callstate.unregister_type(Point)


def test_registered_type_round_trips_untrusted_inside_any_container(point: None) -> None:
    """Instances in lists, as dict keys and in sets come back equal, decoded with no trust."""
    state = {"one": Point(1, 2), "keys": {Point(0, 0): "origin"}, "set": {Point(3, 4)}, "shared": [Point(5, 6)] * 2}
    data = callstate.dumps({"k": state})
    assert [i.codec for i in callstate.inspect(data)] == ["data"]
    out = callstate.read(data)["k"]
    assert out == state
    assert out["shared"][0] is out["shared"][1]


def test_a_file_names_the_type_by_its_registered_name(point: None) -> None:
    """The name is written in the file, so another class registered under it reads the state."""
    data = callstate.dumps({"k": Point(1, 2)})
    assert b"test.Point" in data
    callstate.unregister_type(Point)
    callstate.register_type(Other, to_data=lambda o: None, from_data=lambda d: ("rebuilt", d), name="test.Point")
    try:
        assert callstate.read(data)["k"] == ("rebuilt", [1, 2])
    finally:
        callstate.unregister_type(Other)
        callstate.register_type(Point, to_data=lambda p: [p.x, p.y], from_data=lambda d: Point(*d), name="test.Point")


def test_an_unregistered_name_raises_unknown_type_error_naming_it(point: None) -> None:
    """Reading a state whose type is not registered here raises UnknownTypeError with the name and the fix."""
    data = callstate.dumps({"k": [Point(1, 2)]})
    callstate.unregister_type(Point)
    try:
        with pytest.raises(callstate.errors.UnknownTypeError, match=r"'test\.Point'.*register_type") as e:
            callstate.read(data)
        assert e.value.type_name == "test.Point" and e.value.key == "k"
        assert isinstance(e.value, LookupError)
    finally:
        callstate.register_type(Point, to_data=lambda p: [p.x, p.y], from_data=lambda d: Point(*d), name="test.Point")


def test_default_name_is_module_and_qualname() -> None:
    """Without name=, the type is written as module.QualName."""
    callstate.register_type(Point, to_data=lambda p: [p.x, p.y], from_data=lambda d: Point(*d))
    try:
        assert b"test_types.Point" in callstate.dumps({"k": Point(1, 2)})
    finally:
        callstate.unregister_type(Point)


def test_subclasses_are_not_covered(point: None) -> None:
    """An instance of a subclass of a registered class is not written as the registered type."""

    class Sub(Point):
        pass

    with pytest.warns(callstate.PickledStateWarning, match="Sub"):
        callstate.dumps({"k": Sub(1, 2)})


def test_to_data_that_raises_is_a_serialization_error_naming_key_and_type() -> None:
    """A failing to_data stops the save with SerializationError; the cause is chained."""

    def broken(p: Point) -> Any:
        raise RuntimeError("no")

    callstate.register_type(Point, to_data=broken, from_data=lambda d: d, name="test.Broken")
    try:
        with pytest.raises(callstate.errors.SerializationError, match=r"'k'.*test\.Broken") as e:
            callstate.dumps({"k": Point(1, 2)})
        assert isinstance(e.value.__cause__, RuntimeError)
    finally:
        callstate.unregister_type(Point)


def test_from_data_that_raises_is_a_corrupt_checkpoint_error(point: None) -> None:
    """A from_data that rejects its data gives CorruptCheckpointError naming the entry."""
    data = callstate.dumps({"k": Point(1, 2)})
    callstate.unregister_type(Point)
    callstate.register_type(Point, to_data=lambda p: [p.x], from_data=lambda d: Point(*d[5:]), name="test.Point")
    with pytest.raises(callstate.CorruptCheckpointError, match="entry 'k'"):
        callstate.read(data)


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (dict, {}, "writes dict itself"),
        (Point(1, 2), {}, "takes a class"),
        (Point, {"name": ""}, "non-empty str"),
        (Point, {"name": "x" * 201}, "at most 200"),
        (Point, {"name": "é" * 101}, "at most 200 bytes"),
        (Point, {"to_data": None}, "callables"),
    ],
    ids=["native", "not-a-class", "empty-name", "long-name", "long-name-in-utf8", "not-callable"],
)
def test_bad_registrations_are_refused(cls: Any, kwargs: dict[str, Any], match: str) -> None:
    """register_type refuses what it cannot take, with TypeRegistrationError (a ValueError)."""
    args: dict[str, Any] = {"to_data": lambda o: o, "from_data": lambda d: d, **kwargs}
    with pytest.raises(callstate.errors.TypeRegistrationError, match=match) as e:
        callstate.register_type(cls, **args)
    assert isinstance(e.value, ValueError)


def test_a_name_belongs_to_one_class_and_a_class_to_one_name(point: None) -> None:
    """Taking another class's name, or renaming a registered class, is refused; re-registering is allowed."""
    with pytest.raises(callstate.errors.TypeRegistrationError, match="registered for"):
        callstate.register_type(Other, to_data=lambda o: 0, from_data=lambda d: Other(), name="test.Point")
    with pytest.raises(callstate.errors.TypeRegistrationError, match="unregister_type"):
        callstate.register_type(Point, to_data=lambda p: 0, from_data=lambda d: d, name="test.Renamed")
    callstate.register_type(Point, to_data=lambda p: (p.y, p.x), from_data=lambda d: Point(d[1], d[0]), name="test.Point")
    assert callstate.read(callstate.dumps({"k": Point(1, 2)}))["k"] == Point(1, 2)


def test_unregistering_an_unknown_class_raises() -> None:
    """unregister_type of a class never registered raises TypeRegistrationError."""
    with pytest.raises(callstate.errors.TypeRegistrationError, match="not registered"):
        callstate.unregister_type(Other)


def test_numpy_and_torch_types_are_native() -> None:
    """Arrays, numpy scalars and tensors are written by the codec itself and cannot be registered."""
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")

    for cls in (np.ndarray, np.float32, torch.Tensor, torch.Size):
        with pytest.raises(callstate.errors.TypeRegistrationError, match="itself"):
            callstate.register_type(cls, to_data=lambda o: o, from_data=lambda d: d)


def test_a_name_of_200_bytes_in_utf8_saves_and_loads() -> None:
    """The longest name register_type takes (200 bytes of UTF-8) is written and read back."""
    callstate.register_type(Point, to_data=lambda p: (p.x, p.y), from_data=lambda d: Point(*d), name="é" * 100)
    try:
        back = callstate.read(callstate.dumps({"k": Point(1, 2)}))["k"]
    finally:
        callstate.unregister_type(Point)
    assert (back.x, back.y) == (1, 2)


def test_a_bare_object_is_not_sent_to_register_type(tmp_path: Path) -> None:
    """Saving a bare object() warns without suggesting register_type(object, ...): it says to return plain data or use state=; so does loading it untrusted."""
    with pytest.warns(callstate.PickledStateWarning) as caught:
        callstate.save({"k": {"sentinel": object()}}, tmp_path / "run.callstate")
    message = str(caught[0].message)
    assert "register_type" not in message
    assert "a bare object() holds no data" in message and "state=[...]" in message
    with pytest.raises(callstate.errors.UnsafeCheckpointError) as e:
        callstate.read(tmp_path / "run.callstate")
    assert "register_type" not in str(e.value) and "a bare object() holds no data" in str(e.value)


def test_a_builtin_the_codec_cannot_write_is_not_sent_to_register_type() -> None:
    """A builtin that pickles (a module) warns, and one that cannot (a generator) raises, neither suggesting register_type."""
    with pytest.warns(callstate.PickledStateWarning, match=r"module is a Python builtin") as caught:
        callstate.dumps({"k": {"mod": types}})
    assert "register_type" not in str(caught[0].message)
    with pytest.raises(callstate.errors.SerializationError, match=r"holds generator") as e:
        callstate.dumps({"k": {"gen": (i for i in range(2))}})
    assert "register_type" not in str(e.value) and "state=[...]" in str(e.value)


def test_a_class_of_yours_is_still_sent_to_register_type() -> None:
    """A user class the codec does not write still gets the register_type(<class>, ...) hint, naming its module."""
    with pytest.warns(callstate.PickledStateWarning, match=rf"register_type\(Other, .*after importing {__name__}"):
        callstate.dumps({"k": Other()})
