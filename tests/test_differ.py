"""The state differ: the paths at which two states differ, tensors, arrays, NaN and cycles included."""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

import callstate
from callstate._cli._differ import differences


def test_differences_name_nested_fields_and_treat_nan_as_equal() -> None:
    """differences() gives paths into dicts, lists, tensors and objects; NaN equals NaN."""
    a = {
        "best": float("nan"),
        "hist": [1, 2],
        "w": torch.tensor([1.0, float("nan")]),
        "ns": argparse.Namespace(x=1),
    }
    b = {
        "best": float("nan"),
        "hist": [1, 3],
        "w": torch.tensor([1.0, float("nan")]),
        "ns": argparse.Namespace(x=2),
    }
    assert differences(a, b) == ["hist[1] (2 -> 3)", "ns.x (1 -> 2)"]
    assert differences({"w": torch.ones(2)}, {"w": torch.ones(2, dtype=torch.float64)}) == ["w"]
    assert differences(1, 2) == ["1 -> 2"]


def test_diff_of_cyclic_states_ends_without_an_internal_error() -> None:
    """Lists that contain themselves are walked once: their difference is found, with no RecursionError."""
    x: list[Any] = [1.0]
    x.append(x)
    y: list[Any] = [2.0]
    y.append(y)
    assert differences(x, y) == ["[0] (1.0 -> 2.0)"]


def test_diff_compares_infinities_and_nan_positions_exactly() -> None:
    """inf differs from the dtype's largest value (nan_to_num would equate them); NaN equals NaN only at the same place."""
    big = torch.finfo(torch.float32).max
    inf = float("inf")
    nan = float("nan")
    assert differences(torch.tensor([inf, 1.0]), torch.tensor([big, 1.0])) == ["(the whole state)"]
    assert differences(torch.tensor([-inf, 1.0]), torch.tensor([-big, 1.0])) == ["(the whole state)"]
    assert differences(torch.tensor([nan, inf]), torch.tensor([nan, inf])) == []
    assert differences(torch.tensor([nan, 1.0]), torch.tensor([1.0, nan])) == ["(the whole state)"]
    assert differences(np.array([inf, 1.0], dtype=np.float32), np.array([big, 1.0], dtype=np.float32)) == [
        "(the whole state)"
    ]
    assert differences(np.array([nan, inf]), np.array([nan, inf])) == []


def test_diff_lists_at_most_a_thousand_paths() -> None:
    """Two states differing everywhere list the first 1,000 paths and say there are more."""
    out = differences(list(range(5000)), [i + 1 for i in range(5000)])
    assert len(out) == 1001 and out[-1] == "... and more (the first 1000 are shown)"
    assert out[999] == "[999] (999 -> 1000)"


# -- bounded: a memo for every container kind, one allowance of steps (issue 22) --------------------

# Run in a child under a memory and time cap: without a memo, each case is 2**40 comparisons.
_KINDS_CHILD = r"""
import argparse, collections, json, re, resource, sys
import callstate._cli._differ as differ
size = int(re.search(r"^VmSize:\s+(\d+) kB", open("/proc/self/status").read(), re.M).group(1)) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + (512 << 20), resource.getrlimit(resource.RLIMIT_AS)[1]))

def dag(levels, leaf, pair=list):
    node = pair([leaf])
    for _ in range(levels):
        node = pair([node, node])
    return node

wraps = {
    "list": lambda d: [d],
    "tuple": lambda d: (d,),
    "deque": lambda d: collections.deque([d]),
    "dict": lambda d: {"k": d},
    "OrderedDict": lambda d: collections.OrderedDict(k=d),
    "Counter": lambda d: collections.Counter(k=d),
    "defaultdict": lambda d: collections.defaultdict(list, k=d),
    "object": lambda d: argparse.Namespace(k=d),
}
out = {}
for name, wrap in wraps.items():
    for pair in (list, tuple):
        out[f"{name}-{pair.__name__}"] = differ.differences(wrap(dag(40, 1.0, pair)), wrap(dag(40, 2.0, pair)))
print(json.dumps(out))
"""


def test_every_container_kind_holding_a_shared_dag_is_compared_once_per_pair() -> None:
    """A 40-level shared DAG (2**40 paths) inside any container kind is compared in bounded time and memory, its difference named once."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.run([sys.executable, "-c", _KINDS_CHILD], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = json.loads(proc.stdout)
    assert len(found) == 16
    for case, paths in found.items():
        first = {"list": "[0]", "tuple": "[0]", "deque": "[0]"}.get(case.split("-")[0], "k")
        assert paths == [first + "[0]" * 41 + " (1.0 -> 2.0)"], case


def _layered(levels: int, width: int, rotate: bool) -> list[Any]:
    """``width`` lists per level, each holding every list of the level below (rotated by its position if ``rotate``)."""
    below: list[Any] = [[0.0] for _ in range(width)]
    for _ in range(levels):
        below = [[below[(t + (j if rotate else 0)) % width] for t in range(width)] for j in range(width)]
    return below


def test_a_comparison_past_its_steps_stops_with_a_typed_error_naming_where() -> None:
    """Equal states shared differently on each side cost width**3 pairs: past the steps given, ComparisonStoppedError says where."""
    import time

    from callstate._cli._differ import Steps
    from callstate.errors import ComparisonStoppedError

    a, b = _layered(3, 30, False), _layered(3, 30, True)
    assert differences(a, b) == []  # within the default allowance: equal
    started = time.perf_counter()
    with pytest.raises(ComparisonStoppedError, match=r"stopped at \[0\]\[\d+\].* after 20,000 steps") as caught:
        differences(a, b, steps=Steps(20_000))
    assert time.perf_counter() - started < 5
    assert isinstance(caught.value, callstate.CallstateError) and isinstance(caught.value, RuntimeError)
    assert caught.value.steps == 20_000 and caught.value.where.startswith("[0][")
    # One allowance serves several comparisons: what one spent, the next has not.
    steps = Steps(200_000)
    differences(a, b, steps=steps)
    with pytest.raises(ComparisonStoppedError):
        differences(a, b, steps=steps)


def test_set_members_and_dict_keys_are_charged_their_expansion() -> None:
    """Hashing a shared tuple DAG costs its 2**n expansion: a set of one, or a dict keyed by one, spends the steps by that."""
    from callstate._cli._differ import Steps
    from callstate.errors import ComparisonStoppedError

    node: Any = (0,)
    for _ in range(16):
        node = (node, node)
    for a, b in [(frozenset({node}), frozenset({node, 1})), ({node: 1}, {node: 2})]:
        assert differences(a, b)  # 2**17 steps: within the default allowance
        with pytest.raises(ComparisonStoppedError):
            differences(a, b, steps=Steps(50_000))


def test_big_ints_and_long_keys_are_shown_bounded() -> None:
    """A differing 32,000-bit int is shown by its size (its repr raises); a key of a million characters is cut."""
    assert differences({"x": 2**32000}, {"x": 2**32001}) == ["x (<int of 32,001 bits> -> <int of 32,002 bits>)"]
    assert differences({"x": 2**32000}, {"x": 2**32000 + 1}) == ["x"]
    [path] = differences({"k" * 10**6 + "\x1b": 1}, {})
    assert len(path) < 200 and path.startswith("['kkk") and "\x1b" not in path


def _torch_pair(dtype: Any) -> tuple[Any, Any, Any]:
    values = torch.tensor([1.0, 0.0, 2.0])
    return values.to(dtype), values.to(dtype).clone(), torch.tensor([1.0, 1.0, 2.0]).to(dtype)


@pytest.fixture
def complex_half() -> Iterator[None]:
    """torch warns, once, that complex32 is experimental: not this suite's concern."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "ComplexHalf support is experimental", UserWarning)
        yield


@pytest.mark.usefixtures("complex_half")
def test_every_tensor_dtype_the_codec_admits_compares_exactly() -> None:
    """Tensors of every dtype the codec decodes (complex32 and float8 have no torch.equal or isnan) compare, equal or not."""
    from callstate._encoding import _arrays

    names = sorted(_arrays._plain_torch_dtypes())
    assert "complex32" in names and "float8_e4m3fn" in names
    for name in names:
        dtype = _arrays.torch_dtype(name)
        a, same, other = _torch_pair(dtype)
        assert differences({"w": a}, {"w": same}) == [], name
        assert differences({"w": a}, {"w": other}) == ["w"], name
    nan = torch.tensor([complex(float("nan"), 0), 1j]).to(torch.complex32)
    assert differences(nan, nan.clone()) == []


@pytest.mark.parametrize(
    "dtype", ["?", "i1", "<u2", ">i4", "<i8", "<f2", ">f4", "<f8", "<c8", "<c16", "<M8[s]", ">m8[25ms]", "<M8[D]", "<U3", "|S4"]
)
def test_every_numpy_dtype_the_codec_admits_compares_exactly(dtype: str) -> None:
    """numpy arrays and scalars of the codec's dtypes compare by value: NaN and NaT equal themselves."""
    a = np.array([1, 0, 1]).astype(dtype)
    b = np.array([1, 1, 1]).astype(dtype)
    assert differences({"a": a}, {"a": a.copy()}) == []
    assert differences({"a": a}, {"a": b}) == ["a"]
    assert differences(a[1], a.copy()[1]) == []
    if np.dtype(dtype).kind in "fcMm":
        missing = np.array(["NaT" if np.dtype(dtype).kind in "Mm" else "nan"]).astype(dtype)
        assert differences(missing, missing.copy()) == []
        assert differences(missing[0], missing.copy()[0]) == []


def test_container_details_beyond_items_are_differences() -> None:
    """An OrderedDict's key order, a deque's maxlen and a defaultdict's factory differ; an object's state outside __dict__ is compared."""
    import collections
    import random

    assert differences(collections.OrderedDict(a=1, b=2), collections.OrderedDict(b=2, a=1)) == [
        "(the whole state) (the order of its keys)"
    ]
    assert differences(collections.deque([1], maxlen=3), collections.deque([1], maxlen=4)) == [
        "(the whole state) (maxlen 3 -> 4)"
    ]
    assert differences({"d": collections.defaultdict(list)}, {"d": collections.defaultdict(set)}) == [
        "d (default_factory list -> set)"
    ]
    assert differences(random.Random(1), random.Random(1)) == []
    assert differences(random.Random(1), random.Random(2)) == ["(the whole state)"]
