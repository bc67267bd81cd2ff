"""The data codec: exact round trips of every supported type, sharing, cycles, limits, and no pickle."""

from __future__ import annotations

import collections
import datetime
import decimal
import fractions
import math
import pathlib
import pickle
import uuid
from typing import Any

import pytest
from exact import same
from hypothesis import given, settings
from hypothesis import strategies as st

import callstate
from callstate._encoding import _codec, _encoder, _native

# The core suite (.ci/matrix) runs with neither numpy nor torch: their values are then not drawn,
# and the tests about them are skipped naming the package (failed with --require-all).
try:
    import numpy as np
    from hypothesis.extra import numpy as hnp
except ImportError:
    np = None
try:
    import torch
except ImportError:
    torch = None


class Holder:
    """A callback keyed "k" that keeps whatever state it is given."""

    state_key = "k"

    def __init__(self) -> None:
        self.state: Any = None

    def state_dict(self) -> Any:
        return self.state

    def load_state_dict(self, state: Any) -> None:
        self.state = state


def round_trip(value: Any) -> Any:
    """Encode and decode ``value`` with the data codec alone (no container)."""
    parts = _codec.Encoder().encode(value)
    return _codec.decode(bytes(parts[0]), [bytearray(p) for p in parts[1:]])


def through_file(value: Any) -> Any:
    """Write ``value`` as a state of a callstate file and read it back untrusted."""
    data = callstate.dumps({"k": value})
    assert [i.codec for i in callstate.inspect(data)] == ["data"]
    return callstate.read(data)["k"]


# -- every supported type, exactly ------------------------------------------------------------------

timezones = st.one_of(
    st.none(),
    st.just(datetime.timezone.utc),
    st.builds(
        datetime.timezone,
        st.timedeltas(min_value=datetime.timedelta(hours=-23), max_value=datetime.timedelta(hours=23)),
    ),
    st.builds(lambda m, n: datetime.timezone(datetime.timedelta(minutes=m), n), st.integers(-600, 600), st.text(max_size=5)),
)
NUMPY_DTYPES = ["bool", "int8", "uint16", "int32", "int64", "float16", "float32", ">f8", "complex64", "complex128",
                "datetime64[s]", "timedelta64[ms]", "U3", "S4"]
TORCH_DTYPES = [] if torch is None else [torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16,
                torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128]
TORCH_DTYPES += [getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2", "uint16", "uint32", "uint64") if hasattr(torch, n)]
# Without torch, its values are simply not drawn.
torch_leaves = [] if torch is None else [
    st.sampled_from(TORCH_DTYPES),
    st.builds(torch.Size, st.lists(st.integers(0, 9), max_size=3)),
    st.sampled_from([torch.device("cpu"), torch.device("cuda", 1), torch.device("meta")]),
]

numpy_leaves = [] if np is None else [
    st.sampled_from(NUMPY_DTYPES).flatmap(
        lambda dt: hnp.arrays(np.dtype(dt), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    ),
    st.sampled_from(NUMPY_DTYPES).map(lambda d: np.zeros((), dtype=d)[()]),  # numpy scalars
]


@st.composite
def tensors(draw: st.DrawFn) -> Any:
    dtype = draw(st.sampled_from(TORCH_DTYPES))
    shape = draw(st.lists(st.integers(0, 4), max_size=3))
    n = math.prod(shape)
    t = torch.arange(n, dtype=torch.float64).to(dtype).reshape(shape) if dtype is not torch.bool else (
        torch.arange(n).reshape(shape) % 2 == 0
    )
    if draw(st.booleans()) and t.dtype.is_floating_point and t.dtype.itemsize >= 2 and "float8" not in str(t.dtype):
        t = torch.nn.Parameter(t) if draw(st.booleans()) else t.requires_grad_(True)
    return t


hashable_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(alphabet=st.characters(blacklist_categories=()), max_size=8),  # lone surrogates included
    st.binary(max_size=8),
    st.complex_numbers(allow_nan=True),
    st.datetimes(timezones=timezones),
    st.dates(),
    st.times(timezones=timezones),
    st.timedeltas(),
    st.decimals(allow_nan=False),
    st.fractions(),
    st.uuids(),
    st.builds(pathlib.PurePosixPath, st.text(alphabet="ab/.", max_size=6)),
    st.builds(
        pathlib.PureWindowsPath,
        st.sampled_from(["", "C:", "C:\\", "\\\\srv\\share\\"]),
        # Only well-formed names: pathlib itself does not round-trip incomplete UNC paths ("//a//").
        st.lists(st.text(alphabet="ab", min_size=1, max_size=3), max_size=3).map("\\".join),
    ),
    st.builds(range, st.integers(-9, 9), st.integers(-9, 9), st.integers(1, 3)),
    *([] if np is None else [st.sampled_from([np.dtype(d) for d in NUMPY_DTYPES])]),
    *torch_leaves,
)
leaves = st.one_of(
    hashable_leaves,
    st.binary(max_size=8).map(bytearray),
    st.sampled_from([decimal.Decimal("NaN"), decimal.Decimal("-sNaN12"), decimal.Decimal("-Infinity")]),
    st.builds(slice, st.none() | st.integers(), st.none() | st.integers(), st.none() | st.integers(1, 5)),
    *numpy_leaves,
    *([] if torch is None else [tensors()]),
    st.lists(st.floats(allow_nan=True), min_size=8, max_size=12),  # packed lists
    st.lists(st.integers(-(2**63), 2**63 - 1), min_size=8, max_size=12),
)
keys = st.recursive(hashable_leaves, lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=3), max_leaves=4)


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(keys, inner, max_size=4),
        st.dictionaries(keys, inner, max_size=4).map(collections.OrderedDict),
        st.dictionaries(keys, st.integers(), max_size=4).map(collections.Counter),
        st.builds(lambda d, f: collections.defaultdict(f, d), st.dictionaries(keys, inner, max_size=3),
                  st.sampled_from([list, int, dict, None, set])),
        st.builds(lambda xs, m: collections.deque(xs[:m] if m is not None else xs, maxlen=m),
                  st.lists(inner, max_size=4), st.none() | st.integers(0, 5)),
        st.sets(keys, max_size=4),
        st.frozensets(keys, max_size=4),
    )


values = st.recursive(leaves, _containers, max_leaves=20)


@settings(max_examples=400, deadline=None)
@given(values)
def test_every_supported_value_round_trips_exactly(value: Any) -> None:
    """Any value built from the supported types comes back with the same types and bits, untrusted."""
    assert same(value, round_trip(value))


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=8), values, max_size=4))
def test_states_round_trip_exactly_through_a_file(states: dict[str, Any]) -> None:
    """A mapping of states goes through dumps and read (trusted=False) exactly, every entry on the data codec."""
    data = callstate.dumps(states)
    assert all(i.codec == "data" for i in callstate.inspect(data))
    assert same(states, callstate.read(data))


# -- specific promises ----------------------------------------------------------------------------


def test_shared_and_repeated_objects_stay_shared() -> None:
    """An object reached twice is decoded once and reached twice; equal but distinct objects stay distinct."""
    inner = [1, 2]
    arr = bytearray(b"abc") if np is None else np.arange(3)
    state = {"a": inner, "b": inner, "c": [1, 2], "arr": (arr, arr), "t": (inner,) * 3}
    out = through_file(state)
    assert out["a"] is out["b"] and out["a"] is not out["c"]
    assert out["arr"][0] is out["arr"][1]
    assert all(x is out["a"] for x in out["t"])


def test_a_dag_is_written_once() -> None:
    """A 40-level DAG (2**40 paths) is written in a few hundred bytes and read back with its sharing."""
    node: Any = []
    for _ in range(40):
        node = [node, node]
    data = callstate.dumps({"k": node})
    assert len(data) < 2000
    out = callstate.read(data)["k"]
    assert out[0] is out[1] and out[0][0] is out[0][1]


def test_cycles_through_lists_and_dicts_survive() -> None:
    """A list or dict that contains itself comes back containing itself."""
    cyc: list[Any] = [1]
    cyc.append(cyc)
    d: dict[str, Any] = {}
    d["self"] = d
    out = through_file({"l": cyc, "d": d})
    assert out["l"][1] is out["l"] and out["d"]["self"] is out["d"]


def test_a_cycle_through_a_tuple_is_pickled_with_a_warning() -> None:
    """A tuple that contains itself (through a list) cannot be rebuilt from data: pickled, and said so."""
    inner: list[Any] = []
    t = (inner,)
    inner.append(t)
    with pytest.warns(callstate.PickledStateWarning, match="tuple that contains itself"):
        data = callstate.dumps({"k": t})
    assert [i.codec for i in callstate.inspect(data)] == ["pickle"]
    out = callstate.read(data, trusted=True)["k"]
    assert out[0][0] is out


def test_values_past_the_limits_are_pickled_with_the_reason() -> None:
    """Nesting deeper than MAX_DEPTH, and ints past MAX_INT_BYTES, fall back to pickle, naming why."""
    deep: Any = 0
    for _ in range(_codec.MAX_DEPTH + 1):
        deep = [deep]
    shallow: Any = 0
    for _ in range(_codec.MAX_DEPTH):
        shallow = [shallow]
    assert same(through_file(shallow), shallow)
    for value, reason in ((deep, "nesting deeper"), (1 << (8 * _codec.MAX_INT_BYTES + 8), "an int of more")):
        with pytest.warns(callstate.PickledStateWarning, match=reason):
            data = callstate.dumps({"k": value})
        assert callstate.inspect(data)[0].info["pickled"].startswith(reason)
        assert same(callstate.read(data, trusted=True)["k"], value)


def test_depth_counts_through_references() -> None:
    """A shared object referenced deep down counts its own height there: the encoder refuses what the decoder would."""
    tall: Any = 0
    for _ in range(60):
        tall = [tall]
    low: Any = tall
    for _ in range(50):
        low = [low]
    with pytest.warns(callstate.PickledStateWarning, match="nesting deeper"):
        callstate.dumps({"k": [tall, low]})
    assert same(through_file([tall, tall]), [tall, tall])


@pytest.mark.needs("numpy", "torch")
def test_large_arrays_go_out_of_band_and_come_back_owned_and_writable() -> None:
    """Arrays and tensors of 64 KiB or more are parts of their own; decoded ones own writable memory."""
    state = {"np": np.ones(_codec.OUT_OF_BAND_MIN // 8), "t": torch.ones(_codec.OUT_OF_BAND_MIN // 4), "s": np.ones(3)}
    parts = _codec.Encoder().encode(state)
    assert len(parts) == 3
    out = through_file(state)
    out["np"][0] = 5.0
    out["t"][0] = 5.0
    assert out["np"].flags.writeable and out["np"].flags.owndata is False and out["np"].base is not None
    assert same(out["s"], state["s"])


@pytest.mark.needs("numpy", "torch")
def test_non_contiguous_and_fortran_arrays_round_trip_by_value() -> None:
    """A strided view is saved by value (C order); a Fortran-ordered array stays Fortran-ordered."""
    view = np.arange(24.0).reshape(4, 6)[:, ::2]
    fortran = np.asfortranarray(np.arange(6).reshape(2, 3))
    out = through_file({"v": view, "f": fortran, "tv": torch.arange(12.0).reshape(3, 4).T})
    np.testing.assert_array_equal(out["v"], view)
    assert out["f"].flags.f_contiguous and same(out["f"], fortran)
    assert torch.equal(out["tv"], torch.arange(12.0).reshape(3, 4).T)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(None if np is None else np.array([object()], dtype=object), marks=pytest.mark.needs("numpy")),
        pytest.param(None if np is None else np.zeros(2, dtype=[("a", "i4")]), marks=pytest.mark.needs("numpy")),
        pytest.param(None if np is None else np.ma.masked_array([1, 2]), marks=pytest.mark.needs("numpy")),
        collections.defaultdict(lambda: 0),
        datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc).astimezone(__import__("zoneinfo").ZoneInfo("UTC")),
        slice("a", "b"),
        pytest.param(None if torch is None else torch.zeros(2).to_sparse(), marks=pytest.mark.needs("torch")),
    ],
    ids=["object-array", "structured-array", "masked-array", "lambda-factory", "zoneinfo", "str-slice", "sparse"],
)
def test_what_the_codec_cannot_write_is_pickled_with_a_warning(value: Any) -> None:
    """Values outside the supported set fall back to pickle (or cloudpickle), with a PickledStateWarning."""
    with pytest.warns(callstate.PickledStateWarning) as w:
        data = callstate.dumps({"k": value})
    assert callstate.inspect(data)[0].codec in ("pickle", "cloudpickle")
    assert str(w[0].message).startswith("State 'k' holds ")
    with pytest.raises(callstate.UnsafeCheckpointError, match="trusted=True"):
        callstate.read(data)


def test_subclasses_of_supported_types_are_not_taken_for_them() -> None:
    """A dict subclass is not written as a dict: it is pickled (its class would be lost otherwise)."""

    class MyDict(dict):  # type: ignore[type-arg]
        pass

    with pytest.warns(callstate.PickledStateWarning, match="MyDict"):
        data = callstate.dumps({"k": {"inner": MyDict(a=1)}})
    out = callstate.read(data, trusted=True)["k"]["inner"]
    assert type(out).__name__ == "MyDict"


@pytest.mark.needs("numpy", "torch")
def test_plain_states_load_with_pickle_made_to_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    """A version 2 file of plain states loads while pickle.Unpickler, pickle.loads and pickle.load raise."""
    state = {
        "d": {"a": [1, (2, 3)], 4: {5.5}},
        "np": np.arange(40_000.0),
        "t": torch.arange(10),
        "when": datetime.datetime(2026, 12, 1),
        "n": decimal.Decimal("1.5"),
        "f": fractions.Fraction(1, 3),
        "u": uuid.UUID(int=1),
    }
    data = callstate.dumps({"k": state})

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pickle was used")

    import _pickle

    for module in (pickle, _pickle):
        for name in ("Unpickler", "loads", "load"):
            monkeypatch.setattr(module, name, refuse)
    assert same(callstate.read(data)["k"], state)
    holder = Holder()
    report = callstate.loads(callstate.CallbackRegistry([holder]), data)
    assert report.restored == ("k",) and same(holder.state, state)


def test_encoder_keeps_nothing_between_states() -> None:
    """One encoder writes many states; each payload decodes alone (no memo shared across states)."""
    shared = [1]
    encoder = _codec.Encoder()
    first = encoder.encode({"a": shared})
    second = encoder.encode({"b": shared})
    assert _codec.decode(bytes(second[0]), []) == {"b": [1]}
    assert _codec.decode(bytes(first[0]), []) == {"a": [1]}


@pytest.mark.needs("numpy")
@pytest.mark.parametrize("dtype", ["<m8[0Y]", "<M8[0D]", ">M8[0ms]"])
def test_time_types_with_a_zero_unit_multiplier_are_refused_both_ways(dtype: str) -> None:
    """A datetime or timedelta dtype of unit multiplier 0 (no array of it can be copied) is not decoded, nor written as data."""
    raw = bytes(8)
    name = dtype.encode()
    streams = {
        "array": b"A" + bytes([len(name)]) + name + b"\x01" + (1).to_bytes(8, "little") + b"\x00" + b"\x00" + (8).to_bytes(8, "little") + raw,
        "scalar": b"n" + bytes([len(name)]) + name + (8).to_bytes(4, "little") + raw,
        "dtype": b"k" + bytes([len(name)]) + name,
    }
    for what, stream in streams.items():
        with pytest.raises(_codec.DecodeError, match="multiplied by 0"):
            _codec.decode(stream, [])
        assert what
    array = np.frombuffer(raw, dtype=dtype)
    for value in (array, array[0], array.dtype):
        with pytest.warns(callstate.PickledStateWarning, match="multiplied by 0|not a plain"):
            data = callstate.dumps({"k": {"v": value}})
        assert [entry.codec for entry in callstate.inspect(data)] == ["pickle"]


def test_the_types_register_type_refuses_are_the_ones_the_encoder_writes() -> None:
    """_native names exactly the types the encoder has a writer for, and the array types it writes, no others."""
    assert set(_encoder._WRITERS) == _native.standard_types()
    samples: list[Any] = [] if np is None else [np.arange(3), np.float32(1.5), np.str_("a"), np.dtype("<f8")]
    if torch is not None:
        samples += [torch.ones(2), torch.nn.Parameter(torch.ones(2)), torch.Size([2]), torch.device("cpu"), torch.float32]
    for value in samples:
        assert _native.is_native(type(value)), type(value)
        assert same(round_trip(value), value)
    assert all(_native.is_native(cls) for cls in _encoder._WRITERS)
    assert not _native.is_native(Holder) and (np is None or not _native.is_native(np.recarray))
