"""The state differ: the paths at which two states differ, tensors, arrays, NaN and cycles included."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch

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
