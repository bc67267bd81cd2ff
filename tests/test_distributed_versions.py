"""State versions in per-rank layouts on a real gloo process group of 2 ranks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from dist_helpers import Cluster, rank

import callstate
import callstate.distributed as csd

pytestmark = pytest.mark.slow

CURSOR = "VCursor{'name': 'train'}"
GAUGE = "VGauge"


@callstate.stateful(identity=("name",), state=("seen",), per_rank=True)
class CursorV1:
    """Version 1 of a per-rank cursor: the samples seen, as a list."""

    def __init__(self, name: str, seen: list[int] | None = None) -> None:
        self.name, self.seen = name, seen or []


@callstate.stateful(identity=("name",), state=("position", "seen"), per_rank=True, version=2)
class CursorV2:
    """Version 2: a position too."""

    def __init__(self, name: str) -> None:
        self.name, self.position, self.seen = name, 0, ()


@callstate.stateful(state=("level",), version=3)
class GaugeV3:
    """A global state at version 3, saved and loaded at 3: never migrated."""

    def __init__(self, level: float = 0.0) -> None:
        self.level = level


for _cls, _name in ((CursorV1, "VCursor"), (CursorV2, "VCursor"), (GaugeV3, GAUGE)):
    _cls.__qualname__ = _name


@callstate.migration(CursorV2, from_version=1)
def _add_position(state: dict[str, Any]) -> dict[str, Any]:
    return {"position": len(state["seen"]), "seen": tuple(state["seen"])}


def _save_v1(path: str) -> None:
    r = rank()
    csd.save([CursorV1("train", [r * 10 + i for i in range(r + 1)]), GaugeV3(0.5)], path)


def _load_v2(path: str, resave_to: str) -> dict[str, Any]:
    cursor, gauge = CursorV2("train"), GaugeV3()
    report = csd.load([cursor, gauge], path, strict=True)
    csd.save([cursor, gauge], resave_to)
    again = CursorV2("train")
    second = csd.load([again, GaugeV3()], resave_to, strict=True)
    return {
        "migrated": dict(report.migrated),
        "cursor": (cursor.position, cursor.seen),
        "gauge": gauge.level,
        "again": (again.position, again.seen),
        "migrated_again": dict(second.migrated),
    }


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A process group of 2 ranks."""
    started = Cluster(2)
    try:
        started.wait_ready()
        yield started
    finally:
        started.close()


def test_each_rank_migrates_its_own_state_and_saves_it_at_the_new_version(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Per-rank states saved at version 1 reach every rank migrated; re-saved, each rank entry is at 2."""
    old, new = tmp_path / "v1.callstate", tmp_path / "v2.callstate"
    cluster.run(_save_v1, str(old))
    assert {i.key: i.version for i in callstate.inspect(old)} == {
        GAUGE: 3,
        f"{CURSOR}@rank0": 1,
        f"{CURSOR}@rank1": 1,
        csd.MANIFEST_KEY: 1,
    }
    results = cluster.run(_load_v2, str(old), str(new))
    for r, result in enumerate(results):
        seen = tuple(r * 10 + i for i in range(r + 1))
        assert result["migrated"] == {CURSOR: (1, 2)}, f"rank {r}"
        assert result["cursor"] == result["again"] == (r + 1, seen), f"rank {r}"
        assert result["gauge"] == 0.5 and result["migrated_again"] == {}
    assert {i.key: i.version for i in callstate.inspect(new)} == {
        GAUGE: 3,
        f"{CURSOR}@rank0": 2,
        f"{CURSOR}@rank1": 2,
        csd.MANIFEST_KEY: 1,
    }
