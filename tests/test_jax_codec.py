"""jax arrays in the data codec: written out of band as arrays, read back as jax arrays, exactly."""

from __future__ import annotations

import json
import os
import pathlib
import struct
import subprocess
import sys
import textwrap
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import callstate
from callstate._encoding import _codec, _format

GOLDEN = pathlib.Path(__file__).parent / "golden"
CHILD = pathlib.Path(__file__).with_name("hostile_child.py")
sys.path.insert(0, str(GOLDEN))
import golden_states  # noqa: E402

KEY = "EMA{'decay': 0.99}"


def same_jax(a: Any, b: Any) -> bool:
    """Whether ``b`` is an exact copy of ``a``: same types, dtypes, shapes, bytes, keys' implementations."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same_jax(a[k], b[k]) for k in a)
    if isinstance(a, jax.Array):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            if str(jax.random.key_impl(a)) != str(jax.random.key_impl(b)):
                return False
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        x, y = np.asarray(a), np.asarray(b)
        return x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
    return bool(a == b)


def payload(name: str, shape: tuple[int, ...], impl: str, data: bytes) -> bytes:
    """A payload of one ``J`` value with an inline buffer, built byte by byte as docs/format.md gives it."""
    out = bytes([ord("J"), len(name)]) + name.encode() + bytes([len(shape)])
    out += b"".join(struct.pack("<Q", d) for d in shape)
    out += bytes([len(impl)]) + impl.encode() + b"\x00" + struct.pack("<Q", len(data)) + data
    return out


def file_of(stream: bytes) -> bytes:
    """The bytes of a callstate file whose entry ``KEY`` is ``stream`` (checksummed as a real one)."""
    import io

    out = io.BytesIO()
    _format.write_container(out, [(KEY, "data", (stream,), None, {})], {})
    return out.getvalue()


def test_the_golden_jax_files_are_those_of_the_states() -> None:
    """The jax golden files of version 2 are committed, one per mapping of golden_states.jax_files()."""
    assert sorted(p.stem for p in (GOLDEN / "v2" / "jax").glob("*.callstate")) == sorted(golden_states.jax_files())


@pytest.mark.parametrize("name", sorted(golden_states.jax_files()))
def test_golden_jax_file_reads_back_exactly(name: str) -> None:
    """Each jax golden file reads back untrusted to exactly its states: dtypes, shapes, bytes, key kinds, sharing."""
    got = callstate.read(GOLDEN / "v2" / "jax" / f"{name}.callstate")
    expected = golden_states.jax_files()[name]
    assert same_jax(got, expected)
    assert got[KEY]["again"] is got[KEY]["weights"]
    assert [i.codec for i in callstate.inspect(GOLDEN / "v2" / "jax" / f"{name}.callstate")] == ["data", "data"]


def test_jax_arrays_come_back_on_the_default_device_with_dtype_and_shape() -> None:
    """bfloat16, float8, int4, bool and out-of-band arrays come back as jax arrays on jax's default device."""
    states = {
        "bf16": jnp.linspace(0, 1, 12, dtype=jnp.bfloat16).reshape(3, 4),
        "f8": jnp.array([1.0, -0.25], dtype=jnp.float8_e5m2),
        "u4": jnp.array([0, 15], dtype=jnp.uint4),
        "big": jnp.ones((200, 100), dtype=jnp.float32),
    }
    got = callstate.read(callstate.dumps({KEY: states}))[KEY]
    assert same_jax(got, states)
    for value in got.values():
        assert isinstance(value, jax.Array)
        assert value.devices() == {jax.devices()[0]}


def test_typed_keys_draw_the_same_numbers_after_a_round_trip() -> None:
    """A typed key (threefry, rbg) restored draws what the saved one draws; a raw uint32 key is a plain array."""
    keys = {"fry": jax.random.key(5), "rbg": jax.random.key(5, impl="rbg"), "raw": jax.random.PRNGKey(5)}
    got = callstate.read(callstate.dumps({KEY: keys}))[KEY]
    for name, key in keys.items():
        assert (jax.random.normal(got[name], (4,)) == jax.random.normal(key, (4,))).all()
    assert got["raw"].dtype == jnp.uint32 and not jax.dtypes.issubdtype(got["raw"].dtype, jax.dtypes.prng_key)


def test_register_type_refuses_jax_arrays() -> None:
    """register_type refuses jax.Array's types: the codec writes them itself."""
    with pytest.raises(callstate.errors.CallstateError, match="ArrayImpl"):
        callstate.register_type(type(jnp.ones(1)), to_data=list, from_data=jnp.array)


def test_a_traced_value_is_refused_by_the_encoder() -> None:
    """A tracer (state_dict() called inside jit) is not written: the codec says why."""
    seen: list[str] = []

    @jax.jit
    def f(x: Any) -> Any:
        try:
            _codec.Encoder().encode({"x": x})
        except _codec.Unsupported as exc:
            seen.append(exc.what)
        return x

    f(jnp.ones(2))
    assert len(seen) == 1 and "traced" in seen[0]


def test_float64_needs_64_bit_types_enabled_where_it_is_read() -> None:
    """A float64 jax array read where jax would make it float32 is refused with the fix, not narrowed."""
    with jax.enable_x64(True):
        data = callstate.dumps({KEY: {"w": jnp.ones(3, dtype=jnp.float64)}})
        with jax.enable_x64(True):
            assert callstate.read(data)[KEY]["w"].dtype == jnp.float64
    with pytest.raises(callstate.CorruptCheckpointError, match="jax_enable_x64") as e:
        callstate.read(data)
    assert e.value.key == KEY


HOSTILE = {
    "unknown dtype": payload("object", (1,), "", b"\x00" * 8),
    "getattr bait": payload("numpy.save", (1,), "", b"\x00"),
    "size mismatch": payload("float32", (3,), "", b"\x00" * 8),
    "bool byte": payload("bool", (2,), "", b"\x01\x07"),
    "int4 upper bits": payload("int4", (2,), "", b"\x01\x70"),
    "unknown key impl": payload("uint32", (2,), "os.system", b"\x00" * 8),
    "key data of the wrong shape": payload("uint32", (3,), "threefry2x32", b"\x00" * 12),
    "empty extent": payload("float32", (1 << 40, 0), "", b""),
}


@pytest.fixture(scope="module")
def hostile_outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every hostile payload decoded four ways in one capped child (tests/hostile_child.py): time and address space."""
    work = tmp_path_factory.mktemp("hostile-jax")
    cases = []
    for i, (name, stream) in enumerate(sorted(HOSTILE.items())):
        (work / f"{i}.callstate").write_bytes(file_of(stream))
        cases.append({"name": name, "path": str(work / f"{i}.callstate"), "key": KEY})
    manifest = {"imports": ["jax"], "setup": ["jax"], "trusted": False, "headroom": 1 << 30, "time_cap": 20, "cases": cases}
    (work / "manifest.json").write_text(json.dumps(manifest))
    (work / "canary").mkdir()
    proc = subprocess.run(
        [sys.executable, "-W", "error", str(CHILD), str(work / "manifest.json")],
        cwd=work / "canary", capture_output=True, text=True, timeout=300, check=False,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-3000:]
    results = [json.loads(line)["result"] for line in proc.stdout.splitlines() if "result" in line]
    return {r["name"]: r for r in results}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_jax_payloads_are_refused_naming_the_key(case: str, hostile_outcomes: dict[str, Any]) -> None:
    """A crafted ``J`` value (bad dtype, size, bytes, key impl or shape) is a CorruptCheckpointError naming the key, capped."""
    result = hostile_outcomes[case]
    for mode in ("read", "read_lazy", "loads"):
        outcome = result["outcomes"][mode]
        assert outcome["type"] == "CorruptCheckpointError" and KEY in outcome["message"], (mode, outcome)
        assert result["times"][mode] < 20
    unclaimed = {"restored": [], "unexpected": [KEY], "warnings": ["CallstateWarning"]}
    assert result["outcomes"]["loads_unclaimed"] == {"type": None, "report": unclaimed}
    assert result["canary"] == [] and result["poisoned"] == []


def test_plain_states_and_numpy_arrays_do_not_import_jax() -> None:
    """Saving and reading states without jax arrays imports no jax; one with a jax array imports it to decode."""
    code = """
        import sys
        import numpy as np
        import callstate
        data = callstate.dumps({"A": {"n": 1, "w": np.ones(3)}})
        callstate.read(data)
        print("jax" in sys.modules)
    """
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["False"]
    data = callstate.dumps({"A": {"w": jnp.ones(2)}})
    code = f"""
        import sys
        import callstate
        print(type(callstate.read({data!r})["A"]["w"]).__module__, "jax" in sys.modules)
    """
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["jaxlib._jax", "True"]


# -- both implementations of the codec ------------------------------------------------------------

# What jax writes without 64-bit types: its 32-bit and smaller dtypes, and ml_dtypes' (sub-byte too).
_JAX_DTYPES = ("bool", "int8", "int16", "int32", "uint8", "uint16", "uint32", "float16", "float32",
               "complex64", "bfloat16", "float8_e5m2", "float8_e4m3fn", "int4", "uint4")


@st.composite
def _jax_values(draw: st.DrawFn) -> Any:
    """A jax array of a written dtype and small shape, or a typed PRNG key array of some implementation."""
    if draw(st.integers(0, 4)) == 0:
        impl = draw(st.sampled_from(["threefry2x32", "rbg", "unsafe_rbg"]))
        return jax.random.key(draw(st.integers(0, 2**31 - 1)), impl=impl)
    dtype = jnp.dtype(draw(st.sampled_from(_JAX_DTYPES)))
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    n = int(np.prod(shape)) if shape else 1
    ints = np.array(draw(st.lists(st.integers(0, 7), min_size=n, max_size=n)), dtype=np.uint8)
    return jnp.asarray(ints.astype(dtype).reshape(shape))


def _both_implementations(value: Any) -> Any:
    """Assert both encoders write the same parts and both decoders read them alike; return the read."""
    try:
        from callstate._encoding import _cdecode, _cencode
    except ImportError:
        pytest.fail("the compiled codec is not built: run `make test` or `python setup.py build_ext --inplace`")
    from callstate._encoding import _decoder, _encoder

    python = tuple(bytes(p) for p in _encoder.Encoder().encode(value))
    assert tuple(bytes(p) for p in _cencode.Encoder().encode(value)) == python
    stream, *buffers = python
    reads = [decode(stream, [bytearray(b) for b in buffers]) for decode in (_decoder.decode, _cdecode.decode)]
    assert same_jax(reads[0], reads[1]) and same_jax(value, reads[0])
    return reads[0]


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.sampled_from("abcd"), _jax_values(), max_size=3))
def test_jax_arrays_encode_to_the_same_bytes_and_decode_alike(state: dict[str, Any]) -> None:
    """jax arrays of every written dtype (sub-byte too) and typed keys: the same bytes from the compiled
    encoder as from the reference (tag J), equal arrays from both decoders."""
    _both_implementations(state)


def test_shared_and_out_of_band_jax_arrays_agree() -> None:
    """A jax array met twice is one memo slot in both implementations; a large one goes out of band."""
    big = jnp.ones((200, 100), dtype=jnp.float32)
    out = _both_implementations({"w": big, "again": big})
    assert out["again"] is out["w"]
