"""RNGState: random streams saved as plain data and drawn again, in a new process and on every rank."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from dist_helpers import Cluster

import callstate
import callstate.distributed as csd
from callstate.errors import InvalidStateError

ROOT = Path(__file__).resolve().parents[1]

# Draws from every stream RNGState keeps, as JSON-able numbers.
_DRAW = """
def draw(gens):
    return [random.random(), float(np.random.rand()), float(torch.rand(1)),
            float(gens["np"].random()), float(torch.rand(1, generator=gens["torch"]))]
"""
exec(_DRAW)  # the same draw() here, where the streams are restored

_WRITER = f"""
import random, sys, json
import numpy as np, torch
import callstate
{_DRAW}
random.seed(1); np.random.seed(2); torch.manual_seed(3)
gens = {{"np": np.random.default_rng(4), "torch": torch.Generator().manual_seed(5)}}
draw(gens)
callstate.save([callstate.RNGState(generators=gens)], sys.argv[1])
print(json.dumps(draw(gens)))
"""

def run_python(code: str, *args: str) -> str:
    """Run ``code`` in a new interpreter with this callstate; return its stdout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def kept_streams() -> Iterator[None]:
    """Give the test process its global streams back after a test that restores others into it."""
    python, numpy, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    yield
    random.setstate(python)
    np.random.set_state(numpy)
    torch.set_rng_state(torch_state)


@pytest.mark.slow
def test_streams_continue_in_a_new_process(tmp_path: Path, kept_streams: None) -> None:
    """This process, restored from another's file, draws what that process drew next, from every stream."""
    path = str(tmp_path / "rng.callstate")
    expected = json.loads(run_python(_WRITER, path))
    gens = {"np": np.random.default_rng(99), "torch": torch.Generator().manual_seed(99)}
    rng = callstate.RNGState(generators=gens)
    report = callstate.load([rng], path)
    assert draw(gens) == expected  # type: ignore[name-defined]  # noqa: F821 - defined by exec above
    assert rng.restored == ("python", "numpy", "torch", "generator:np", "generator:torch")
    assert report.restored == ("RNGState{'generators': ('np', 'torch')}",)


def test_state_is_plain_data_for_weights_only_and_untrusted_loads(kept_streams: None) -> None:
    """registry.state_dict() with an RNGState survives torch.load(weights_only=True) and loads(trusted=False)."""
    gen = torch.Generator().manual_seed(7)
    rng = callstate.RNGState(generators={"g": gen})
    registry = callstate.CallbackRegistry([rng])
    buffer = io.BytesIO()
    torch.save(registry.state_dict(), buffer)
    data = callstate.dumps(registry)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)), float(torch.rand(1, generator=gen)))

    buffer.seek(0)
    registry.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    again = (random.random(), float(np.random.rand()), float(torch.rand(1)), float(torch.rand(1, generator=gen)))
    callstate.loads(registry, data, strict=True)  # trusted=False: no pickle in the file
    third = (random.random(), float(np.random.rand()), float(torch.rand(1)), float(torch.rand(1, generator=gen)))
    assert again == expected and third == expected
    assert [info.codec for info in callstate.inspect(data)] == ["data"]


def test_a_bad_stream_changes_no_stream(kept_streams: None) -> None:
    """A torch state of the wrong size raises InvalidStateError naming the stream; Python's stream is unchanged."""
    rng = callstate.RNGState()
    state = rng.state_dict()
    random.seed(11)
    before = random.getstate()
    state["torch"] = b"\x00" * 10
    with pytest.raises(InvalidStateError, match=r"cannot restore its 'torch' stream .*no stream was changed"):
        rng.load_state_dict(state)
    assert random.getstate() == before


def test_named_generators_must_match() -> None:
    """A state saved with other generator names is refused, saying to give the same generators=."""
    saved = callstate.RNGState(generators={"a": np.random.default_rng(1)}).state_dict()
    other = callstate.RNGState(generators={"b": np.random.default_rng(1)})
    with pytest.raises(InvalidStateError, match=r"give the same generators="):
        other.load_state_dict(saved)


def test_key_and_bad_generators() -> None:
    """The key is RNGState, with the generators' names as identity; a non-generator is refused."""
    assert callstate.state_key(callstate.RNGState()) == "RNGState"
    named = callstate.RNGState(generators={"data": torch.Generator(), "aug": np.random.default_rng(0)})
    assert callstate.state_key(named) == "RNGState{'generators': ('aug', 'data')}"
    assert callstate.CallbackRegistry([named]).is_per_rank(named)
    with pytest.raises(TypeError, match=r"takes numpy.random.Generator or torch.Generator objects, not int"):
        callstate.RNGState(generators={"x": 3})


def test_libraries_not_imported_are_not_imported_and_missing_ones_are_skipped(tmp_path: Path) -> None:
    """Saving imports neither numpy nor torch; restoring a numpy stream where numpy is absent skips it and warns."""
    path = str(tmp_path / "rng.callstate")
    code = """
import sys, json, warnings
import callstate
rng = callstate.RNGState()
state = rng.state_dict()
out = {"imported": [m for m in ("numpy", "torch") if m in sys.modules], "skipped": list(rng.skipped)}
import numpy
numpy.random.seed(0)
callstate.save([rng], sys.argv[1])
print(json.dumps(out))
"""
    out = json.loads(run_python(code, path))
    assert out == {"imported": [], "skipped": ["numpy (not imported)", "torch (not imported)"]}
    reader = """
import sys, json, warnings
sys.modules["numpy"] = None  # numpy not installed here
import callstate
rng = callstate.RNGState()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    callstate.load([rng], sys.argv[1])
print(json.dumps({"restored": list(rng.restored), "skipped": list(rng.skipped),
                  "warned": [str(w.message) for w in caught]}))
"""
    got = json.loads(run_python(reader, path))
    assert got["restored"] == ["python"] and got["skipped"] == ["numpy (not installed)"]
    assert len(got["warned"]) == 1 and "not ['numpy (not installed)']" in got["warned"][0]


def test_reshard_keeps_each_rank_its_streams() -> None:
    """reshard gives rank r what rank r saved; a new rank gets {} and keeps its own streams."""
    rng = callstate.RNGState()
    assert rng.reshard([{"a": 0}, {"b": 1}], 3) == [{"a": 0}, {"b": 1}, {}]
    assert rng.reshard([{"a": 0}, {"b": 1}], 1) == [{"a": 0}]
    rng.load_state_dict({})
    assert rng.restored == ()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine; runs where one is lent")
def test_cuda_streams_continue(kept_streams: None) -> None:
    """Every CUDA device's generator draws again what it drew after the save."""
    torch.cuda.manual_seed_all(5)
    torch.rand(1, device="cuda")
    rng = callstate.RNGState()
    state = rng.state_dict()
    expected = [float(torch.rand(1, device=f"cuda:{i}")) for i in range(torch.cuda.device_count())]
    rng.load_state_dict(state)
    assert [float(torch.rand(1, device=f"cuda:{i}")) for i in range(torch.cuda.device_count())] == expected


# -- every rank its own streams ------------------------------------------------------------------------


def _save_and_draw(path: str) -> list[float]:
    r = int(torch.distributed.get_rank())
    random.seed(100 + r)
    torch.manual_seed(200 + r)
    csd.save([callstate.RNGState()], path)
    return [random.random(), float(torch.rand(1))]


def _scramble_load_and_draw(path: str) -> list[float]:
    random.seed(0)
    torch.manual_seed(0)
    csd.load([callstate.RNGState()], path)
    return [random.random(), float(torch.rand(1))]


@pytest.mark.slow
def test_every_rank_gets_its_own_streams_back(tmp_path: Path) -> None:
    """Under gloo with 2 ranks, each rank draws again what it drew after the save, and the ranks differ."""
    cluster = Cluster(2)
    try:
        cluster.wait_ready()
        path = str(tmp_path / "rng.callstate")
        expected = cluster.run(_save_and_draw, path)
        got = cluster.run(_scramble_load_and_draw, path)
    finally:
        cluster.close()
    assert got == expected
    assert expected[0] != expected[1]


def test_state_holds_no_arrays_or_tensors() -> None:
    """Every stream is ints, floats, strs, tuples, lists, dicts or bytes (what any loader accepts)."""

    def kinds(value: Any) -> set[type]:
        if isinstance(value, dict):
            return {dict}.union(*(kinds(v) for v in value.values()), *(kinds(k) for k in value))
        if isinstance(value, list | tuple):
            return {type(value)}.union(*(kinds(v) for v in value))
        return {type(value)}

    state = callstate.RNGState(generators={"n": np.random.default_rng(3), "t": torch.Generator()}).state_dict()
    assert kinds(state) <= {dict, list, tuple, int, float, str, bytes, type(None)}


_MERSENNE_CHILD = """
import sys
import numpy as np
import callstate
from callstate.errors import InvalidStateError, RestoreError

rng = callstate.RNGState(generators={"data": np.random.Generator(np.random.MT19937(1))})
good = rng.state_dict()
legacy = np.random.get_state()  # ('MT19937', key, pos, has_gauss, gauss): set_state takes it too
crafted = []
for pos in (625, 100_000, -1):
    state = rng.state_dict()
    state["numpy"]["state"]["pos"] = pos
    crafted.append(("numpy", state))
    state = rng.state_dict()
    state["numpy"] = (legacy[0], [int(k) for k in legacy[1]], pos, 0, 0.0)
    crafted.append(("numpy", state))
    state = rng.state_dict()
    state["generators"]["data"]["state"]["state"]["pos"] = pos
    crafted.append(("generators", state))
for i, (stream, state) in enumerate(crafted):
    path = f"{sys.argv[1]}/{i}.callstate"
    callstate.save({"RNGState{'generators': ('data',)}": state}, path)  # a file as a hostile author writes it
    try:
        callstate.load([rng], path)
    except RestoreError as exc:
        cause = exc.__cause__
        assert isinstance(cause, InvalidStateError), exc
        assert f"cannot restore its {stream!r} stream" in str(cause) and "position" in str(cause), cause
    else:
        raise AssertionError(f"state {i} was restored")
np.random.random(10_000)  # the streams are as they were: drawing does not read outside the key
np.random.Generator(np.random.MT19937(1)).random(10_000)
print("refused", len(crafted))
"""


def test_mersenne_position_outside_the_key_is_refused(tmp_path: Path) -> None:
    """A numpy Mersenne Twister state whose position lies outside its key (numpy would read out of
    bounds on the next draw and crash the process) fails the load with InvalidStateError as cause."""
    assert run_python(_MERSENNE_CHILD, str(tmp_path)).split() == ["refused", "9"]


def test_python_gauss_sample_that_is_no_float_is_refused(kept_streams: None) -> None:
    """A Python state whose pending gauss() sample is not None or a float is refused, before random.gauss() trips on it."""
    rng = callstate.RNGState()
    state = rng.state_dict()
    version, internal, _gauss = state["python"]
    state["python"] = (version, internal, "not a number")
    before = random.getstate()
    with pytest.raises(InvalidStateError, match=r"'python' stream .*gauss sample is None or a float, not str"):
        rng.load_state_dict(state)
    assert random.getstate() == before
    random.gauss()
