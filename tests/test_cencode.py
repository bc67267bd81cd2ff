"""The compiled encoder writes the very bytes of the Python encoder (the reference), raises its errors,
leaks nothing, and is the one selected unless CALLSTATE_PURE_PYTHON=1 asks for the reference."""

from __future__ import annotations

import collections
import gc
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_codec import keys, values

import callstate
from callstate._encoding import _codec, _encoder, _implementation

sys.path.insert(0, str(Path(__file__).parent / "golden"))
import golden_states

try:  # the core suite runs without numpy: the tests of arrays are then skipped, naming it
    import numpy as np
except ImportError:
    np = None
try:  # collected alike where it is not built (the unpacked sdist); each test then fails, saying so
    from callstate._encoding import _cencode
except ImportError:
    _cencode = None

ROOT = Path(__file__).resolve().parent.parent


def both(value: Any) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """The parts of ``value`` from the reference and from the compiled encoder, as bytes."""
    if _cencode is None:
        pytest.fail("the compiled encoder is not built: run `make test` or `python setup.py build_ext --inplace`")
    python = _encoder.Encoder().encode(value)
    c = _cencode.Encoder().encode(value)
    return tuple(bytes(p) for p in python), tuple(bytes(p) for p in c)


def error_of(encode: Any, value: Any) -> tuple[type[BaseException], str, type[BaseException] | None]:
    """The class, message and cause's class of the error ``encode(value)`` raises."""
    with pytest.raises(Exception) as info:
        encode(value)
    cause = info.value.__cause__
    return type(info.value), str(info.value), None if cause is None else type(cause)


def same_error(value: Any) -> tuple[type[BaseException], str, type[BaseException] | None]:
    """Assert both encoders raise the same error for ``value``; return it."""
    both(None)  # fails with the reason if the extension is not built
    expected = error_of(_encoder.Encoder().encode, value)
    assert error_of(_cencode.Encoder().encode, value) == expected
    return expected


# -- the same bytes -------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(values)
def test_every_supported_value_encodes_to_the_same_bytes(value: Any) -> None:
    """Any value of the supported types and their nesting: the same stream and buffers from both encoders."""
    python, c = both(value)
    assert c == python


def _shared(parts: list[Any]) -> st.SearchStrategy[Any]:
    return st.lists(st.sampled_from(parts), min_size=1, max_size=8).flatmap(
        lambda picked: st.sampled_from([picked, tuple(picked), {i: p for i, p in enumerate(picked)}])
    )


@settings(max_examples=150, deadline=None)
@given(st.lists(values, min_size=1, max_size=4).flatmap(_shared))
def test_shared_objects_encode_to_the_same_references(value: Any) -> None:
    """The same objects met on many paths (memo slots, references, heights): the same bytes from both."""
    python, c = both(value)
    assert c == python


@settings(max_examples=100, deadline=None)
@given(st.lists(keys, max_size=4), st.integers(0, 3))
def test_cycles_encode_to_the_same_bytes(items: list[Any], where: int) -> None:
    """Lists, dicts, sets-in-lists and deques that contain themselves: the same bytes from both."""
    cyclic_list: list[Any] = [*items]
    cyclic_list.insert(min(where, len(cyclic_list)), cyclic_list)
    cyclic_dict: dict[Any, Any] = dict.fromkeys(items, 1)
    cyclic_dict["me"] = cyclic_dict
    queue: collections.deque[Any] = collections.deque(items)
    queue.append(queue)
    for value in (cyclic_list, cyclic_dict, queue, [cyclic_list, cyclic_dict, (cyclic_list,)]):
        python, c = both(value)
        assert c == python


@pytest.mark.needs("numpy")
def test_the_fallback_types_encode_to_the_same_bytes() -> None:
    """Registered types, numpy arrays (inline, out of band, shared), scalars and dtypes: the same bytes."""
    golden_states.register_interval()
    interval = golden_states.Interval(0.5, 2.0)
    big = np.arange(_codec.OUT_OF_BAND_MIN // 8 + 1, dtype=np.float64)
    small = np.arange(6, dtype=np.int16).reshape(2, 3)
    value = {
        "intervals": [interval, interval, golden_states.Interval(1, 3)],
        "arrays": [big, small, big, np.asfortranarray(small), small[:, ::2]],
        "scalars": [np.float64(1.5), np.int8(-3), np.dtype("complex64"), np.bool_(True)],
        "deep": [[interval]] * 3,
    }
    python, c = both(value)
    assert len(c) == 2 and c == python


@pytest.mark.needs("numpy", "torch")
def test_golden_states_encode_to_the_same_bytes() -> None:
    """Every state of every golden file (versions 1 and 2) encodes to the same bytes with both encoders."""
    golden_states.register_interval()
    for name, states in golden_states.files(2).items():
        for key, state in states.items():
            python, c = both(state)
            assert c == python, (name, key)


def test_a_counted_container_that_changes_under_to_data_is_refused_as_python_does() -> None:
    """A registered to_data that grows the dict being written: both raise the same RuntimeError."""

    class Grower:
        pass

    grown: dict[Any, Any] = {}

    def to_data(obj: Grower) -> int:
        grown[len(grown) + 100] = 0
        return 1

    callstate.register_type(Grower, to_data=to_data, from_data=lambda d: Grower(), name="test.Grower")
    try:
        grown.update({"a": Grower(), "b": 1})
        assert same_error(grown)[0] is RuntimeError
    finally:
        callstate.unregister_type(Grower)


# -- the same errors ------------------------------------------------------------------------------


class _Int(int):
    pass


def _deep(levels: int, leaf: Any = None) -> list[Any]:
    """A list nested ``levels`` deep, ``leaf`` in its innermost list."""
    root: list[Any] = []
    node = root
    for _ in range(levels):
        node.append([])
        node = node[0]
    node.append(leaf)
    return root


def test_what_neither_encoder_writes_raises_the_same_error() -> None:
    """Unknown types, subclasses, bad defaultdict factories, huge ints, deep nesting: same class and message."""
    shared_deep = _deep(60)
    cases = [
        object(),
        [1, _Int(3)],
        collections.defaultdict(lambda: 0),
        1 << (8 * _codec.MAX_INT_BYTES + 8),
        _deep(_codec.MAX_DEPTH + 1),
        _deep(_codec.MAX_DEPTH - 1, [0.5] * 10),  # a packed list one level too deep
        _deep(_codec.MAX_DEPTH - 1, [*range(7), 1 << 70]),  # an unpackable one
        [shared_deep, _deep(50, shared_deep)],  # too deep only through a reference
        slice("a", None),
    ]
    for value in cases:
        kind, message, _ = same_error(value)
        assert kind is _codec.Unsupported and message


def test_lists_packed_or_not_encode_to_the_same_bytes() -> None:
    """Lists at the packing threshold, with bools, int subclasses or ints beyond int64: the same bytes."""
    for value in (
        [0.5] * 7, [0.5] * 8, list(range(8)), [*range(7), 1 << 63], [*range(7), -(1 << 63)], [*range(7), True],
        [0.5] * 7 + [1], [1 << 70] * 9, [-1] * 8,
    ):
        python, c = both(value)
        assert c == python, value


def test_a_registered_type_whose_to_data_raises_gives_the_same_error_and_cause() -> None:
    """A to_data that raises: ToDataError naming the type, its cause chained, from both encoders."""

    class Broken:
        pass

    def to_data(obj: Broken) -> Any:
        raise KeyError("nope")

    callstate.register_type(Broken, to_data=to_data, from_data=lambda d: Broken(), name="test.Broken")
    try:
        assert same_error({"x": [Broken()]}) == (_codec.ToDataError, "test.Broken", KeyError)
    finally:
        callstate.unregister_type(Broken)


def test_a_registered_object_that_contains_itself_raises_the_same_error() -> None:
    """A to_data returning its own object: "contains itself" from both, as a tuple cycle would be."""

    class Loop:
        pass

    callstate.register_type(Loop, to_data=lambda obj: [obj], from_data=lambda d: Loop(), name="test.Loop")
    try:
        kind, message, _ = same_error([Loop()])
        assert kind is _codec.Unsupported and "contains itself" in message
    finally:
        callstate.unregister_type(Loop)


# -- no leaks -------------------------------------------------------------------------------------


def test_repeated_encodes_leak_neither_references_nor_memory() -> None:
    """Thousands of encodes, failing ones too, leave every refcount and the traced memory where they were."""
    both(None)
    golden_states.register_interval()
    shared = [1.5, "x" * 2000]
    state = {
        "s": shared, "t": (shared, shared), "big": 1 << 100, "text": "é\udc80",
        "q": collections.deque([shared]), "i": golden_states.Interval(1, 2), "od": collections.OrderedDict(a=shared),
        **({} if np is None else {"arr": np.arange(4)}),
    }
    encoder = _cencode.Encoder()
    bad = [shared, object()]
    before = sys.getrefcount(shared), sys.getrefcount(bad[1])
    for _ in range(200):  # warm up caches (interned strings, numpy's) before measuring
        encoder.encode(state)
        with pytest.raises(_codec.Unsupported):
            encoder.encode(bad)
    # The least growth of up to three batches: a leak grows every batch, while on 3.13 without numpy,
    # after test_codec's hypothesis runs, about one batch in three grew by 40 to 46 KB on its own.
    grown = []
    for _ in range(3):
        gc.collect()
        tracemalloc.start()
        try:
            start = tracemalloc.get_traced_memory()[0]
            for _ in range(2000):
                encoder.encode(state)
                with pytest.raises(_codec.Unsupported):
                    encoder.encode(bad)
            gc.collect()
            grown.append(tracemalloc.get_traced_memory()[0] - start)
        finally:
            tracemalloc.stop()
        if grown[-1] < 40_000:
            break
    assert (sys.getrefcount(shared), sys.getrefcount(bad[1])) == before
    assert min(grown) < 40_000, grown  # a leak of one object per encode would be 2000 objects, over 50 KB


# -- which one runs -------------------------------------------------------------------------------


def _implementation_in_a_child(pure: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "CALLSTATE_PURE_PYTHON"}
    if pure is not None:
        env["CALLSTATE_PURE_PYTHON"] = pure
    code = (
        "import callstate\n"
        "from callstate._encoding import _codec, _encoder\n"
        "print(callstate.codec_implementation(), _codec.Encoder is _encoder.Encoder)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_pure_python_env_selects_the_reference_in_a_fresh_process() -> None:
    """CALLSTATE_PURE_PYTHON=1 makes a fresh process encode with the Python encoder and report "python"."""
    both(None)
    assert _implementation_in_a_child("1") == ["python", "True"]
    assert _implementation_in_a_child("0") == ["c", "False"]
    assert _implementation_in_a_child(None) == ["c", "False"]


def test_this_process_reports_the_encoder_it_selected() -> None:
    """codec_implementation() says "c" exactly when _codec.Encoder is the compiled one."""
    both(None)
    expected = "python" if _implementation.pure_python() else "c"
    assert callstate.codec_implementation() == expected
    assert (_codec.Encoder is _cencode.Encoder) == (expected == "c")
