"""The compiled decoder (callstate._encoding._cdecode) against the Python one, the reference.

For encoded states, mutated and random bytes and the golden files, both decoders give the same
value, or an error of the same class with the same message, and leave the same allowance. The
hostile payloads of tests/test_security.py are compared in tests/test_cdecode_hostile.py.
"""

from __future__ import annotations

import collections
import datetime
import decimal
import fractions
import gc
import math
import pathlib
import struct
import sys
import tracemalloc
from typing import Any

import pytest
from cdecode_diff import disagreement, outcome
from exact import same
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import callstate
from callstate._encoding import _allowance, _codec

try:  # collected alike where it is not built (the unpacked sdist); each test then fails, saying so
    from callstate._encoding import _cdecode
except ImportError:
    _cdecode = None

GOLDEN = pathlib.Path(__file__).parent / "golden"
sys.path.insert(0, str(GOLDEN))
import golden_states  # noqa: E402

_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.floats(allow_nan=True),
    st.complex_numbers(allow_nan=True),
    st.text(max_size=12),
    st.text(max_size=1),
    st.binary(max_size=12),
    st.sampled_from(["x" * 1500, b"y" * 1100]),  # memoized sizes
)
_keys = st.one_of(
    st.text(max_size=6), st.integers(), st.floats(allow_nan=False), st.tuples(st.integers(), st.text(max_size=3))
)


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(inner, max_size=5),
        st.lists(inner, max_size=4).map(lambda xs: xs + xs[:2]),  # shared items, written as references
        st.lists(st.floats(), min_size=8, max_size=12),  # packed
        st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), min_size=8, max_size=12),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(_keys, inner, max_size=4),
        st.dictionaries(st.text(max_size=4), inner, max_size=4),
        st.sets(_keys, max_size=4),
        st.frozensets(_keys, max_size=4),
        st.binary(max_size=6).map(bytearray),
        st.dictionaries(st.text(max_size=3), inner, max_size=3).map(collections.OrderedDict),
        st.lists(inner, max_size=3).map(collections.deque),
        st.tuples(st.decimals(allow_nan=False, places=3), st.fractions(), st.datetimes()),
    )


states = st.recursive(_leaves, _containers, max_leaves=24)


def _encode(state: Any) -> tuple[bytes, list[bytes]]:
    parts = _codec.Encoder().encode(state)
    return bytes(parts[0]), [bytes(p) for p in parts[1:]]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(states)
def test_encoded_states_decode_identically(state: Any) -> None:
    """Every state the encoder writes decodes to the same value, sharing and allowance in both."""
    stream, buffers = _encode(state)
    assert disagreement(stream, buffers) is None
    assert outcome("c", stream, buffers)[0][0] == "value"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(states, st.data())
def test_mutated_payloads_agree(state: Any, data: st.DataObject) -> None:
    """Bytes changed, cut or inserted in an encoded state give the same value or the same error."""
    stream = bytearray(_encode(state)[0])
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(stream)))
        kind = data.draw(st.sampled_from(["set", "cut", "insert", "count"]))
        if kind == "set" and at < len(stream):
            stream[at] = data.draw(st.integers(0, 255))
        elif kind == "cut":
            del stream[at:]
        elif kind == "insert":
            stream[at:at] = data.draw(st.binary(min_size=1, max_size=6))
        elif kind == "count" and at + 4 <= len(stream):
            stream[at : at + 4] = struct.pack("<I", data.draw(st.sampled_from([0, 1, 7, 2**16, 2**32 - 1])))
    assert disagreement(bytes(stream)) is None


_TAGS = b"NTFjiIfcsSyYalLKteEdoCDqrGHxXhgzmQupAnkPZVWU"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(list(_TAGS)), st.integers(0, 255)), max_size=40))
def test_random_bytes_agree(raw: list[int]) -> None:
    """Bytes made mostly of tags give the same value or the same error in both decoders."""
    assert disagreement(bytes(raw)) is None
    assert disagreement(bytes(raw), bound_memory=False) is None


def _payload(tag: bytes, count: int, body: bytes) -> bytes:
    return tag + struct.pack("<I", count) + body


@pytest.mark.parametrize(
    "stream",
    [
        b"", b"s", b"s\x05\x00\x00\x00ab", b"s\x02\x00\x00\x00\xff\xfe", b"s\x02\x00\x00\x00\xc0\x80",
        b"l\x02\x00\x00\x00s\x01\x00\x00", b"l\x01\x00\x00\x00f\x00", b"l\x01\x00\x00\x00j",
        b"I\x01\x10\x00\x00", b"I\x02\x00\x00\x00\xff", b"y" + struct.pack("<Q", 2**64 - 1),
        _payload(b"l", 1, b"r\x01\x00\x00\x00"), _payload(b"t", 1, b"r\x00\x00\x00\x00"),
        _payload(b"E", 1, b"r\x00\x00\x00\x00"), _payload(b"e", 1, b"l\x00\x00\x00\x00"),
        _payload(b"d", 1, b"l\x00\x00\x00\x00N"), _payload(b"d", 2, b"j\x01Nj\x01T"),
        _payload(b"e", 2, b"s\x01\x00\x00\x00as\x01\x00\x00\x00a"),
        _payload(b"L", 2, b"\x00" * 15), _payload(b"K", 3, b"\x00" * 16), b"Z\x00", b"\xff",
        _payload(b"l", 1, b"U\x03abcN"), _payload(b"l", 0, b"N"),
        b"l\x01\x00\x00\x00" * 101 + b"N", b"t\x01\x00\x00\x00" * 101 + b"N",
        _payload(b"d", 1, b"t\x01\x00\x00\x00l\x00\x00\x00\x00N"),
    ],
)
def test_malformed_payloads_agree(stream: bytes) -> None:
    """Each malformed payload (cut, past the end, bad UTF-8, cycles through immutables, unhashable or
    repeated keys, too deep) raises the same error class with the same message in both decoders."""
    assert disagreement(stream) is None
    assert outcome("c", stream, [])[0][0] == "error"


def test_shared_and_cyclic_objects_keep_their_identity() -> None:
    """A list holding itself and a dict reached twice come back shared the same way from both."""
    inner: dict[str, Any] = {"k": [1.5, "x"]}
    loop: list[Any] = [inner, inner]
    loop.append(loop)
    stream, _ = _encode({"a": loop, "b": inner, "t": (inner, inner)})
    assert disagreement(stream) is None
    value = _cdecode.decode(stream, [])
    assert value["a"][2] is value["a"] and value["a"][0] is value["b"] is value["t"][1]


# Ints equal modulo 2**61 - 1 share a hash (and -1 shares -2's): keys crafted to collide.
_MODULUS = 2**61 - 1


@pytest.mark.parametrize(
    "keys",
    [
        [i * 7 for i in range(2_000)] + [3.5, -1, -2, (1, "a"), frozenset({2})],
        [i + k * _MODULUS for i in range(8) for k in range(2)],  # 8 pairs sharing a hash: allowed
        [5 + k * _MODULUS for k in range(17)],  # 16 sharing one: allowed, each pair compared
        [i + k * _MODULUS for i in range(17) for k in range(2)],  # 17 shared: refused
        [2**3000 + 1 + k * _MODULUS for k in range(3)],  # big ints sharing a hash: dear to compare
        [(i, i) for i in range(50)] + [(0, 0)],  # a key there twice
    ],
    ids=["mixed", "pairs", "group-of-17", "too-many", "big-ints", "repeated"],
)
def test_non_str_keys_are_checked_alike(keys: list[Any]) -> None:
    """Dicts and sets with non-str keys, colliding or not, give the same value or the same error,
    and leave the same allowance, in both decoders (the compiled one checks them in C)."""
    body = b"".join(_encode(k)[0] + b"N" for k in keys)
    as_dict = b"d" + struct.pack("<I", len(keys)) + body
    as_set = b"e" + struct.pack("<I", len(keys)) + b"".join(_encode(k)[0] for k in keys)
    for stream in (as_dict, as_set):
        assert disagreement(stream) is None
    refused = outcome("c", as_dict, [])[0]
    assert (refused[0] == "error") == (len(set(map(hash, keys))) < len(keys) - 16 or len(set(keys)) < len(keys))


def test_int_keys_are_checked_without_the_python_builders(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled decoder builds a dict of int keys, collisions checked, without calling Reader._hashable."""
    from callstate._encoding import _reader

    def refuse(self: Any, keys: Any) -> None:
        raise AssertionError("the compiled decoder called the Python hash-cost check")

    monkeypatch.setattr(_reader.Reader, "_hashable", refuse)
    state = {i: i / 3 for i in range(1_000)} | {-1: "a", -2: "b"}
    stream, _ = _encode(state)
    assert _cdecode.decode(stream, []) == state
    crafted = b"d" + struct.pack("<I", 18) + b"".join(_encode(3 + k * _MODULUS)[0] + b"N" for k in range(18))
    with pytest.raises(_codec.DecodeError, match="17 keys share a hash"):
        _cdecode.decode(crafted, [])


def test_allowance_is_charged_the_same_to_the_byte() -> None:
    """Each state of the issue's kinds leaves the same allowance after decoding in both decoders."""
    for state in (
        [i / 7 for i in range(1000)], {f"k{i}": i / 3 for i in range(500)}, [(i, i / 2) for i in range(500)],
        {1: "a", (2, 3): frozenset({4, 5}), 2**70: {6, 7}},
    ):
        stream, _ = _encode(state)
        python, c = outcome("python", stream, []), outcome("c", stream, [])
        assert python[:3] == c[:3] and python[1] < _allowance.Allowance(len(stream)).memory


@pytest.mark.parametrize("n", [0, 1, 4, 5, 6, 11, 12, 50, 1_000, 65_536, 10**6, 2**32 - 1])
def test_compiled_allowance_tables_are_the_reference_ones(n: int) -> None:
    """The compiled decoder charges lists, sets and dicts of n items as callstate._allowance does."""
    assert _cdecode.sizes(n) == (_allowance.list_bytes(n), _allowance.set_bytes(n), _allowance.dict_bytes(n))


def test_oversized_and_unbounded_reads_agree() -> None:
    """A payload refused as Oversized by the reference is refused so by the compiled decoder; trusted, both build it."""
    stream, _ = _encode([[0.5] * 8 for _ in range(64)] + ["é" * 100] * 50)
    small = _allowance.Allowance(len(stream))
    small.memory = 3000
    errors = []
    for decode in (_codec.Decoder, None):
        allowance = _allowance.Allowance(len(stream))
        allowance.memory = small.memory
        with pytest.raises(_allowance.Oversized) as info:
            if decode is None:
                _cdecode.decode(stream, [], allowance=allowance)
            else:
                decode(stream, [], allowance=allowance).decode()
        errors.append((str(info.value), allowance.memory))
    assert errors[0] == errors[1]
    assert disagreement(stream, bound_memory=False) is None


# The golden files whose states hold numpy arrays (golden_states.py): they read only where numpy is.
_WITH_ARRAYS = {"arrays.callstate", "exact.callstate"}


@pytest.mark.parametrize(
    "path",
    [pytest.param(p, marks=[pytest.mark.needs("numpy")] if p.name in _WITH_ARRAYS else [])
     for p in sorted(GOLDEN.glob("v*/*.callstate"))],
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_golden_files_decode_identically(path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every golden file reads back to the same states through either decoder."""
    golden_states.register_interval()
    trusted = path.parent.name == "v1"
    reads = []
    for decode in (_codec.decode, _cdecode.decode):
        monkeypatch.setattr(_codec, "decode", decode)
        reads.append(callstate.read(path, trusted=trusted))
    assert same(reads[0], reads[1])


def test_other_tags_go_to_the_python_builders() -> None:
    """Values the compiled decoder hands to Python (datetimes, Decimals, deques...) come back equal and shared."""
    shared = [1, 2]
    state = {
        "when": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
        "d": decimal.Decimal("1.25"), "f": fractions.Fraction(2, 3), "q": collections.deque([shared], maxlen=3),
        "dd": collections.defaultdict(list, {1: shared}), "c": collections.Counter("aab"), "r": range(1, 9, 2),
        "back": shared, "nan": math.nan,
    }
    stream, _ = _encode(state)
    assert disagreement(stream) is None
    value = _cdecode.decode(stream, [])
    assert value["q"][0] is value["dd"][1] is value["back"]


@pytest.mark.slow
@pytest.mark.parametrize("read_whole", [False, True], ids=["decoder-object", "whole-in-c"])
def test_repeated_decodes_do_not_grow_memory(read_whole: bool) -> None:
    """Decoding a value and malformed payloads 1,500 times each leaves no object behind per decode,
    with a decoder object (no allowance given) and read whole in C (a read's allowance given)."""
    good, _ = _encode({"a": [(i, f"s{i}", {i: frozenset({i})}) for i in range(20)], "b": b"x" * 2000, "c": 2**90,
                       "d": datetime.date(2026, 1, 2)})  # a tag built in Python
    streams = [good, good[:-3], good[:40] + b"\xff" + good[41:], _payload(b"t", 1, b"r\x00\x00\x00\x00"),
               _payload(b"e", 2, b"j\x01j\x01"), b"l\x01\x00\x00\x00" * 101 + b"N"]
    rounds = 1500
    allowance = _allowance.Allowance(10**9)

    def run(times: int) -> int:
        errors = 0
        for stream in streams:
            for _ in range(times):
                try:
                    if read_whole:
                        _cdecode.decode(stream, [], allowance=allowance)
                    else:
                        _cdecode.decode(stream, [])
                except ValueError:
                    errors += 1
        return errors

    run(300)  # fills the interpreter's free lists and caches, which are bounded
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        errors = run(rounds)
        gc.collect()
        growth = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert errors == 5 * rounds
    # One object leaked per decode of any one of them would be 32 * 1,500 = 48,000 bytes at least.
    assert growth < 16 * 1024 + 2 * len(streams) * rounds, growth


def test_the_compiled_decoder_runs_no_cyclic_gc_and_leaves_it_as_it_found_it() -> None:
    """No garbage collection runs while the compiled decoder builds a payload (it made decoding
    containers up to 4x slower than pickle beside many live objects); gc is on again after a
    decode, failed or not, and stays off if it was off."""
    stream = bytes(_codec.Encoder().encode([{"step": i, "tags": ["a", i]} for i in range(5_000)])[0])
    runs: list[str] = []

    def count(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            runs.append(phase)

    gc.callbacks.append(count)
    try:
        gc.collect()
        runs.clear()
        assert len(_cdecode.decode(stream, [])) == 5_000
        # Some 15,000 containers: about 20 collections if gc ran; at most the one their count
        # starts as soon as the decoder turns it back on.
        assert len(runs) <= 1 and gc.isenabled(), runs
        with pytest.raises(_codec.DecodeError):
            _cdecode.decode(stream[:-3], [])
        assert gc.isenabled()
        runs.clear()
        assert len(_cdecode.decode(stream, [], allowance=_allowance.Allowance(len(stream)))) == 5_000
        assert len(runs) <= 1 and gc.isenabled(), runs
        gc.disable()
        try:
            _cdecode.decode(stream, [])
            _cdecode.decode(stream, [], allowance=_allowance.Allowance(len(stream)))
            assert not gc.isenabled()
        finally:
            gc.enable()
    finally:
        gc.callbacks.remove(count)
