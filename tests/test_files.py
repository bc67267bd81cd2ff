"""callstate.save/load/dumps/loads/read/inspect: round trips, laziness, losslessness, errors."""

from __future__ import annotations

import collections
import datetime
import decimal
import fractions
import os
import pathlib
import uuid
import warnings
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import callstate
from callstate._encoding import _format, _writing

# The core suite runs with neither: the tests of arrays and tensors then skip, naming the package.
try:
    import numpy as np
except ImportError:
    np = None
try:
    import torch
except ImportError:
    torch = None


@callstate.stateful(identity=("what",))
class Counter:
    def __init__(self, what: str = "epochs") -> None:
        self.what = what
        self.state = {"epochs": 0, "batches": 0}

    def state_dict(self) -> dict[str, int]:
        return self.state.copy()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.state.update(state)


@callstate.stateful(identity=("name",))
class Holder:
    """Holds any state; counts how often its state was decoded into it."""

    def __init__(self, name: str, value: Any = None) -> None:
        self.name = name
        self.value = value
        self.loads = 0

    def state_dict(self) -> Any:
        return self.value

    def load_state_dict(self, state: Any) -> None:
        self.value = state
        self.loads += 1


class NotAllowed:
    """A module-level class that the data codec does not know (never registered)."""

    def __init__(self, x: int) -> None:
        self.x = x

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NotAllowed) and other.x == self.x


def _pickling(target: Any) -> bytes:
    """dumps() of states holding a type the data codec does not write: pickled, with a warning."""
    with pytest.warns(callstate.PickledStateWarning):
        return callstate.dumps(target)


def _quiet_load(*args: Any, **kwargs: Any) -> callstate.RestoreReport:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", callstate.CallstateWarning)
        return callstate.load(*args, **kwargs)


def test_save_load_reference_counters(tmp_path: pathlib.Path) -> None:
    """The reference Counters round-trip through a file into fresh instances exactly."""
    a, b = Counter("epochs"), Counter("batches")
    a.state["epochs"], b.state["batches"] = 2, 32
    path = tmp_path / "cb.callstate"
    callstate.save([a, b], path)
    fresh = [Counter("batches"), Counter("epochs")]
    report = callstate.load(fresh, path, strict=True)
    assert set(report.restored) == {"Counter{'what': 'epochs'}", "Counter{'what': 'batches'}"}
    assert fresh[0].state == {"epochs": 0, "batches": 32}
    assert fresh[1].state == {"epochs": 2, "batches": 0}


def test_dumps_loads_registry() -> None:
    """dumps/loads work on a registry and return a RestoreReport."""
    reg = callstate.CallbackRegistry([Holder("a", {"x": [1, 2]})])
    data = callstate.dumps(reg)
    assert isinstance(data, bytes)
    fresh = callstate.CallbackRegistry([Holder("a")])
    report = callstate.loads(fresh, data)
    assert report.restored == ("Holder{'name': 'a'}",)
    assert fresh["Holder{'name': 'a'}"].value == {"x": [1, 2]}  # type: ignore[attr-defined]


def test_save_accepts_a_mapping_and_read_returns_it(tmp_path: pathlib.Path) -> None:
    """save() takes a plain {key: state} mapping, and read() returns it with no registry."""
    states = {"A": {"n": 1}, "B{'k': 2}": [1.5, None, "s"]}
    callstate.save(states, tmp_path / "m.cs")
    assert callstate.read(tmp_path / "m.cs") == states
    assert callstate.read(callstate.dumps(states)) == states


ALLOWLISTED = {
    "scalars": [1, 2.5, True, None, "s", b"b", bytearray(b"ba"), complex(1, 2), 10**40],
    "containers": ({"a": (1, 2)}, {1, 2}, frozenset({3}), [slice(1, 2), slice(None, -1, 2), range(3), range(-5, 10**20, 7)]),
    "collections": [
        collections.OrderedDict(a=1),
        collections.deque([1, 2], maxlen=5),
        collections.Counter("hello"),
        collections.defaultdict(list, {"x": [1]}),
    ],
    "datetime": [
        datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
        datetime.date(2026, 1, 2),
        datetime.time(1, 2),
        datetime.timedelta(seconds=5),
    ],
    "numbers": [decimal.Decimal("1.10"), fractions.Fraction(1, 3)],
    "ids": [uuid.UUID("12345678123456781234567812345678"), pathlib.PurePosixPath("a/b"), pathlib.Path("/x")],
}


@pytest.mark.parametrize("name", sorted(ALLOWLISTED))
def test_plain_types_round_trip_untrusted(name: str) -> None:
    """Every kind of plain value is written by the data codec and decodes with trusted=False, equal."""
    value = ALLOWLISTED[name]
    data = callstate.dumps({"k": value})
    assert [i.codec for i in callstate.inspect(data)] == ["data"]
    out = callstate.read(data)["k"]
    assert out == value
    assert type(out) is type(value)


@pytest.mark.needs("numpy")
@pytest.mark.parametrize("size", [0, 10, 100_000])
def test_numpy_arrays_dtypes_and_scalars_round_trip(size: int) -> None:
    """numpy arrays (small in band, large out of band), dtypes and scalars come back equal and writable."""
    arr = np.arange(size, dtype=np.float32).reshape(-1, 2) if size else np.zeros((0, 3))
    state = {"a": arr, "dtype": np.dtype("int16"), "scalar": np.float64(2.5), "f": np.asfortranarray(np.eye(3))}
    out = callstate.read(callstate.dumps({"k": state}))["k"]
    np.testing.assert_array_equal(out["a"], arr)
    assert out["a"].dtype == arr.dtype and out["a"].flags.writeable
    assert out["dtype"] == np.dtype("int16") and out["scalar"] == np.float64(2.5)
    np.testing.assert_array_equal(out["f"], np.eye(3))


@pytest.mark.needs("torch")
@pytest.mark.parametrize("dtype_name", ["float32", "float64", "bfloat16", "float16", "int64", "bool", "uint8"])
@pytest.mark.parametrize("numel", [0, 7, 40_000])
def test_torch_tensors_round_trip_bitwise(dtype_name: str, numel: int) -> None:
    """Tensors of every common dtype, empty to large, come back bitwise equal, writable and on CPU."""
    dtype = getattr(torch, dtype_name)
    t = (torch.arange(numel) % 7).to(dtype).reshape(-1, 1) if numel else torch.zeros(0, 2, dtype=dtype)
    out = callstate.read(callstate.dumps({"k": {"t": t, "dtype": dtype, "dev": torch.device("cpu")}}))["k"]
    assert out["t"].dtype == dtype and out["t"].shape == t.shape
    assert torch.equal(out["t"], t)
    assert out["dtype"] is dtype and out["dev"] == torch.device("cpu")
    if numel:
        out["t"][0] = t[0]  # writable, owns its memory


@pytest.mark.needs("torch")
def test_torch_parameter_non_contiguous_and_grad() -> None:
    """Parameters stay Parameters, requires_grad is kept, non-contiguous views are saved by value."""
    p = torch.nn.Parameter(torch.randn(3, 4))
    v = torch.randn(4, 6)[:, ::2]
    g = torch.ones(2, requires_grad=True)
    out = callstate.read(callstate.dumps({"k": [p, v, g, torch.Size([2, 3])]}))["k"]
    assert isinstance(out[0], torch.nn.Parameter) and torch.equal(out[0], p)
    assert torch.equal(out[1], v)
    assert out[2].requires_grad and torch.equal(out[2], g)
    assert out[3] == torch.Size([2, 3])


def test_cloudpickle_only_when_needed_and_only_trusted() -> None:
    """A lambda is saved with cloudpickle; untrusted read refuses it naming the entry, trusted reads it."""
    data = _pickling({"plain": {"x": 1}, "code": {"f": lambda x: x + 1}})
    codecs = {e.key: e.codec for e in callstate.inspect(data)}
    assert codecs == {"plain": "data", "code": "cloudpickle"}
    with pytest.raises(callstate.UnsafeCheckpointError, match=r"entry 'code'.*cloudpickle.*trusted=True") as e:
        callstate.read(data)
    assert e.value.key == "code"
    assert callstate.read(data, trusted=True)["code"]["f"](1) == 2


def test_unserializable_state_raises_naming_key_and_writes_nothing(tmp_path: pathlib.Path) -> None:
    """A state neither pickle nor cloudpickle can serialise raises SerializationError; no file appears."""
    import threading

    with pytest.raises(callstate.errors.SerializationError, match=r"'lock'.*state_dict") as e:
        callstate.save({"ok": 1, "lock": threading.Lock()}, tmp_path / "x.cs")
    assert e.value.key == "lock"
    assert isinstance(e.value, TypeError)
    assert os.listdir(tmp_path) == []


def test_non_str_key_refused() -> None:
    """A non-str key (a legacy class object) cannot be written, with a message saying what to do."""
    with pytest.raises(callstate.errors.SerializationError, match="not a str"):
        callstate.dumps({Counter: {"epochs": 1}})


def test_unknown_class_is_pickled_with_a_warning_and_needs_trusted() -> None:
    """A class the data codec does not know is pickled (warned at save); an untrusted read names it and register_type."""
    with pytest.warns(callstate.PickledStateWarning, match=r"'k' holds test_files\.NotAllowed.*trusted=True") as w:
        data = callstate.dumps({"k": NotAllowed(3)})
    assert w[0].filename == __file__  # points at the caller's line
    warning = w[0].message
    assert isinstance(warning, callstate.PickledStateWarning)
    assert (warning.key, warning.reason) == ("k", "test_files.NotAllowed")
    with pytest.raises(
        callstate.UnsafeCheckpointError, match=r"test_files\.NotAllowed.*callstate\.register_type\(NotAllowed"
    ) as e:
        callstate.read(data)
    assert e.value.global_name == "test_files.NotAllowed"
    assert e.value.key == "k"
    assert callstate.read(data, trusted=True)["k"] == NotAllowed(3)


def test_registered_class_is_written_as_data_and_decodes_untrusted() -> None:
    """After register_type, the same state is written by the data codec and read back with no trust."""
    callstate.register_type(NotAllowed, to_data=lambda o: {"x": o.x}, from_data=lambda d: NotAllowed(d["x"]))
    try:
        data = callstate.dumps({"k": [NotAllowed(3), NotAllowed(4)]})
        assert [i.codec for i in callstate.inspect(data)] == ["data"]
        assert callstate.read(data)["k"] == [NotAllowed(3), NotAllowed(4)]
    finally:
        callstate.unregister_type(NotAllowed)


def test_inspect_lists_entries_without_decoding() -> None:
    """inspect() gives key, codec, size and checksum per entry, even for states that would not decode."""
    data = _pickling({"a": {"x": 1}, "b": NotAllowed(1)})
    infos = callstate.inspect(data)
    assert [i.key for i in infos] == ["a", "b"]
    assert [i.codec for i in infos] == ["data", "pickle"]
    assert [i.info for i in infos] == [{}, {"pickled": "test_files.NotAllowed"}]
    assert all(i.ok and i.size > 0 and len(i.checksum) == 8 for i in infos)


def test_inspect_reports_a_damaged_payload_as_not_ok() -> None:
    """inspect() marks an entry whose bytes no longer match its checksum, and read() refuses it."""
    data = bytearray(callstate.dumps({"a": {"x": 1}, "b": {"y": "z" * 50}}))
    entries, _ = _format.parse(memoryview(bytes(data)), "x")
    offset = sum(p.nbytes for p in entries[0].parts) + _format.HEADER.size + 20
    data[offset] ^= 1
    infos = callstate.inspect(bytes(data))
    assert [i.ok for i in infos] == [True, False]
    with pytest.raises(callstate.CorruptCheckpointError, match="entry 'b'") as e:
        callstate.read(bytes(data))
    assert e.value.key == "b"


def test_load_decodes_only_claimed_entries(tmp_path: pathlib.Path) -> None:
    """load() decodes only what callbacks claim: an unloadable unclaimed entry is never unpickled."""
    path = tmp_path / "f.cs"
    path.write_bytes(_pickling({"Holder{'name': 'a'}": {"v": 1}, "Other": NotAllowed(5)}))
    reg = callstate.CallbackRegistry([Holder("a")])
    report = _quiet_load(reg, path)
    assert report.restored == ("Holder{'name': 'a'}",) and report.unexpected == ("Other",)
    kept = reg.unclaimed["Other"]
    assert isinstance(kept, callstate.EncodedState)
    with pytest.raises(callstate.UnsafeCheckpointError):
        kept.decode()


def test_unclaimed_entries_are_written_back_byte_for_byte(tmp_path: pathlib.Path) -> None:
    """Resume then save keeps an unclaimed entry's exact bytes and checksum, even a cloudpickled one."""
    path = tmp_path / "f.cs"
    path.write_bytes(_pickling({"Holder{'name': 'a'}": 1, "Other": NotAllowed(5), "Code": {"f": lambda: 3}}))
    before = {e.key: e for e in _format.parse(memoryview(path.read_bytes()), "x")[0]}
    reg = callstate.CallbackRegistry([Holder("a")])
    _quiet_load(reg, path)
    reg["Holder{'name': 'a'}"].value = 2  # type: ignore[attr-defined]
    callstate.save(reg, path)
    after = {e.key: e for e in _format.parse(memoryview(path.read_bytes()), "x")[0]}
    for key in ("Other", "Code"):
        assert after[key].codec == before[key].codec and after[key].crc == before[key].crc
        assert after[key].info == before[key].info
        assert [bytes(p) for p in after[key].parts] == [bytes(p) for p in before[key].parts]
    assert callstate.read(path, trusted=True)["Holder{'name': 'a'}"] == 2


def test_unclaimed_entry_delivered_to_callback_registered_later(tmp_path: pathlib.Path) -> None:
    """A callback registered after a lazy load receives its still-encoded state, decoded then."""
    path = tmp_path / "f.cs"
    callstate.save({"Holder{'name': 'a'}": 1, "Holder{'name': 'b'}": [2]}, path)
    reg = callstate.CallbackRegistry([Holder("a")])
    _quiet_load(reg, path)
    late = Holder("b")
    reg.register(late)
    assert late.value == [2] and late.loads == 1
    assert dict(reg.unclaimed) == {}


def test_damaged_unclaimed_entry_refuses_to_be_written_back(tmp_path: pathlib.Path) -> None:
    """An unclaimed entry damaged in its source is not propagated: save raises, naming it, and writes nothing."""
    data = bytearray(callstate.dumps({"Holder{'name': 'a'}": 1, "Other": {"y": "z" * 50}}))
    entries, _ = _format.parse(memoryview(bytes(data)), "x")
    start = _format.HEADER.size + sum(p.nbytes for p in entries[0].parts)
    data[start + 10] ^= 0x40
    reg = callstate.CallbackRegistry([Holder("a")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", callstate.CallstateWarning)
        callstate.loads(reg, bytes(data))
    out = tmp_path / "out.cs"
    with pytest.raises(callstate.CorruptCheckpointError, match=r"'Other'.*discard_unclaimed") as e:
        callstate.save(reg, out)
    assert e.value.key == "Other"
    assert not out.exists()
    reg.discard_unclaimed(["Other"])
    callstate.save(reg, out)
    assert callstate.read(out) == {"Holder{'name': 'a'}": 1}


def test_strict_load_refuses_before_decoding_anything() -> None:
    """A strict load with a missing state changes no callback."""
    data = callstate.dumps({"Holder{'name': 'a'}": 1})
    a, b = Holder("a", 0), Holder("b", 0)
    with pytest.raises(callstate.StateMismatchError) as e:
        callstate.loads([a, b], data, strict=True)
    assert e.value.missing == ("Holder{'name': 'b'}",)
    assert a.loads == 0 and a.value == 0


def test_unsafe_claimed_state_changes_no_callback() -> None:
    """If one claimed state cannot be decoded safely, no callback is restored at all."""
    data = _pickling({"Holder{'name': 'a'}": 1, "Holder{'name': 'b'}": NotAllowed(2)})
    a, b = Holder("a", 0), Holder("b", 0)
    with pytest.raises(callstate.UnsafeCheckpointError):
        callstate.loads([a, b], data)
    assert (a.value, a.loads, b.value, b.loads) == (0, 0, 0, 0)


def test_loaded_states_are_owned_by_each_callback() -> None:
    """Two callbacks restored from one file never share a decoded object."""
    shared = [1, 2]
    data = callstate.dumps({"Holder{'name': 'a'}": shared, "Holder{'name': 'b'}": shared})
    a, b = Holder("a"), Holder("b")
    callstate.loads([a, b], data)
    assert a.value == b.value == [1, 2]
    assert a.value is not b.value


def test_missing_file_raises_file_not_found(tmp_path: pathlib.Path) -> None:
    """Loading a path that does not exist raises FileNotFoundError, untouched."""
    with pytest.raises(FileNotFoundError):
        callstate.load([Holder("a")], tmp_path / "nope.cs")


def test_loads_refuses_a_path() -> None:
    """loads() given a path string says to use load()."""
    with pytest.raises(TypeError, match=r"callstate\.load\(\)"):
        callstate.loads([], "some/path")  # type: ignore[arg-type]


def test_newer_format_version_is_unsupported() -> None:
    """A file from a newer format version raises UnsupportedFormatError naming both versions."""
    data = bytearray(callstate.dumps({"a": 1}))
    head = _format.struct.pack("<8sHH", _format.MAGIC, 7, 0)
    data[: _format.HEADER.size] = head + _format.struct.pack("<I", _format.zlib.crc32(head))
    with pytest.raises(callstate.UnsupportedFormatError, match=r"version 7.*up to 2") as e:
        callstate.read(bytes(data))
    assert (e.value.found, e.value.supported) == (7, 2)


def test_meta_round_trips(tmp_path: pathlib.Path) -> None:
    """Metadata passed to save() is read back by read_meta()."""
    from callstate._io._files import read_meta

    callstate.save({"a": 1}, tmp_path / "m.cs", meta={"world_size": 4})
    assert read_meta(tmp_path / "m.cs") == {"world_size": 4}


states_strategy = st.recursive(
    st.one_of(
        st.integers(),
        st.floats(allow_nan=False),
        st.text(max_size=10),
        st.binary(max_size=10),
        st.booleans(),
        st.none(),
        st.decimals(allow_nan=False, allow_infinity=False),
        st.datetimes(),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(st.text(max_size=5), inner, max_size=4),
        st.frozensets(st.integers(), max_size=3),
    ),
    max_leaves=12,
)


@given(st.dictionaries(st.text(min_size=1, max_size=12), states_strategy, max_size=6))
def test_property_data_codec_round_trip(states: dict[str, Any]) -> None:
    """Any mapping of plain states round-trips through dumps/read unchanged (data codec)."""
    data = callstate.dumps(states)
    assert all(i.codec == "data" for i in callstate.inspect(data))
    assert callstate.read(data) == states


@given(st.dictionaries(st.text(min_size=1, max_size=12), st.integers(), max_size=4), st.integers())
def test_property_cloudpickle_codec_round_trip(states: dict[str, Any], n: int) -> None:
    """States holding lambdas round-trip through the cloudpickle codec when trusted."""
    states = {**states, "fn": {"f": lambda: n}}
    out = callstate.read(_pickling(states), trusted=True)
    assert out["fn"]["f"]() == n
    assert {k: v for k, v in out.items() if k != "fn"} == {k: v for k, v in states.items() if k != "fn"}


@pytest.mark.needs("numpy", "torch")
@given(
    st.lists(st.integers(min_value=0, max_value=200_000), min_size=1, max_size=3),
    st.sampled_from(["float32", "int64", "uint8"]),
)
def test_property_array_codec_round_trip(sizes: list[int], dtype: str) -> None:
    """numpy arrays and torch tensors of any size (in band and out of band) round-trip bitwise."""
    state = {
        "np": [np.arange(n, dtype=dtype) for n in sizes],
        "t": [torch.from_numpy(np.arange(n, dtype=dtype)) for n in sizes],
    }
    out = callstate.read(callstate.dumps({"k": state}))["k"]
    for a, b in zip(out["np"], state["np"], strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(out["t"], state["t"], strict=True):
        assert torch.equal(a, b)


def test_a_fifo_is_refused_at_once_naming_it(tmp_path: pathlib.Path) -> None:
    """A named pipe with no writer gives a typed error immediately (it used to wait forever)."""
    import subprocess
    import sys

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    code = (
        "import sys, callstate\n"
        "try:\n    callstate.read(sys.argv[1])\n"
        "except callstate.CorruptCheckpointError as e:\n    print(e.path, '|', e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(fifo)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{fifo} |") and "is a FIFO, not a regular file" in proc.stdout


@pytest.mark.parametrize("kind", ["directory", "dev-zero-link", "dev-null"])
def test_only_regular_files_are_read(tmp_path: pathlib.Path, kind: str) -> None:
    """A directory, a symlink to /dev/zero or a device gives CorruptCheckpointError naming the path, allocating nothing."""
    if kind == "directory":
        target, what = tmp_path, "a directory without callbacks.callstate"
    elif kind == "dev-zero-link":
        target, what = tmp_path / "zero.callstate", "a character device"
        target.symlink_to("/dev/zero")
    else:
        target, what = pathlib.Path("/dev/null"), "a character device"
    for call in (callstate.read, callstate.inspect, lambda p: callstate.load([], p)):
        with pytest.raises(callstate.CorruptCheckpointError, match=f"is {what}(, not a regular file|, so no checkpoint callstate reads)") as e:
            call(target)
        assert e.value.path == str(target)


@pytest.mark.needs("numpy")
def test_save_and_save_async_write_the_bytes_dumps_gives(tmp_path: pathlib.Path) -> None:
    """Checksums computed while writing (save, save_async) equal those computed first (dumps): the files are identical."""
    state = {"a": {"w": np.arange(3 << 20, dtype=np.float32), "b": np.ones(100_000), "n": 3}, "s": [1, "x"]}
    callstate.save(state, tmp_path / "sync.callstate")
    callstate.save_async(state, tmp_path / "async.callstate").result(timeout=60)
    expected = callstate.dumps(state)
    assert (tmp_path / "sync.callstate").read_bytes() == expected
    assert (tmp_path / "async.callstate").read_bytes() == expected
    assert all(e.ok for e in callstate.inspect(expected))


def test_read_refuses_an_entry_under_the_reserved_versions_key(tmp_path: pathlib.Path) -> None:
    """A crafted entry "callstate:versions" would pass for a versions table: read refuses the file."""
    path = tmp_path / "crafted.callstate"
    crafted = [
        (*e[:4], {}) for e in _writing.encode_entries({"other": {"a": 7}, "callstate:versions": {"other": 4}})
    ]
    with path.open("wb") as out:
        _format.write_container(out, crafted, {})
    for lazy in (False, True):
        with pytest.raises(callstate.CorruptCheckpointError, match="reserved key") as caught:
            callstate.read(path, lazy=lazy)
        assert (caught.value.path, caught.value.key) == (str(path), "callstate:versions")


@pytest.mark.parametrize("versions", [{"a": True}, {"a": 0}, "a"])
def test_save_of_a_mapping_with_a_malformed_versions_entry_names_the_argument(
    tmp_path: pathlib.Path, versions: Any
) -> None:
    """The states given to save carry a bad "callstate:versions": a SerializationError, nothing written."""
    path = tmp_path / "bad.callstate"
    states = {"a": {"n": 1}, "callstate:versions": versions}
    with pytest.raises(callstate.errors.SerializationError, match="states to save") as caught:
        callstate.save(states, path)
    assert caught.value.key == "callstate:versions" and not path.exists()
    with pytest.raises(callstate.errors.SerializationError, match="states to save"):
        callstate.dumps(states)
