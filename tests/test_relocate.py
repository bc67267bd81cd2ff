"""Relocation (relocate=): paths inside saved states moved from an old place to a new one."""

from __future__ import annotations

import time
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import pytest

import callstate
from callstate.errors import RelocationError


class Holder:
    """Keeps whatever state it is given."""

    def __init__(self, state: Any = None) -> None:
        self.state = state

    def state_dict(self) -> Any:
        return self.state

    def load_state_dict(self, state: Any) -> None:
        self.state = state


def moved(state: Any, relocate: dict[Any, Any]) -> tuple[Any, callstate.RestoreReport]:
    """Round-trip ``state`` through bytes and restore it with ``relocate``."""
    data = callstate.dumps([Holder(state)])
    into = Holder()
    report = callstate.loads([into], data, relocate=relocate)
    return into.state, report


def test_values_keys_paths_and_urls_move_by_whole_components() -> None:
    """Strings, PurePaths and dict keys under the old prefix move; '/old/runner' is not under '/old/run'."""
    state = {
        "dirpath": "/old/run",
        "best_k_models": {"/old/run/a.ckpt": 0.5, "/old/runner/b.ckpt": 0.7},
        "paths": [PurePosixPath("/old/run/c.ckpt"), ("/old/run/d", "/elsewhere/run")],
        "remote": "s3://a/run/e.ckpt",
        "near": "s3://ab/run",
    }
    got, report = moved(state, {"/old/run": "/new/place", "s3://a": "s3://b"})
    assert got == {
        "dirpath": "/new/place",
        "best_k_models": {"/new/place/a.ckpt": 0.5, "/old/runner/b.ckpt": 0.7},
        "paths": [PurePosixPath("/new/place/c.ckpt"), ("/new/place/d", "/elsewhere/run")],
        "remote": "s3://b/run/e.ckpt",
        "near": "s3://ab/run",
    }
    assert dict(report.relocated) == {"Holder": 5}


def test_longest_prefix_wins_and_trailing_separators_are_ignored() -> None:
    """A nested old prefix wins over the one containing it; '/old/' means '/old'; Windows paths move too."""
    state = ["/old/x", "/old/deep/y", "C:\\runs\\old\\z", PureWindowsPath("C:\\runs\\old")]
    got, _ = moved(state, {"/old/": "/new/", "/old/deep": "/deeper", "C:\\runs\\old": "D:\\r"})
    assert got == ["/new/x", "/deeper/y", "D:\\r\\z", PureWindowsPath("D:\\r")]


def test_nothing_to_move_reports_nothing() -> None:
    """A state with no path under the old prefix comes back equal, with an empty relocated."""
    got, report = moved({"a": "/kept/path", "n": 3}, {"/old": "/new"})
    assert got == {"a": "/kept/path", "n": 3}
    assert dict(report.relocated) == {}


def test_two_keys_made_one_raise_and_change_nothing() -> None:
    """Moving a dict key onto another key of the same dict raises RelocationError; the callback keeps its state."""
    data = callstate.dumps([Holder({"/old/a": 1, "/new/a": 2})])
    into = Holder("before")
    with pytest.raises(RelocationError, match=r"keys '/old/a' and '/new/a' of one dict both onto '/new/a'") as info:
        callstate.loads([into], data, relocate={"/old": "/new"})
    assert info.value.key == "Holder" and info.value.path == "/new/a"
    assert into.state == "before"


@pytest.mark.parametrize(
    ("relocate", "error", "match"),
    [
        ({"/": "/new"}, ValueError, "empty or a root"),
        ({"": "/new"}, ValueError, "empty or a root"),
        ({3: "/new"}, TypeError, "old prefix 3"),
        ({"/old": None}, TypeError, "new prefix None"),
        (["/old", "/new"], TypeError, "takes a mapping"),
        ({"/old/": "/a", "/old": "/b"}, ValueError, "gives the old prefix '/old' twice"),
    ],
)
def test_bad_relocate_fails_before_the_file_is_read(
    tmp_path: Path, relocate: Any, error: type[Exception], match: str
) -> None:
    """A malformed relocate= raises before callstate.load opens the file (here: a file that is not there)."""
    with pytest.raises(error, match=match):
        callstate.load([Holder()], tmp_path / "absent.callstate", relocate=relocate)


def test_relocation_runs_before_migrations() -> None:
    """A migration sees the state with its paths already moved."""

    @callstate.stateful(version=2)
    class Logger(Holder):
        pass

    Logger.__qualname__ = "Logger"

    seen: list[Any] = []

    @callstate.migration(Logger, from_version=1)
    def to_v2(state: dict[str, Any]) -> dict[str, Any]:
        seen.append(state["dir"])
        return {"dir": state["dir"], "v": 2}

    into = Logger()
    registry = callstate.CallbackRegistry([into])
    report = registry.load_state_dict({"Logger": {"dir": "/old/x"}}, relocate={"/old": "/n"})
    assert seen == ["/n/x"]
    assert into.state == {"dir": "/n/x", "v": 2}
    assert dict(report.relocated) == {"Logger": 1} and dict(report.migrated) == {"Logger": (1, 2)}


def test_load_state_dict_leaves_the_given_states_unchanged() -> None:
    """registry.load_state_dict(relocate=) moves paths in the callback's copy, never in the mapping given."""
    states = {"Holder": {"p": ["/old/a"]}}
    into = Holder()
    callstate.CallbackRegistry([into]).load_state_dict(states, relocate={"/old": "/new"})
    assert into.state == {"p": ["/new/a"]}
    assert states == {"Holder": {"p": ["/old/a"]}}


def test_shared_parts_are_rewritten_once() -> None:
    """A state of 60 levels of a shared list (2**60 paths) relocates in linear time, keeping the sharing."""
    node: Any = ["/old/leaf"]
    for _ in range(60):
        node = [node, node]
    states = {"Holder": node}
    into = Holder()
    start = time.perf_counter()
    report = callstate.CallbackRegistry([into]).load_state_dict(states, relocate={"/old": "/new"})
    assert time.perf_counter() - start < 5
    assert into.state[0] is into.state[1]
    leaf = into.state
    while len(leaf) == 2:
        leaf = leaf[0]
    assert leaf == ["/new/leaf"] and dict(report.relocated) == {"Holder": 1}


def test_relocated_survives_pickling() -> None:
    """A report's relocated counts travel between processes."""
    import pickle

    report = callstate.RestoreReport(relocated={"a": 2})
    assert pickle.loads(pickle.dumps(report)).relocated == {"a": 2}


def test_a_checked_relocation_is_a_mapping_that_checks_as_itself() -> None:
    """What an adapter keeps (relocation_of's result) is the checked {old: new}, taken again as it is, and pickles."""
    from callstate._core import Relocation, relocation_of

    checked = relocation_of({Path("/old/run/"): "s3://b/run/", "/x": "/"})
    assert isinstance(checked, Relocation) and relocation_of(checked) is checked
    assert dict(checked) == {"/old/run": "s3://b/run", "/x": "/"} and len(checked) == 2
    assert moved({"dir": "/old/run/a"}, checked)[0] == {"dir": "s3://b/run/a"}
    assert relocation_of({}) is None and relocation_of(None) is None
    import pickle  # adapters holding one are pickled (accelerate pickles its Accelerators)

    again = pickle.loads(pickle.dumps(checked))
    assert again == checked and again.text("/old/run/x") == "s3://b/run/x"


@callstate.stateful(identity=("logdir", "every"), state=("last",))
class Logger:
    """A callback whose key holds a path: it changes when the run moves."""

    def __init__(self, logdir: str, every: int = 1) -> None:
        self.logdir, self.every = logdir, every
        self.last = ""


def test_a_key_holding_a_moved_path_is_found_under_its_key_before_the_move() -> None:
    """Logger{'logdir': '/new/run/logs'} restores the state saved as Logger{'logdir': '/old/run/logs'}, paths moved."""
    saved = Logger("/old/run/logs", every=2)
    saved.last = "/old/run/logs/7.txt"
    data = callstate.dumps([saved, Logger("/elsewhere")])
    into, other = Logger("/new/run/logs", every=2), Logger("/elsewhere")
    report = callstate.loads([into, other], data, strict=True, relocate={"/old/run": "/new/run"})
    assert into.last == "/new/run/logs/7.txt"
    assert dict(report.renamed) == {into_key(into): "Logger{'logdir': '/old/run/logs', 'every': 2}"}
    assert dict(report.relocated) == {into_key(into): 1}
    with pytest.raises(callstate.StateMismatchError):  # without relocate= the key is another one
        callstate.loads([Logger("/new/run/logs", every=2), Logger("/elsewhere")], data, strict=True)


def into_key(obj: object) -> str:
    return callstate.state_key(obj)


def test_keys_before_a_move_are_component_wise_and_only_for_moved_paths() -> None:
    """keys_before maps a new-place path back by whole components; other keys have none."""
    from callstate._core import relocation_of

    relocation = relocation_of({"/old": "/new", "/old/deep": "/new/deeper"})
    assert relocation is not None
    assert relocation.keys_before("L{'d': '/new/a', 'n': 3}") == ["L{'d': '/old/a', 'n': 3}"]
    assert relocation.keys_before("L{'d': '/newer/a'}") == []  # not a whole component
    # Both moved onto /new/deeper/x: /old/deep/x by the nested prefix, /old/deeper/x by /old.
    assert relocation.keys_before("L{'d': '/new/deeper/x'}") == ["L{'d': '/old/deep/x'}", "L{'d': '/old/deeper/x'}"]
    assert relocation.keys_before("Plain") == [] and relocation.keys_before(Logger) == []
    assert relocation.keys_before("L{'d': <object at 0x1>}") == []  # an identity that is not a literal
    # Paths whose repr escapes characters (backslashes, quotes) are found too.
    windows = relocation_of({"C:\\old": "D:\\new run"})
    now, before = {"d": "D:\\new run\\a"}, {"d": "C:\\old\\a"}
    assert windows is not None and windows.keys_before(f"L{now!r}") == [f"L{before!r}"]
    quoted = relocation_of({"/old": "/it's"})
    now = {"d": "/it's/a"}
    assert quoted is not None and quoted.keys_before(f"L{now!r}") == ["L{'d': '/old/a'}"]
