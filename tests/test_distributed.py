"""callstate.distributed on real gloo process groups of 2 and 4 ranks: files, world-size policies, DCP."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from dist_helpers import (
    Cluster,
    Counter,
    CountingTimer,
    Opaque,
    ShardCursor,
    Timer,
    Uncopyable,
    cursor_for,
    error_info,
    fresh_registry,
    observed,
    rank,
    trained_registry,
)

import callstate
import callstate.distributed as csd

pytestmark = pytest.mark.slow

COUNTER = "Counter{'what': 'steps'}"
CURSOR = "ShardCursor{'name': 'train'}"
TIMER = "Timer"
MANIFEST = csd.MANIFEST_KEY


@pytest.fixture(scope="module")
def clusters() -> Iterator[dict[int, Cluster]]:
    """One process group of 2 ranks and one of 4, started together, shared by the module."""
    started = {n: Cluster(n) for n in (2, 4)}
    try:
        for c in started.values():
            c.wait_ready()
        yield started
    finally:
        for c in started.values():
            c.close()


def saved_cursor(r: int) -> dict[str, Any]:
    return cursor_for(r).state_dict()  # type: ignore[attr-defined,no-any-return]


# -- functions run on every rank ---------------------------------------------------------------------


def _save(path: str) -> None:
    registry = trained_registry(rank())
    registry[COUNTER].count += 1000 * rank()  # type: ignore[attr-defined]  # only rank 0's may count
    csd.save(registry, path)


def _load(path: str, policy: str, with_timer: bool = True, resave_to: str | None = None) -> dict[str, Any]:
    registry = fresh_registry()
    if not with_timer:
        registry.unregister(TIMER)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", callstate.CallstateWarning)
            report = csd.load(registry, path, on_world_size_change=policy)  # type: ignore[arg-type]
    except Exception as exc:
        return {"error": error_info(exc), "states": observed(registry)}
    if resave_to is not None:
        csd.save(registry, resave_to)
    return {
        "states": observed(registry),
        "restored": report.restored,
        "unexpected": report.unexpected,
        "unclaimed": sorted(registry.unclaimed),
        "warnings": [str(w.message) for w in caught],
    }


def _load_failing_on_rank_1(path: str) -> dict[str, Any]:
    registry = fresh_registry()
    if rank() == 1:

        def refuse(state: Any) -> None:
            raise ValueError("rank 1 cannot take this state")

        registry[TIMER].load_state_dict = refuse  # type: ignore[attr-defined]
    try:
        csd.load(registry, path)
    except callstate.CallstateError as exc:
        return {"error": error_info(exc), "states": observed(registry)}
    raise AssertionError("load did not raise")


def _save_failing_on_rank_1(path: str) -> dict[str, Any]:
    registry = trained_registry(rank())
    if rank() == 1:

        def broken() -> Any:
            raise ValueError("rank 1 cannot give its state")

        registry[TIMER].state_dict = broken  # type: ignore[attr-defined]
    try:
        csd.save(registry, path)
    except Exception as exc:
        return {"error": error_info(exc)}
    raise AssertionError("save did not raise")


def _load_strict_with_an_extra_callback_on_rank_1(path: str) -> dict[str, Any]:
    registry = fresh_registry()
    if rank() == 1:
        registry.register(ShardCursor("val"))
    try:
        csd.load(registry, path, strict=True)
    except callstate.CallstateError as exc:
        return {"error": error_info(exc), "states": observed(registry)}
    raise AssertionError("load did not raise")


def _in_subgroup(path: str) -> dict[str, Any] | None:
    import torch.distributed as dist

    sub = dist.new_group([2, 3])  # every rank takes part in creating it
    if rank() < 2:
        return None
    try:
        csd.save(trained_registry(rank()), path, group=sub)
        registry = fresh_registry()
        csd.load(registry, path, group=sub)
        return observed(registry)
    finally:
        dist.destroy_process_group(sub)


def _not_a_mapping_on_rank_1(_: None) -> dict[str, Any]:
    states = csd.state_dict(trained_registry(rank()))  # None on rank 1: not shared
    registry = fresh_registry()
    try:
        csd.load_state_dict(registry, states)  # type: ignore[arg-type]
    except Exception as exc:
        return {"error": error_info(exc), "states": observed(registry)}
    raise AssertionError("load_state_dict did not raise")


def _dcp_save_load_only(directory: str, other: str) -> dict[str, Any]:
    import torch.distributed.checkpoint as dcp

    try:
        dcp.save(
            {"callbacks": csd.DCPState(trained_registry(rank()), checkpoint_id=directory)},
            checkpoint_id=other,
        )
    except BaseException as exc:  # DCP's CheckpointException is a BaseException
        return {"type": type(exc).__name__, "message": str(exc)}
    raise AssertionError("dcp.save did not raise")


def _in_memory(_: None) -> dict[str, Any]:
    import torch.distributed as dist

    states = csd.state_dict(trained_registry(rank()))
    shared = [states]
    dist.broadcast_object_list(shared, group_src=0)  # as if every rank read one checkpoint
    fresh = fresh_registry()
    report = csd.load_state_dict(fresh, shared[0])
    return {"is_none": states is None, "states": observed(fresh), "restored": report.restored}


def _dcp_save(directory: str, use_async: bool) -> None:
    import torch.distributed.checkpoint as dcp

    state = {"callbacks": csd.DCPState(trained_registry(rank()))}
    if use_async:
        dcp.async_save(state, checkpoint_id=directory).result()
    else:
        dcp.save(state, checkpoint_id=directory)


def _dcp_load(
    directory: str, policy: str, with_checkpoint_id: bool, with_timer: bool = True
) -> dict[str, Any]:
    import torch.distributed.checkpoint as dcp

    registry = fresh_registry()
    if not with_timer:
        registry.unregister(TIMER)
    wrapper = csd.DCPState(
        registry,
        on_world_size_change=policy,  # type: ignore[arg-type]
        checkpoint_id=directory if with_checkpoint_id else None,
    )
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", callstate.CallstateWarning)
            dcp.load({"callbacks": wrapper}, checkpoint_id=directory)
    except BaseException as exc:  # DCP's CheckpointException is a BaseException
        return {"error": error_info(exc), "states": observed(registry)}
    assert wrapper.report is not None
    return {
        "states": observed(registry),
        "restored": wrapper.report.restored,
        "unexpected": wrapper.report.unexpected,
        "warnings": [str(w.message) for w in caught],
    }


def _dcp_naive(directory: str) -> dict[str, Any]:
    import torch.distributed.checkpoint as dcp

    dcp.save({"callbacks": trained_registry(rank())}, checkpoint_id=directory)  # a registry is Stateful
    registry = fresh_registry()
    dcp.load({"callbacks": registry}, checkpoint_id=directory)
    return observed(registry)


def _dcp_keys(directory: str) -> list[str]:
    from torch.distributed.checkpoint.filesystem import FileSystemReader

    return sorted(FileSystemReader(directory).read_metadata().state_dict_metadata)


# -- tests ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("world_size", [2, 4])
def test_same_world_size_every_rank_gets_its_own_state(
    clusters: dict[int, Cluster], tmp_path: Path, world_size: int
) -> None:
    """save then load at one world size: each rank gets its own per-rank states and rank 0's global ones."""
    cluster = clusters[world_size]
    path = str(tmp_path / "cb.callstate")
    cluster.run(_save, path)
    results = cluster.run(_load, path, "error")
    for r, result in enumerate(results):
        assert result["states"] == {
            COUNTER: {"count": 41},
            CURSOR: saved_cursor(r),
            TIMER: {"elapsed": 1.5 + r},
        }, f"rank {r}"
        assert set(result["restored"]) == {COUNTER, CURSOR, TIMER}
        assert result["unexpected"] == ()
    assert len({repr(r["states"][CURSOR]) for r in results}) == world_size  # all differ


def test_file_layout_has_one_entry_per_rank_and_a_manifest(
    clusters: dict[int, Cluster], tmp_path: Path
) -> None:
    """The single file holds global states under their keys, '<key>@rank<r>' entries and the manifest."""
    path = tmp_path / "cb.callstate"
    clusters[2].run(_save, str(path))
    states = callstate.read(path)
    assert states == {
        COUNTER: {"count": 41},
        f"{CURSOR}@rank0": saved_cursor(0),
        f"{CURSOR}@rank1": saved_cursor(1),
        "Timer@rank0": {"elapsed": 1.5},
        "Timer@rank1": {"elapsed": 2.5},
        csd.MANIFEST_KEY: {"layout": 1, "world_size": 2, "per_rank": [CURSOR, TIMER]},
    }
    assert csd.rank_key(CURSOR, 1) == f"{CURSOR}@rank1"


def test_in_memory_state_dict_and_load_state_dict(clusters: dict[int, Cluster]) -> None:
    """state_dict gathers the layout on rank 0 only; load_state_dict given it on every rank restores each."""
    results = clusters[2].run(_in_memory, None)
    assert [r["is_none"] for r in results] == [False, True]
    for r, result in enumerate(results):
        assert result["states"][CURSOR] == saved_cursor(r)
        assert result["states"][TIMER] == {"elapsed": 1.5 + r}


@pytest.mark.parametrize(("saved", "now"), [(4, 2), (2, 4)])
def test_changed_world_size_raises_by_default(
    clusters: dict[int, Cluster], tmp_path: Path, saved: int, now: int
) -> None:
    """A changed world size raises RankMismatchError on every rank, naming both sizes; nothing changes."""
    path = str(tmp_path / "cb.callstate")
    clusters[saved].run(_save, path)
    results = clusters[now].run(_load, path, "error")
    for result in results:
        error = result["error"]
        assert error["type"] == "RankMismatchError"
        assert (error["saved_world_size"], error["world_size"]) == (saved, now)
        assert f"saved by {saved} rank(s), this run has {now}" in error["message"]
        assert "on_world_size_change='broadcast'" in error["message"]
        assert result["states"] == observed(fresh_registry())


@pytest.mark.parametrize(("saved", "now"), [(4, 2), (2, 4)])
def test_broadcast_gives_every_rank_rank_0s_state(
    clusters: dict[int, Cluster], tmp_path: Path, saved: int, now: int
) -> None:
    """on_world_size_change='broadcast': every rank of the new world gets rank 0's per-rank states."""
    path = str(tmp_path / "cb.callstate")
    clusters[saved].run(_save, path)
    results = clusters[now].run(_load, path, "broadcast")
    for result in results:
        assert result["states"] == {COUNTER: {"count": 41}, CURSOR: saved_cursor(0), TIMER: {"elapsed": 1.5}}


@pytest.mark.parametrize(("saved", "now"), [(4, 2), (2, 4)])
def test_reshard_lets_the_callback_deal_states(
    clusters: dict[int, Cluster], tmp_path: Path, saved: int, now: int
) -> None:
    """on_world_size_change='reshard': rank r gets item r of reshard(states_by_rank, world_size)."""
    path = str(tmp_path / "cb.callstate")
    clusters[saved].run(_save, path)
    resaved = tmp_path / "resaved.callstate"
    results = clusters[now].run(_load, path, "reshard", False, str(resaved))
    expected = ShardCursor("x").reshard([saved_cursor(j) for j in range(saved)], now)
    assert len({repr(e) for e in expected}) == now
    for r, result in enumerate(results):
        assert result["states"] == {COUNTER: {"count": 41}, CURSOR: expected[r]}, f"rank {r}"
        # No callback claims the Timer states here: each is kept by one rank, under its rank key.
        kept = [f"Timer@rank{j}" for j in range(r, saved, now)]
        assert list(result["unexpected"]) == kept
        assert result["unclaimed"] == kept
        assert len(result["warnings"]) == (1 if kept else 0)
        assert all(f"'{k}'" in result["warnings"][0] for k in kept)
    again = callstate.read(resaved)
    assert {k: again[f"Timer@rank{k}"] for k in range(saved)} == {
        k: {"elapsed": 1.5 + k} for k in range(saved)
    }
    assert again[csd.MANIFEST_KEY] == {"layout": 1, "world_size": now, "per_rank": [CURSOR]}
    assert [again[f"{CURSOR}@rank{r}"] for r in range(now)] == expected


def test_reshard_without_a_reshard_method_raises(clusters: dict[int, Cluster], tmp_path: Path) -> None:
    """'reshard' for a callback without reshard() raises RankMismatchError naming it, on every rank."""
    path = str(tmp_path / "cb.callstate")
    clusters[4].run(_save, path)
    results = clusters[2].run(_load, path, "reshard")
    for result in results:
        assert result["error"]["type"] == "RankMismatchError"
        assert "Timer.reshard(states_by_rank, world_size)" in result["error"]["message"]
        assert result["states"] == observed(fresh_registry())


def test_a_failure_on_one_rank_raises_everywhere_and_changes_nothing(
    clusters: dict[int, Cluster], tmp_path: Path
) -> None:
    """If one rank's load_state_dict raises, every rank raises and every rank's callbacks are as before."""
    path = str(tmp_path / "cb.callstate")
    clusters[4].run(_save, path)
    results = clusters[4].run(_load_failing_on_rank_1, path)
    for r, result in enumerate(results):
        assert result["error"]["type"] == "RestoreError"
        assert result["error"]["key"] == TIMER
        assert "rank 1 cannot take this state" in result["error"]["message"]
        if r != 1:
            assert result["error"]["message"].startswith("On rank 1: ")
        assert result["states"] == observed(fresh_registry()), f"rank {r}"


def test_a_missing_file_raises_on_every_rank(clusters: dict[int, Cluster], tmp_path: Path) -> None:
    """A file rank 0 cannot read makes every rank raise, none waits forever."""
    path = str(tmp_path / "absent.callstate")
    results = clusters[2].run(_load, path, "error")
    for r, result in enumerate(results):
        assert result["error"]["type"] == "FileNotFoundError"
        assert path in result["error"]["message"]
        assert result["error"].get("__notes__", []) == ([] if r == 0 else ["(raised on rank 0)"])


def test_a_failing_state_dict_on_one_rank_fails_the_save_everywhere(
    clusters: dict[int, Cluster], tmp_path: Path
) -> None:
    """If one rank's state_dict raises, save raises on every rank and writes no file."""
    path = tmp_path / "cb.callstate"
    results = clusters[2].run(_save_failing_on_rank_1, str(path))
    for r, result in enumerate(results):
        assert result["error"]["type"] == "ValueError"
        assert result["error"]["message"] == "rank 1 cannot give its state"
        assert result["error"].get("__notes__", []) == ([] if r == 1 else ["(raised on rank 1)"])
    assert not path.exists()


def test_strict_is_judged_per_rank_and_agreed(clusters: dict[int, Cluster], tmp_path: Path) -> None:
    """strict=True: a callback without a state on rank 1 makes every rank raise; no rank changes."""
    path = str(tmp_path / "cb.callstate")
    clusters[2].run(_save, path)
    results = clusters[2].run(_load_strict_with_an_extra_callback_on_rank_1, path)
    for r, result in enumerate(results):
        assert result["error"]["type"] == "StateMismatchError"
        assert result["error"]["missing"] == ("ShardCursor{'name': 'val'}",)
        assert result["error"]["message"].startswith("On rank 1: " if r == 0 else "Strict restore refused")
    assert results[0]["states"] == observed(fresh_registry())


def test_a_subgroup_numbers_its_ranks_from_0(clusters: dict[int, Cluster], tmp_path: Path) -> None:
    """group=: global ranks 2 and 3 save and restore as ranks 0 and 1 of a world of 2."""
    path = tmp_path / "cb.callstate"
    results = clusters[4].run(_in_subgroup, str(path))
    assert results[:2] == [None, None]
    for r in (2, 3):
        assert results[r][CURSOR] == saved_cursor(r)
    states = callstate.read(path)
    assert (states[f"{CURSOR}@rank0"], states[f"{CURSOR}@rank1"]) == (saved_cursor(2), saved_cursor(3))
    assert states[csd.MANIFEST_KEY]["world_size"] == 2


def test_load_state_dict_without_a_mapping_raises_on_every_rank(clusters: dict[int, Cluster]) -> None:
    """load_state_dict given None on one rank raises TypeError on every rank instead of hanging."""
    results = clusters[2].run(_not_a_mapping_on_rank_1, None)
    for result in results:
        assert result["error"]["type"] == "TypeError"
        assert "share rank 0's state_dict() with every rank" in result["error"]["message"]
        assert result["states"] == observed(fresh_registry())


def test_dcp_state_for_loading_cannot_be_saved(clusters: dict[int, Cluster], tmp_path: Path) -> None:
    """A DCPState made with checkpoint_id= refuses to be saved rather than write placeholders."""
    directory = str(tmp_path / "dcp")
    clusters[2].run(_dcp_save, directory, False)
    for result in clusters[2].run(_dcp_save_load_only, directory, str(tmp_path / "other")):
        assert result["type"] == "CheckpointException"
        assert "is for loading only and cannot be saved" in result["message"]


def test_untrusted_file_needs_trusted_for_unknown_classes(tmp_path: Path) -> None:
    """load decodes per-rank states safely: a class the data codec does not write needs trusted=True."""
    registry = trained_registry(0)
    registry[TIMER].elapsed = Opaque(7)  # type: ignore[attr-defined]
    path = tmp_path / "cb.callstate"
    with pytest.warns(callstate.PickledStateWarning, match="Opaque"):
        csd.save(registry, path)
    fresh = fresh_registry()
    with pytest.raises(callstate.UnsafeCheckpointError, match="Opaque") as e:
        csd.load(fresh, path)
    assert e.value.global_name.endswith("Opaque")
    assert fresh[TIMER].elapsed == 0.0  # type: ignore[attr-defined]
    csd.load(fresh, path, trusted=True)
    assert fresh[TIMER].elapsed == Opaque(7)  # type: ignore[attr-defined]


def test_a_plain_callstate_file_restores_as_global_states(
    clusters: dict[int, Cluster], tmp_path: Path
) -> None:
    """A file without the manifest (plain callstate.save) gives every rank all of its states."""
    path = tmp_path / "cb.callstate"
    callstate.save(trained_registry(1), path)
    for result in clusters[2].run(_load, str(path), "error"):
        assert result["states"] == {COUNTER: {"count": 41}, CURSOR: saved_cursor(1), TIMER: {"elapsed": 2.5}}


@pytest.mark.parametrize(
    ("manifest", "error", "match"),
    [
        ("not a manifest", callstate.CorruptCheckpointError, "is not a per-rank manifest"),
        (
            {"layout": 1, "world_size": 0, "per_rank": []},
            callstate.CorruptCheckpointError,
            "is not a per-rank",
        ),
        ({"layout": 99, "world_size": 2, "per_rank": []}, callstate.UnsupportedFormatError, "layout 99"),
    ],
)
def test_a_bad_manifest_is_refused(tmp_path: Path, manifest: Any, error: type[Exception], match: str) -> None:
    """A damaged manifest raises CorruptCheckpointError, a newer layout UnsupportedFormatError; nothing changes."""
    path = tmp_path / "cb.callstate"
    callstate.save({COUNTER: {"count": 41}, csd.MANIFEST_KEY: manifest}, path)
    registry = fresh_registry()
    with pytest.raises(error, match=match) as e:
        csd.load(registry, path)
    assert e.value.key == csd.MANIFEST_KEY  # type: ignore[attr-defined]
    assert e.value.path == str(path)  # type: ignore[attr-defined]
    assert observed(registry) == observed(fresh_registry())


def test_single_process_reads_a_distributed_file(clusters: dict[int, Cluster], tmp_path: Path) -> None:
    """Without a process group, load acts as rank 0 of 1: the policies apply to a 2-rank file."""
    path = tmp_path / "cb.callstate"
    clusters[2].run(_save, str(path))
    registry = fresh_registry()
    with pytest.raises(callstate.errors.RankMismatchError, match=r"saved by 2 rank\(s\), this run has 1") as e:
        csd.load(registry, path)
    assert (e.value.saved_world_size, e.value.world_size) == (2, 1)
    registry.unregister(TIMER)
    with pytest.warns(callstate.CallstateWarning, match="no callback to claim them:\n  'Timer@rank0'"):
        report = csd.load(registry, path, on_world_size_change="reshard")
    assert registry[CURSOR].state_dict() == {  # type: ignore[attr-defined]
        "position": 5,
        "seen": sorted(saved_cursor(0)["seen"] + saved_cursor(1)["seen"]),
    }
    assert report.unexpected == ("Timer@rank0", "Timer@rank1")


def test_plain_callstate_load_ignores_per_rank_entries(clusters: dict[int, Cluster], tmp_path: Path) -> None:
    """callstate.load, knowing nothing of ranks, restores the global states and claims no per-rank entry."""
    path = tmp_path / "cb.callstate"
    clusters[2].run(_save, str(path))
    registry = callstate.CallbackRegistry([Counter("steps"), ShardCursor("train")])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = callstate.load(registry, path)
    assert report.restored == (COUNTER,)
    assert report.missing == (CURSOR,)
    assert registry[CURSOR].state_dict() == {"position": 0, "seen": []}  # type: ignore[attr-defined]
    assert [type(w.message) for w in caught] == [callstate.CallstateWarning]


# -- DCP --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("world_size", [2, 4])
@pytest.mark.parametrize("use_async", [False, True], ids=["save", "async_save"])
def test_dcp_round_trip(
    clusters: dict[int, Cluster], tmp_path: Path, world_size: int, use_async: bool
) -> None:
    """dcp.save/async_save then dcp.load of a DCPState: every rank gets its own per-rank states back."""
    cluster = clusters[world_size]
    directory = str(tmp_path / "dcp")
    cluster.run(_dcp_save, directory, use_async)
    keys = _dcp_keys(directory)
    assert keys == sorted(
        ["callbacks.callstate:global"] + [f"callbacks.callstate:rank{r}" for r in range(world_size)]
    )
    results = cluster.run(_dcp_load, directory, "error", False)
    for r, result in enumerate(results):
        assert result["states"] == {
            COUNTER: {"count": 41},
            CURSOR: saved_cursor(r),
            TIMER: {"elapsed": 1.5 + r},
        }, f"rank {r}"


def test_dcp_alone_collapses_per_rank_states(clusters: dict[int, Cluster], tmp_path: Path) -> None:
    """The problem DCPState solves: given to DCP as is, every rank gets one value per field, from any rank."""
    results = clusters[4].run(_dcp_naive, str(tmp_path / "dcp"))
    cursors = [r[CURSOR] for r in results]
    assert all(c == cursors[0] for c in cursors)  # collapsed: at most one rank has its own back
    assert sum(cursors[r] == saved_cursor(r) for r in range(4)) <= 1
    # DCP de-duplicates each leaf on its own: the fields may even come from different ranks.
    assert cursors[0]["position"] in [saved_cursor(r)["position"] for r in range(4)]
    assert cursors[0]["seen"] in [saved_cursor(r)["seen"] for r in range(4)]


def test_dcp_changed_world_size(clusters: dict[int, Cluster], tmp_path: Path) -> None:
    """DCP, 4 ranks to 2: error by default; with checkpoint_id=, broadcast and reshard apply."""
    directory = str(tmp_path / "dcp")
    clusters[4].run(_dcp_save, directory, False)
    for result in clusters[2].run(_dcp_load, directory, "error", False):
        assert result["error"]["type"] == "RankMismatchError"
        assert (result["error"]["saved_world_size"], result["error"]["world_size"]) == (4, 2)
    for result in clusters[2].run(_dcp_load, directory, "broadcast", False):
        assert "pass checkpoint_id=" in result["error"]["message"].lower()
    for result in clusters[2].run(_dcp_load, directory, "broadcast", True):
        assert result["states"][CURSOR] == saved_cursor(0)
        assert result["states"][TIMER] == {"elapsed": 1.5}
    expected = ShardCursor("x").reshard([saved_cursor(j) for j in range(4)], 2)
    for r, result in enumerate(clusters[2].run(_dcp_load, directory, "reshard", True, False)):
        assert result["states"] == {COUNTER: {"count": 41}, CURSOR: expected[r]}
        assert result["unexpected"] == (f"Timer@rank{r}", f"Timer@rank{r + 2}")


def test_dcp_grown_world_size_with_checkpoint_id(clusters: dict[int, Cluster], tmp_path: Path) -> None:
    """DCP, 2 ranks to 4 with checkpoint_id=: reshard deals the 2 saved states to 4 ranks."""
    directory = str(tmp_path / "dcp")
    clusters[2].run(_dcp_save, directory, False)
    # Without checkpoint_id, ranks 2 and 3 ask DCP for entries that do not exist: DCP refuses.
    for result in clusters[4].run(_dcp_load, directory, "error", False):
        assert result["error"]["type"] == "CheckpointException"
        assert "Missing key in checkpoint state_dict: callbacks.callstate:rank2" in result["error"]["message"]
        assert result["states"] == observed(fresh_registry())
    expected = ShardCursor("x").reshard([saved_cursor(j) for j in range(2)], 4)
    for r, result in enumerate(clusters[4].run(_dcp_load, directory, "reshard", True, False)):
        assert result["states"] == {COUNTER: {"count": 41}, CURSOR: expected[r]}
        assert result["unexpected"] == ((f"Timer@rank{r}",) if r < 2 else ())
        assert len(result["warnings"]) == (1 if r < 2 else 0)


def test_timer_is_per_rank_by_registration() -> None:
    """register(per_rank=True) marks a plain class per rank; @stateful(per_rank=True) marks a class."""
    registry = fresh_registry()
    assert registry.is_per_rank(TIMER) and registry.is_per_rank(CURSOR)
    assert not registry.is_per_rank(COUNTER)
    assert isinstance(registry[TIMER], Timer)


MANIFEST_PROBE = """
import resource, sys, time
import callstate, callstate.distributed as csd
from dist_helpers import fresh_registry
soft = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024 + (300 << 20)
resource.setrlimit(resource.RLIMIT_AS, (soft, soft))
started = time.perf_counter()
try:
    if sys.argv[2] == "load":
        csd.load(fresh_registry(), sys.argv[1])
    else:
        csd.load_state_dict(fresh_registry(), callstate.read(sys.argv[1]))
except callstate.CallstateError as exc:
    print(type(exc).__name__, getattr(exc, "key", None), round(time.perf_counter() - started, 1), exc)
"""


@pytest.mark.parametrize(
    ("manifest", "error", "problem"),
    [
        ({"world_size": 10**12, "per_rank": [TIMER]}, "CorruptCheckpointError", "world_size 1000000000000 .at most"),
        ({"world_size": 2, "per_rank": [TIMER, TIMER]}, "CorruptCheckpointError", "twice"),
        ({"world_size": 10**6, "per_rank": [TIMER]}, "RankMismatchError", "saved by 1000000 rank"),
        ({"world_size": 2, "per_rank": [TIMER, "Ghost"]}, "CorruptCheckpointError", "per-rank key 'Ghost'"),
    ],
    ids=["huge-world-size", "repeated-key", "a-million-ranks-two-entries", "per-rank-key-without-entries"],
)
@pytest.mark.parametrize("call", ["load", "load_state_dict"])
def test_a_bad_manifest_is_refused_before_anything_is_sized_by_it(
    tmp_path: Path, manifest: dict[str, Any], error: str, problem: str, call: str
) -> None:
    """A manifest with an absurd world_size is refused at once; nothing is sized by the saved world size (bounded time and memory)."""
    import os
    import re
    import subprocess
    import sys

    path = tmp_path / "cb.callstate"
    states = {csd.MANIFEST_KEY: {"layout": 1, **manifest}, csd.rank_key(TIMER, 0): {"elapsed": 1.0},
              csd.rank_key(TIMER, 1): {"elapsed": 2.0}}
    callstate.save(states, path)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    proc = subprocess.run(
        [sys.executable, "-c", MANIFEST_PROBE, str(path), call], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    name, key, seconds, message = proc.stdout.split(" ", 3)
    assert name == error
    if error == "CorruptCheckpointError":
        assert key == csd.MANIFEST_KEY
    assert float(seconds) < 5
    assert re.search(problem, message), message


# -- one transaction per rank (issue 12) -------------------------------------------------------------


def _load_counting_snapshots(path: str) -> int:
    registry = callstate.CallbackRegistry([Counter("steps"), ShardCursor("train")])
    timer = CountingTimer()
    registry.register(timer, key=TIMER, per_rank=True)
    csd.load(registry, path)
    return timer.dumps


def test_a_distributed_load_takes_one_snapshot(clusters: dict[int, Cluster], tmp_path: Path) -> None:
    """Under a process group, a load copies each callback's current state once (one transaction, one snapshot)."""
    path = str(tmp_path / "cb.callstate")
    clusters[2].run(_save, path)
    assert clusters[2].run(_load_counting_snapshots, path) == [1, 1]


def _load_with_an_uncopyable_stray_on_rank_0(path: str) -> dict[str, Any]:
    registry = fresh_registry()
    if rank() == 0:
        registry.register(Uncopyable(), key="Stray")  # has no saved state: not restored, never copied
    else:

        def refuse(state: Any) -> None:
            raise ValueError("rank 1 cannot take this state")

        registry[TIMER].load_state_dict = refuse  # type: ignore[attr-defined]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", callstate.CallstateWarning)  # Stray is missing
            csd.load(registry, path)
    except callstate.CallstateError as exc:
        return {"error": error_info(exc), "states": {k: v for k, v in observed(registry).items() if k != "Stray"}}
    raise AssertionError("load did not raise")


def test_a_peer_failure_rolls_back_a_rank_whose_other_callback_cannot_be_copied(
    clusters: dict[int, Cluster], tmp_path: Path
) -> None:
    """Rank 0 is rolled back when rank 1 fails, though one of its callbacks (restored from nothing) cannot be copied."""
    path = str(tmp_path / "cb.callstate")
    clusters[2].run(_save, path)
    results = clusters[2].run(_load_with_an_uncopyable_stray_on_rank_0, path)
    for r, result in enumerate(results):
        assert result["error"]["type"] == "RestoreError", f"rank {r}"
        assert result["states"] == observed(fresh_registry()), f"rank {r} was not rolled back"


class KeyCounted:
    """A per-rank callback whose key computations are counted."""

    computed = 0

    def __init__(self, i: int) -> None:
        self.i, self.n = i, i

    @property
    def state_key(self) -> str:
        type(self).computed += 1
        return f"KeyCounted[{self.i}]"

    def state_dict(self) -> dict[str, Any]:
        return {"n": self.n}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.n = state["n"]


def test_a_distributed_save_and_load_compute_each_key_a_bounded_number_of_times(tmp_path: Path) -> None:
    """The per-rank key check is linear: a save and a load compute each key a couple of times, not N."""
    registry = callstate.CallbackRegistry()
    for i in range(200):
        registry.register(KeyCounted(i), per_rank=True)
    KeyCounted.computed = 0
    csd.save(registry, tmp_path / "cb.callstate")
    assert KeyCounted.computed <= 2 * 200
    fresh = callstate.CallbackRegistry()
    for i in range(200):
        fresh.register(KeyCounted(i + 1000), key=f"KeyCounted[{i}]", per_rank=True)
    KeyCounted.computed = 0
    assert len(csd.load(fresh, tmp_path / "cb.callstate", strict=True).restored) == 200
    assert KeyCounted.computed == 0, "explicit keys: no key is computed"


# -- plain forms and kept per-rank states (found by review) ------------------------------------------


@callstate.stateful(identity=("name",), state=("pos",), per_rank=True)
class Pos:
    def __init__(self, name: str) -> None:
        self.name, self.pos = name, 0

    def reshard(self, by_rank: list[dict[str, int]], world_size: int) -> list[dict[str, int]]:
        return [{"pos": sum(s["pos"] for s in by_rank)}] * world_size


def _kept_after(load: Any, path: Path, pos: int) -> callstate.CallbackRegistry:
    """Save a Pos at ``pos`` to ``path`` with distributed.save, then ``load`` it into an empty registry."""
    saved = Pos("train")
    saved.pos = pos
    csd.save([saved], path)
    holder = callstate.CallbackRegistry()
    with pytest.warns(callstate.CallstateWarning):
        load(holder, path)
    return holder


def test_a_registry_state_dict_of_a_distributed_file_restores_through_load_state_dict(tmp_path: Path) -> None:
    """Kept states in plain form (the manifest, per-rank entries) are recognised, also by reshard."""
    states = _kept_after(callstate.load, tmp_path / "c.callstate", 5).state_dict()
    fresh = Pos("train")
    assert csd.load_state_dict([fresh], states).restored == ("Pos{'name': 'train'}",) and fresh.pos == 5
    key = "Pos{'name': 'train'}"
    two = {MANIFEST: {"layout": 1, "world_size": 2, "per_rank": [key]}, f"{key}@rank0": states[f"{key}@rank0"],
           f"{key}@rank1": states[f"{key}@rank0"]}
    resharded = Pos("train")
    csd.load_state_dict([resharded], two, on_world_size_change="reshard")
    assert resharded.pos == 10


def test_a_kept_per_rank_state_saved_again_comes_back_to_its_callback(tmp_path: Path) -> None:
    """A per-rank state nobody claimed is saved again under a manifest naming it, and restores later."""
    first, second = tmp_path / "a.callstate", tmp_path / "b.callstate"
    csd.save(_kept_after(csd.load, first, 7), second)
    assert callstate.read(second)[MANIFEST]["per_rank"] == ["Pos{'name': 'train'}"]
    back = Pos("train")
    report = csd.load([back], second, strict=True)
    assert report.restored == ("Pos{'name': 'train'}",) and back.pos == 7


# -- around DCP's pickles: the callbacks in a sidecar callstate file (issue 22) -----------------------


class PickleUsed(Exception):
    """An unpickler was called."""


def _no_pickle(*args: Any, **kwargs: Any) -> Any:
    raise PickleUsed("an unpickler was called")


def _dcp_sidecar_save(directory: str) -> None:
    import torch
    import torch.distributed.checkpoint as dcp

    dcp.save({"model": torch.nn.Linear(4, 1).state_dict()}, checkpoint_id=directory)
    csd.save(trained_registry(rank()), csd.dcp_sidecar(directory))


def _dcp_sidecar_load(directory: str) -> dict[str, Any]:
    registry = fresh_registry()
    report = csd.load(registry, csd.dcp_sidecar(directory))
    return {"states": observed(registry), "restored": sorted(report.restored)}


def test_dcp_sidecar_restores_without_any_unpickler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Callbacks saved to dcp_sidecar beside dcp.save's files restore while no unpickler can run; DCP's own load cannot (it unpickles .metadata)."""
    import os
    import pickle

    import torch
    import torch.distributed.checkpoint as dcp

    directory = str(tmp_path / "ckpt")
    model = torch.nn.Linear(4, 1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        dcp.save({"model": model.state_dict()}, checkpoint_id=directory)
        csd.save(trained_registry(0), csd.dcp_sidecar(directory))
        assert csd.dcp_sidecar(directory) == os.path.join(directory, csd.SIDECAR_NAME)
        assert {".metadata", csd.SIDECAR_NAME} <= set(os.listdir(directory))
        with monkeypatch.context() as blocked:
            for attr in ("Unpickler", "load", "loads"):
                blocked.setattr(pickle, attr, _no_pickle)
            fresh = fresh_registry()
            report = csd.load(fresh, csd.dcp_sidecar(directory))
            assert observed(fresh) == {COUNTER: {"count": 41}, CURSOR: saved_cursor(0), TIMER: {"elapsed": 1.5}}
            assert sorted(report.restored) == sorted([COUNTER, CURSOR, TIMER])
            # The trust boundary the docs state: DCP reads its own metadata with pickle.
            with pytest.raises(BaseException) as caught:
                dcp.load({"model": model.state_dict()}, checkpoint_id=directory)
            # DCP's CheckpointException holds each rank's failure: "global metadata read failed: ..."
            assert "metadata read failed: an unpickler was called" in repr(vars(caught.value)), caught.value
        dcp.load({"model": model.state_dict()}, checkpoint_id=directory)  # the sidecar does not disturb DCP


def test_dcp_sidecar_round_trip_on_two_ranks_reads_no_file_of_dcp(clusters: dict[int, Cluster], tmp_path: Path) -> None:
    """Two ranks save the callbacks to dcp_sidecar after dcp.save; with DCP's files gone, each rank gets its own states back."""
    import os

    directory = str(tmp_path / "ckpt")
    clusters[2].run(_dcp_sidecar_save, directory)
    for name in os.listdir(directory):
        if name != csd.SIDECAR_NAME:
            os.remove(os.path.join(directory, name))  # .metadata and the .distcp files
    for r, result in enumerate(clusters[2].run(_dcp_sidecar_load, directory)):
        assert result["states"] == {COUNTER: {"count": 41}, CURSOR: saved_cursor(r), TIMER: {"elapsed": 1.5 + r}}
        assert result["restored"] == sorted([COUNTER, CURSOR, TIMER])
