"""The per-rank layout, in one process: manifests, rank keys, and what a rank restores."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

import callstate
from callstate._core._transaction import Member
from callstate._io._group import Group
from callstate._io._ranks import (
    MANIFEST_KEY,
    RankRead,
    manifest_entry,
    rank_key,
    rank_view,
    read_manifest,
    select,
)


class Cursor:
    def __init__(self) -> None:
        self.position = 0

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = state["position"]


ONE = Group(None, 0, 1, None)


def test_manifest_round_trips_and_absurd_ones_are_refused() -> None:
    """A manifest written by manifest_entry reads back; an absurd world size is a CorruptCheckpointError."""
    states = {MANIFEST_KEY: manifest_entry(2, ["c"])}
    found = read_manifest(states, "f")
    assert found is not None and found.world_size == 2 and found.per_rank == ("c",)
    assert read_manifest({}, "f") is None
    with pytest.raises(callstate.CorruptCheckpointError, match="world_size"):
        read_manifest({MANIFEST_KEY: manifest_entry(10**12, ["c"])}, "f")


def test_select_gives_this_rank_its_state_under_the_callbacks_key() -> None:
    """Rank 0 of a world of 1 restores the entry saved by rank 0 under the callback's own key."""
    cursor = Cursor()
    states = {MANIFEST_KEY: manifest_entry(1, ["c"]), rank_key("c", 0): {"position": 5}, "g": 1}
    assert select([Member("c", cursor)], states, RankRead(ONE, "error", None)) == {"c": {"position": 5}, "g": 1}


def test_unclaimed_per_rank_entries_are_passed_on_under_their_rank_keys() -> None:
    """Per-rank entries nobody claims stay under their rank keys, to be kept and saved again."""
    states = {MANIFEST_KEY: manifest_entry(2, ["c"]), rank_key("c", 0): 0, rank_key("c", 1): 1}
    assert select([], states, RankRead(ONE, "broadcast", None)) == {rank_key("c", 0): 0, rank_key("c", 1): 1}


def test_a_changed_world_size_follows_the_policy() -> None:
    """Saved by 2 ranks, read by 1: 'error' raises RankMismatchError, 'broadcast' gives rank 0's state."""
    states = {MANIFEST_KEY: manifest_entry(2, ["c"]), rank_key("c", 0): 0, rank_key("c", 1): 1}
    with pytest.raises(callstate.errors.RankMismatchError):
        select([Member("c", Cursor())], states, RankRead(ONE, "error", None))
    assert select([Member("c", Cursor())], states, RankRead(ONE, "broadcast", None)) == {"c": 0}


def test_rank_view_of_a_mapping_without_manifest_is_the_mapping() -> None:
    """States without a manifest are global states, returned as they are."""
    assert rank_view([], {"a": 1}, "error") == {"a": 1}


@pytest.mark.parametrize("world_size", [1, 2])
@pytest.mark.parametrize(
    ("entries", "policy"),
    [({"K@rank00": 0}, "error"), ({"K@rank01": 0, "K@rank1": 1}, "reshard"), ({"K@rank007": 0}, "broadcast")],
)
def test_rank_keys_with_leading_zeros_are_not_rank_entries(
    entries: dict[str, int], policy: str, world_size: int, tmp_path: Path
) -> None:
    """A crafted '@rank01' is no rank entry (only rank_key's spelling is): a load keeps it, untyped errors never."""
    import callstate.distributed as csd

    path = f"{tmp_path}/crafted.callstate"
    callstate.save({MANIFEST_KEY: manifest_entry(world_size, ["K"]), **entries}, path)
    try:
        with warnings.catch_warnings(record=True):  # the partial-restore warning is expected
            warnings.simplefilter("always")
            report = csd.load([], path, on_world_size_change=policy)  # type: ignore[arg-type]
    except callstate.CallstateError as exc:
        assert not isinstance(exc, callstate.RestoreError), exc  # refused as bad input, typed
        return
    assert set(report.unexpected) >= set(entries) - {"K@rank1"}  # kept as the ordinary states they are


@pytest.mark.parametrize("layout", [None, "1", 0, -1, 1.0, True])
def test_a_manifest_without_a_valid_layout_is_refused(layout: object) -> None:
    """The manifest's layout must be an int from 1: missing, a str, 0 or a float is CorruptCheckpointError."""
    entry = dict(manifest_entry(2, ["c"]))
    if layout is None:
        del entry["layout"]
    else:
        entry["layout"] = layout
    with pytest.raises(callstate.CorruptCheckpointError, match="per-rank manifest"):
        read_manifest({MANIFEST_KEY: entry}, "f")


def test_a_manifest_naming_a_per_rank_key_without_entries_is_refused(tmp_path: Path) -> None:
    """A per-rank key of the manifest with no rank entry in the whole checkpoint is a CorruptCheckpointError naming the file and key."""
    import callstate.distributed as csd

    states = {MANIFEST_KEY: manifest_entry(2, ["c", "ghost\x1b[2K"]), rank_key("c", 0): 0, rank_key("c", 1): 1}
    path = tmp_path / "crafted.callstate"
    callstate.save(states, path)
    for load in (
        lambda: csd.load([Cursor()], path),
        lambda: select([Member("c", Cursor())], states, RankRead(ONE, "broadcast", str(path))),
    ):
        with pytest.raises(callstate.CorruptCheckpointError, match="per-rank key 'ghost") as caught:
            load()
        assert (caught.value.path, caught.value.key) == (str(path), MANIFEST_KEY)
        assert str(path) in str(caught.value) and "\x1b" not in str(caught.value)
        assert "Remove those keys from the manifest's 'per_rank' list" in str(caught.value)
    with pytest.raises(callstate.CorruptCheckpointError, match="ghost"):
        rank_view([], states, "broadcast")
    # A rank's own share may lack a callback that only other ranks have: not refused there.
    assert select([], states, RankRead(ONE, "broadcast", None, whole=False)) == {rank_key("c", 0): 0, rank_key("c", 1): 1}


def test_a_per_rank_key_without_a_state_is_not_in_the_manifest() -> None:
    """A per-rank callback whose state a framework left out (Lightning drops empty ones) is not named by the manifest, so the file loads."""
    from callstate._io._ranks import gather_in_place

    states: dict[str, object] = {"c": {"position": 5}, "g": 1}
    gather_in_place(states, ["c", "empty"])
    assert states[MANIFEST_KEY] == manifest_entry(1, ["c"])
    cursor = Cursor()
    assert rank_view([Member("c", cursor)], states, "error") == {"c": {"position": 5}, "g": 1}
