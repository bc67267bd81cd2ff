"""Every warning of a public entry point points at the caller's line, not at a line inside callstate."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import callstate


@callstate.stateful(identity=("what",))
class Counter:
    def __init__(self, what: str) -> None:
        self.what = what
        self.n = 0

    def state_dict(self) -> dict[str, int]:
        return {"n": self.n}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.n = state["n"]


class Opaque:
    """A class the data codec does not know: saving it pickles it, with a PickledStateWarning."""

    def __init__(self, x: int) -> None:
        self.x = x


PARTIAL = {"Counter{'what': 'a'}": {"n": 1}, "Counter{'what': 'gone'}": {"n": 2}}


def _registry() -> callstate.CallbackRegistry:
    return callstate.CallbackRegistry([Counter("a"), Counter("b")])


def _partial_file(tmp_path: Path) -> Path:
    path = tmp_path / "partial.callstate"
    callstate.save(PARTIAL, path)
    return path


def _torch_partial(tmp_path: Path) -> Path:
    torch = pytest.importorskip("torch")
    path = tmp_path / "partial.pt"
    torch.save({"callbacks": PARTIAL}, path)
    return path


# Each case: (what it calls, a function of tmp_path that makes the call and is written in this file).
CASES: dict[str, Callable[[Path], Any]] = {
    "CallbackRegistry.load_state_dict": lambda p: _registry().load_state_dict(PARTIAL),
    "callstate.loads": lambda p: callstate.loads(_registry(), callstate.dumps(PARTIAL)),
    "callstate.load": lambda p: callstate.load(_registry(), _partial_file(p)),
    "callstate.dumps (pickled state)": lambda p: callstate.dumps({"k": Opaque(1)}),
    "callstate.save (pickled state)": lambda p: callstate.save({"k": Opaque(1)}, p / "o.callstate"),
    "loop.load_checkpoint (callstate file)": lambda p: callstate.loop.load_checkpoint(_partial_file(p), _registry()),
    "loop.load_checkpoint (torch file)": lambda p: callstate.loop.load_checkpoint(_torch_partial(p), _registry()),
    "distributed.load_state_dict": lambda p: callstate.distributed.load_state_dict(_registry(), PARTIAL),
    "distributed.load": lambda p: callstate.distributed.load(_registry(), _partial_file(p)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_warning_points_at_the_callers_line(name: str, tmp_path: Path) -> None:
    """The warning's file is this test file: stacklevel is right for every public entry point."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        CASES[name](tmp_path)
    ours = [w for w in caught if issubclass(w.category, callstate.CallstateWarning)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    assert ours[0].filename == __file__, (ours[0].filename, ours[0].lineno)
