"""Per-rank callback state through a real Lightning Trainer(strategy="ddp", accelerator="cpu", devices=2).

The test starts the two ranks itself, as torchrun would (environment variables on loopback, gloo), each
running this file as a script; Lightning sees that the processes exist and launches none. Each rank
trains, checkpoints and resumes, with and without ``CallstateCallback``, and writes what its callback
held to a JSON file that the tests read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("lightning.pytorch")

from dist_helpers import Timer, free_port
from lightning_helpers import LIGHTNING_NOISE

import callstate

pytestmark = pytest.mark.slow

WORLD_SIZE = 2
SAMPLES = 16
KEY = "SeenSamples{'name': 'train'}"


def _kit(workdir: Path, devices: int) -> tuple[type, Any]:
    """Return the per-rank ``SeenSamples`` Lightning callback class and ``fit(callbacks, max_epochs, ckpt_path)``."""
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    import callstate

    @callstate.stateful(identity=("name",), per_rank=True)
    class SeenSamples(pl.Callback):  # type: ignore[misc]
        """The sample ids this rank trained on: DDP's sampler gives every rank other ones."""

        def __init__(self, name: str) -> None:
            self.name = name
            self.seen: list[int] = []
            self.at_start: list[int] | None = None

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self.at_start = list(self.seen)

        def on_train_batch_end(
            self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            self.seen.extend(int(i) for i in batch[1])

        def state_dict(self) -> dict[str, Any]:
            return {"seen": list(self.seen)}

        def load_state_dict(self, state: dict[str, Any]) -> None:
            self.seen = list(state["seen"])

    SeenSamples.__qualname__ = "SeenSamples"  # its key, as if defined at module level

    class Tiny(pl.LightningModule):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return self.layer(batch[0]).pow(2).mean()

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    data = TensorDataset(torch.randn(SAMPLES, 1), torch.arange(SAMPLES))

    def fit(callbacks: list[Any], max_epochs: int, ckpt_path: Path | None = None) -> Any:
        trainer = pl.Trainer(
            strategy="ddp" if devices > 1 else "auto",
            accelerator="cpu",
            devices=devices,
            max_epochs=max_epochs,
            callbacks=callbacks,
            default_root_dir=str(workdir),
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(Tiny(), DataLoader(data, batch_size=2), ckpt_path=ckpt_path)
        return trainer

    return SeenSamples, fit


def _job(workdir: Path) -> None:
    """One rank: fit, checkpoint, resume (callstate, plain Lightning, plain from a callstate file)."""
    import torch.distributed as dist

    from callstate.lightning import CallstateCallback

    SeenSamples, fit = _kit(workdir, WORLD_SIZE)
    rank = int(os.environ["RANK"])
    result: dict[str, Any] = {}

    def adapter(elapsed: float) -> tuple[Any, Timer]:
        """A CallstateCallback holding a plain (not Lightning) per-rank object."""
        timer = Timer()
        timer.elapsed = elapsed
        registry = callstate.CallbackRegistry()
        registry.register(timer, per_rank=True)
        return CallstateCallback(registry), timer

    for mode in ("callstate", "plain"):
        with_callstate = mode == "callstate"
        cb = SeenSamples("train")
        extra, _ = adapter(1.5 + rank)
        trainer = fit([cb, extra] if with_callstate else [cb], max_epochs=1)
        ckpt = workdir / f"{mode}.ckpt"
        trainer.save_checkpoint(ckpt)
        resumed = SeenSamples("train")
        extra, timer = adapter(0.0)
        fit([resumed, extra] if with_callstate else [resumed], max_epochs=2, ckpt_path=ckpt)
        result[mode] = {"saved": cb.seen, "at_start": resumed.at_start, "final": resumed.seen}
        result[mode]["timer"] = timer.elapsed if with_callstate else None
    # Plain Lightning resuming from the file CallstateCallback wrote: it must ignore the per-rank entries.
    stranger = SeenSamples("train")
    fit([stranger], max_epochs=2, ckpt_path=workdir / "callstate.ckpt")
    result["plain-from-callstate"] = {"at_start": stranger.at_start}
    (workdir / f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[dict[str, Any]]]]:
    """Run ``_job`` on 2 ranks; return the work directory and each rank's results."""
    workdir = tmp_path_factory.mktemp("ddp")
    port = free_port()
    procs = []
    for rank in range(WORLD_SIZE):
        env = dict(
            os.environ,
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            WORLD_SIZE=str(WORLD_SIZE),
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            NODE_RANK="0",
            GLOO_SOCKET_IFNAME="lo",
            PYTHONWARNINGS="ignore",
        )
        log = open(workdir / f"rank{rank}.log", "w")  # noqa: SIM115 - closed below
        procs.append(
            (subprocess.Popen([sys.executable, __file__, str(workdir)], env=env, stdout=log, stderr=log), log)
        )
    try:
        for proc, _ in procs:
            proc.wait(timeout=240)
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    logs = "\n".join((workdir / f"rank{r}.log").read_text()[-3000:] for r in range(WORLD_SIZE))
    assert all(proc.returncode == 0 for proc, _ in procs), logs
    yield workdir, [json.loads((workdir / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]


def test_callstate_keeps_every_ranks_state_across_a_ddp_resume(
    ddp_run: tuple[Path, list[dict[str, Any]]],
) -> None:
    """With CallstateCallback, each rank resumes with the per-rank state it saved, and goes on from it."""
    _, results = ddp_run
    saved = [r["callstate"]["saved"] for r in results]
    assert saved[0] != saved[1] and len(saved[0]) == len(saved[1]) == SAMPLES // WORLD_SIZE
    assert sorted(saved[0] + saved[1]) == list(range(SAMPLES))
    for rank, result in enumerate(results):
        assert result["callstate"]["at_start"] == saved[rank], f"rank {rank}"
        assert result["callstate"]["timer"] == 1.5 + rank  # a plain object of the adapter, per rank
        final = result["callstate"]["final"]
        assert final[: len(saved[rank])] == saved[rank] and len(final) == 2 * len(saved[rank])
    second = [r["callstate"]["final"][SAMPLES // WORLD_SIZE :] for r in results]
    assert sorted(second[0] + second[1]) == list(range(SAMPLES))  # the next epoch went on, per rank


def test_plain_lightning_ddp_resumes_every_rank_with_rank_0s_state(
    ddp_run: tuple[Path, list[dict[str, Any]]],
) -> None:
    """Without callstate, Lightning writes rank 0's callback state only: every rank resumes with it."""
    _, results = ddp_run
    rank0 = results[0]["plain"]["saved"]
    assert results[1]["plain"]["saved"] != rank0
    assert [r["plain"]["at_start"] for r in results] == [rank0, rank0]


def test_ddp_checkpoint_layout_and_plain_lightning_ignores_it(
    ddp_run: tuple[Path, list[dict[str, Any]]],
) -> None:
    """The checkpoint holds one entry per rank and the manifest; plain Lightning restores none of them."""
    import torch

    import callstate.distributed as csd

    workdir, results = ddp_run
    callbacks = torch.load(workdir / "callstate.ckpt", weights_only=True)["callbacks"]
    assert callbacks == {
        **{f"{KEY}@rank{r}": {"seen": results[r]["callstate"]["saved"]} for r in range(WORLD_SIZE)},
        **{f"Timer@rank{r}": {"elapsed": 1.5 + r} for r in range(WORLD_SIZE)},
        csd.MANIFEST_KEY: {"layout": 1, "world_size": WORLD_SIZE, "per_rank": [KEY, "Timer"]},
    }
    plain = torch.load(workdir / "plain.ckpt", weights_only=True)["callbacks"]
    assert plain[KEY] == {"seen": results[0]["plain"]["saved"]}
    assert [r["plain-from-callstate"]["at_start"] for r in results] == [[], []]


@pytest.mark.filterwarnings(*LIGHTNING_NOISE)
def test_resuming_a_ddp_checkpoint_in_one_process_applies_the_policy(
    ddp_run: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """CallstateCallback(on_world_size_change=...) governs a 2-rank checkpoint resumed by 1 process."""
    from callstate.lightning import CallstateCallback

    workdir, results = ddp_run
    SeenSamples, fit = _kit(tmp_path, 1)
    with pytest.raises(callstate.errors.RankMismatchError, match=r"saved by 2 rank\(s\), this run has 1") as e:
        fit([SeenSamples("train"), CallstateCallback()], max_epochs=2, ckpt_path=workdir / "callstate.ckpt")
    assert (e.value.saved_world_size, e.value.world_size) == (2, 1)
    resumed, timer = SeenSamples("train"), Timer()
    registry = callstate.CallbackRegistry()
    registry.register(timer, per_rank=True)
    fit(
        [resumed, CallstateCallback(registry, on_world_size_change="broadcast")],
        max_epochs=2,
        ckpt_path=workdir / "callstate.ckpt",
    )
    assert resumed.at_start == results[0]["callstate"]["saved"]  # rank 0's, for the Trainer's callback
    assert timer.elapsed == 1.5  # and for the adapter's plain object
    with pytest.raises(ValueError, match="on_world_size_change='sometimes': expected one of"):
        CallstateCallback(on_world_size_change="sometimes")


if __name__ == "__main__":
    _job(Path(sys.argv[1]))
