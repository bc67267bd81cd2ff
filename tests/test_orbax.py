"""callstate.orbax: a registry as an orbax checkpoint item, with real orbax and jax on CPU."""

from __future__ import annotations

import io
import os
import shutil
import struct
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
import pytest

import callstate
import callstate.orbax as co
from callstate._encoding import _format


@callstate.stateful(identity=("name",), state=("n", "ema", "key"))
class Ema:
    """An EMA of bfloat16 weights with a typed PRNG key, as JAX training loops keep one."""

    def __init__(self, name: str) -> None:
        self.name, self.n = name, 0
        self.ema = jnp.zeros((2, 3), dtype=jnp.bfloat16)
        self.key = jax.random.key(0)


@callstate.stateful(identity=("name",), state=("best",), per_rank=True)
class Local:
    """A per-rank callback: each process keeps its own state."""

    def __init__(self, name: str) -> None:
        self.name, self.best = name, -1


def composite_save(mngr: Any, step: int, params: Any, registry: Any) -> None:
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(params), callbacks=co.Save(registry)))


def composite_restore(mngr: Any, step: int, params: Any, registry: Any, **kw: Any) -> Any:
    return mngr.restore(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardRestore(params), callbacks=co.Restore(registry, **kw)),
    )


def test_a_registry_is_an_item_of_a_composite_step_beside_the_model(tmp_path: Path) -> None:
    """StandardSave params and a registry in one step; max_to_keep prunes both; restore gives params and the report."""
    ema = Ema("w")
    params = {"w": jnp.arange(4.0)}
    with ocp.CheckpointManager(tmp_path, options=ocp.CheckpointManagerOptions(max_to_keep=2)) as mngr:
        for step in range(3):
            ema.n = step
            ema.ema = jnp.full((2, 3), step / 4, dtype=jnp.bfloat16)
            ema.key = jax.random.fold_in(ema.key, step)
            composite_save(mngr, step, {"w": params["w"] + step}, [ema])
        mngr.wait_until_finished()
        assert mngr.all_steps() == [1, 2]
    saved_key = jax.random.key_data(ema.key)
    back = Ema("w")
    with ocp.CheckpointManager(tmp_path) as mngr:
        restored = composite_restore(mngr, 2, params, [back])
    assert (restored.state["w"] == params["w"] + 2).all()
    assert restored.callbacks.restored == ("Ema{'name': 'w'}",)
    assert back.n == 2 and back.ema.dtype == jnp.bfloat16 and (back.ema == 0.5).all()
    assert (jax.random.key_data(back.key) == saved_key).all()
    assert sorted(os.listdir(tmp_path / "2" / "callbacks")) == ["callbacks.callstate", "commit_success.txt"]


def test_an_async_save_holds_the_states_as_they_were_at_the_call(tmp_path: Path) -> None:
    """A change made right after the async save returns is not in the step, even before the write finishes."""
    ema = Ema("w")
    ema.n, ema.ema = 7, jnp.ones((2, 3), dtype=jnp.bfloat16)
    options = ocp.CheckpointManagerOptions(enable_async_checkpointing=True)
    with ocp.CheckpointManager(tmp_path, options=options) as mngr:
        composite_save(mngr, 0, {"w": jnp.ones(2)}, [ema])
        ema.n, ema.ema = 8, jnp.zeros((2, 3), dtype=jnp.bfloat16)
        mngr.wait_until_finished()
    back = Ema("w")
    with ocp.CheckpointManager(tmp_path) as mngr:
        composite_restore(mngr, 0, {"w": jnp.ones(2)}, [back])
    assert back.n == 7 and (back.ema == 1).all()


def test_strict_restore_refuses_a_mismatch_and_changes_nothing(tmp_path: Path) -> None:
    """Restore(strict=True) with a callback the step lacks raises StateMismatchError in orbax's chain; none changes."""
    with ocp.CheckpointManager(tmp_path) as mngr:
        composite_save(mngr, 0, {"w": jnp.ones(2)}, [Ema("a")])
        mngr.wait_until_finished()
    a, b = Ema("a"), Ema("b")
    a.n = b.n = 5
    with ocp.CheckpointManager(tmp_path) as mngr, pytest.raises(Exception) as e:
        composite_restore(mngr, 0, {"w": jnp.ones(2)}, [a, b], strict=True)
    assert isinstance(_in_chain(e.value, callstate.StateMismatchError), callstate.StateMismatchError)
    assert a.n == 5 and b.n == 5


def _in_chain(exc: BaseException | None, cls: type[BaseException]) -> BaseException | None:
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, cls):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def _hostile_file() -> bytes:
    """A well-formed, checksummed file whose jax entry holds int4 items with their upper bits set."""
    stream = bytes([ord("J"), 4]) + b"int4" + bytes([1]) + struct.pack("<Q", 2) + b"\x00"
    stream += b"\x00" + struct.pack("<Q", 2) + b"\x01\x70"
    out = io.BytesIO()
    _format.write_container(out, [("Ema{'name': 'a'}", "data", (stream,), None, {})], {})
    return out.getvalue()


@pytest.mark.parametrize("damage", ["hostile", "truncated"])
def test_a_damaged_or_hostile_item_is_a_callstate_error_and_restores_nothing(tmp_path: Path, damage: str) -> None:
    """Crafted or cut bytes in the item: a CallstateError in the chain orbax raises, naming the file; no callback changes."""
    with ocp.CheckpointManager(tmp_path) as mngr:
        composite_save(mngr, 0, {"w": jnp.ones(2)}, [Ema("a")])
        mngr.wait_until_finished()
    path = tmp_path / "0" / "callbacks" / co.GLOBAL_FILE
    path.write_bytes(_hostile_file() if damage == "hostile" else path.read_bytes()[:-40])
    a = Ema("a")
    a.n = 3
    with ocp.CheckpointManager(tmp_path) as mngr, pytest.raises(Exception) as e:
        composite_restore(mngr, 0, {"w": jnp.ones(2)}, [a])
    found = _in_chain(e.value, callstate.CallstateError)
    assert isinstance(found, callstate.CorruptCheckpointError)
    assert co.GLOBAL_FILE in str(found)
    assert a.n == 3


def test_the_v1_api_saves_and_loads_a_registry_as_a_checkpointable(tmp_path: Path) -> None:
    """checkpointable(registry) goes through ocp.v1.save_checkpointables and load_checkpointables, beside a pytree."""
    from orbax.checkpoint import v1 as ocp1

    ema = Ema("w")
    ema.n = 4
    ocp1.save_checkpointables(tmp_path / "ckpt", {"params": {"w": jnp.ones(3)}, "callbacks": co.checkpointable([ema])})
    ema.n = 9
    back = co.checkpointable([ema])
    loaded = ocp1.load_checkpointables(tmp_path / "ckpt", {"callbacks": back})
    assert ema.n == 4 and loaded["callbacks"] is back
    assert back.last_report is not None and back.last_report.restored == ("Ema{'name': 'w'}",)


def test_per_rank_states_are_written_by_each_process_and_follow_the_policy(tmp_path: Path) -> None:
    """Two processes (index and count given): process 0 writes the global file, each its rank file; a new count follows on_world_size_change."""
    handler = co.CallstateCheckpointHandler()
    shared = Ema("g")
    shared.n = 11
    ranks = [Local("l"), Local("l")]
    for index, local in enumerate(ranks):
        local.best = 10 * (index + 1)
        handler.save(tmp_path, args=co.Save([shared, local], process_index=index, process_count=2))
    assert sorted(os.listdir(tmp_path)) == ["callbacks.callstate", "callbacks.rank0.callstate", "callbacks.rank1.callstate"]
    for index in range(2):
        g, local = Ema("g"), Local("l")
        handler.restore(tmp_path, args=co.Restore([g, local], process_index=index, process_count=2))
        assert (g.n, local.best) == (11, 10 * (index + 1))
    g, lone = Ema("g"), Local("l")
    with pytest.raises(callstate.errors.RankMismatchError):
        handler.restore(tmp_path, args=co.Restore([g, lone], process_index=0, process_count=1))
    assert (g.n, lone.best) == (0, -1)
    policy = co.Restore([g, lone], process_index=0, process_count=1, on_world_size_change="broadcast")
    handler.restore(tmp_path, args=policy)
    assert (g.n, lone.best) == (11, 10)


@callstate.stateful(identity=("name",), state=("seen",), per_rank=True)
class OnlyOne:
    """A per-rank callback that only process 1 has."""

    def __init__(self, name: str) -> None:
        self.name, self.seen = name, 0


def test_the_manifest_names_per_rank_keys_of_every_process(tmp_path: Path) -> None:
    """A per-rank callback only process 1 has is named by the restore's manifest, and restores on process 1."""
    handler = co.CallstateCheckpointHandler()
    handler.save(tmp_path, args=co.Save([Local("l")], process_index=0, process_count=2))
    mine = OnlyOne("x")
    mine.seen = 5
    handler.save(tmp_path, args=co.Save([Local("l"), mine], process_index=1, process_count=2))
    back = OnlyOne("x")
    report = handler.restore(tmp_path, args=co.Restore([Local("l"), back], process_index=1, process_count=2))
    assert back.seen == 5 and "OnlyOne{'name': 'x'}" in report.restored


def test_per_rank_states_carried_unclaimed_are_named_and_restored_later(tmp_path: Path) -> None:
    """Per-rank states no callback claimed at a restore are saved again by each process and restore a callback later."""
    first, second, third = tmp_path / "1", tmp_path / "2", tmp_path / "3"
    handler = co.CallstateCheckpointHandler()
    for index in range(2):
        local = Local("l")
        local.best = 10 * (index + 1)
        first.mkdir(exist_ok=True)
        handler.save(first, args=co.Save([Ema("g"), local], process_index=index, process_count=2))
    for index in range(2):  # a run without the per-rank callback restores and saves again
        registry = callstate.CallbackRegistry([Ema("g")])
        with pytest.warns(callstate.CallstateWarning, match="Restore was partial"):
            handler.restore(first, args=co.Restore(registry, process_index=index, process_count=2))
        second.mkdir(exist_ok=True)
        handler.save(second, args=co.Save(registry, process_index=index, process_count=2))
    for index in range(2):
        g, local = Ema("g"), Local("l")
        report = handler.restore(second, args=co.Restore([g, local], process_index=index, process_count=2))
        assert local.best == 10 * (index + 1) and report.unexpected == ()
    third.mkdir()
    handler.save(third, args=co.Save([Local("l")], process_index=1, process_count=2))
    handler.save(third, args=co.Save([Local("l")], process_index=0, process_count=3))
    with pytest.raises(callstate.CorruptCheckpointError, match="two saves"):
        handler.restore(third, args=co.Restore([Ema("g")], process_index=0, process_count=2))


@callstate.stateful(identity=("name",), state=("last", "best_k"))
class Exports:
    """Remembers the files it exported: paths as values and as dict keys."""

    def __init__(self, name: str) -> None:
        self.name, self.last = name, ""
        self.best_k: dict[str, float] = {}


def test_a_moved_checkpoint_directory_restores_with_relocate_into_the_new_place(tmp_path: Path) -> None:
    """CheckpointManager's directory moved with shutil.move: Restore(relocate=) moves the states' paths; the report counts them."""
    old, new = tmp_path / "old" / "run", tmp_path / "new" / "run"
    exports = Exports("w")
    exports.last = str(old / "exports" / "3.npz")
    exports.best_k = {str(old / "exports" / "3.npz"): 0.5, "/elsewhere/run/1.npz": 0.75}
    with ocp.CheckpointManager(old / "ckpts") as mngr:
        composite_save(mngr, 3, {"w": jnp.ones(2)}, [exports])
        mngr.wait_until_finished()
    new.parent.mkdir()
    shutil.move(str(old), str(new))
    back = Exports("w")
    with ocp.CheckpointManager(new / "ckpts") as mngr:
        restored = composite_restore(mngr, 3, {"w": jnp.zeros(2)}, [back], strict=True, relocate={old: new})
    assert (restored.state["w"] == 1).all()
    assert back.last == str(new / "exports" / "3.npz")
    assert back.best_k == {str(new / "exports" / "3.npz"): 0.5, "/elsewhere/run/1.npz": 0.75}
    assert dict(restored.callbacks.relocated) == {"Exports{'name': 'w'}": 2}


@pytest.mark.parametrize(
    ("relocate", "error", "match"),
    [({"": "/new"}, ValueError, "empty or a root"), ({b"/old": "/new"}, TypeError, "old prefix")],
)
def test_a_malformed_relocate_is_refused_when_the_restore_args_are_made(
    tmp_path: Path, relocate: Any, error: type[Exception], match: str
) -> None:
    """Restore(relocate=) checks the mapping as callstate.load does, before orbax reads anything: nothing restored."""
    saved = Exports("w")
    saved.last = "/old/a"
    with ocp.CheckpointManager(tmp_path) as mngr:
        composite_save(mngr, 0, {"w": jnp.ones(2)}, [saved])
        mngr.wait_until_finished()
    back = Exports("w")
    with ocp.CheckpointManager(tmp_path) as mngr, pytest.raises(error, match=match):
        composite_restore(mngr, 0, {"w": jnp.zeros(2)}, [back], relocate=relocate)
    assert back.last == ""


def test_the_v1_checkpointable_relocates_a_moved_checkpoint(tmp_path: Path) -> None:
    """checkpointable(registry, relocate=) moves the states' paths on load_checkpointables; a bad mapping is refused."""
    from orbax.checkpoint import v1 as ocp1

    old, new = tmp_path / "old" / "run", tmp_path / "new" / "run"
    exports = Exports("w")
    exports.last = str(old / "exports" / "3.npz")
    exports.best_k = {str(old / "exports" / "3.npz"): 0.5, "/elsewhere/run/1.npz": 0.75}
    ocp1.save_checkpointables(old / "ckpt", {"callbacks": co.checkpointable([exports])})
    new.parent.mkdir()
    shutil.move(str(old), str(new))
    back = Exports("w")
    with pytest.raises(ValueError, match="empty or a root"):
        co.checkpointable([back], relocate={"/": "/new"})
    loaded = co.checkpointable([back], relocate={old: new})
    ocp1.load_checkpointables(new / "ckpt", {"callbacks": loaded})
    assert back.last == str(new / "exports" / "3.npz")
    assert back.best_k == {str(new / "exports" / "3.npz"): 0.5, "/elsewhere/run/1.npz": 0.75}
    assert loaded.last_report is not None and dict(loaded.last_report.relocated) == {"Exports{'name': 'w'}": 2}


def test_rng_state_in_the_registry_brings_the_streams_back_through_orbax(tmp_path: Path) -> None:
    """Save/Restore of a registry holding RNGState: Python's, numpy's and a named Generator's draws come back."""
    import random

    import numpy as np

    data = np.random.default_rng(3)
    with ocp.CheckpointManager(tmp_path) as mngr:
        composite_save(mngr, 0, {"w": jnp.ones(2)}, [callstate.RNGState(generators={"data": data})])
        mngr.wait_until_finished()
    expected = (random.random(), float(np.random.rand()), float(data.random()))
    random.seed(7)
    np.random.seed(7)
    rng = callstate.RNGState(generators={"data": np.random.default_rng(0)})
    with ocp.CheckpointManager(tmp_path) as mngr:
        composite_restore(mngr, 0, {"w": jnp.zeros(2)}, [rng], strict=True)
    assert {"python", "numpy", "generator:data"} <= set(rng.restored)
    assert (random.random(), float(np.random.rand()), float(rng.generators["data"].random())) == expected
