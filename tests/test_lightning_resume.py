"""The resume kit in a real Lightning Trainer: moved runs keep their best checkpoints; identified built-ins."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from lightning_helpers import LIGHTNING_NOISE, NAMESPACES, kit

if not NAMESPACES:
    pytest.skip("Lightning is not installed: pip install 'callstate[lightning]'", allow_module_level=True)

import torch

import callstate
from callstate.lightning import CallstateCallback

pytestmark = [pytest.mark.slow, *(pytest.mark.filterwarnings(f) for f in LIGHTNING_NOISE)]


def test_a_moved_run_keeps_its_best_score_and_best_k_paths(tmp_path: Path) -> None:
    """A run moved with shutil and resumed with relocate= keeps best_model_score and best_k_models, in the new place."""
    lk = kit(NAMESPACES[0])
    old, new = tmp_path / "old" / "run", tmp_path / "new" / "run"
    first = lk.ModelCheckpoint(monitor="val_loss", dirpath=old / "ckpts", save_top_k=2, save_last=True)
    lk.trainer(old, [first, CallstateCallback()]).fit(lk.model())
    saved = torch.load(old / "ckpts" / "last.ckpt", weights_only=True)["callbacks"]
    (saved_state,) = [v for k, v in saved.items() if str(k).startswith("ModelCheckpoint")]
    assert len(saved_state["best_k_models"]) == 2

    shutil.move(str(old), str(new))
    probe = lk.Probe()
    second = lk.ModelCheckpoint(monitor="val_loss", dirpath=new / "ckpts", save_top_k=2, save_last=True)
    adapter = CallstateCallback(relocate={old: new})
    trainer = lk.trainer(new, [second, adapter, probe], max_epochs=2)
    trainer.fit(lk.model(), ckpt_path=new / "ckpts" / "last.ckpt")  # warnings are errors: no "dirpath has changed"

    assert probe.at_fit_start is not None
    restored = probe.at_fit_start[second.state_key]
    assert restored["best_model_score"] == saved_state["best_model_score"]
    expected = {str(k).replace(str(old), str(new)): v for k, v in saved_state["best_k_models"].items()}
    assert restored["best_k_models"] == expected
    assert all(Path(p).exists() for p in expected)
    assert restored["best_model_path"] == saved_state["best_model_path"].replace(str(old), str(new))
    assert adapter.last_report is not None
    assert adapter.last_report.relocated[second.state_key] >= 4


def test_two_checkpoints_differing_in_filename_train_save_and_resume(tmp_path: Path) -> None:
    """Two ModelCheckpoints identified by filename share one Trainer, save two states and resume each its own."""
    lk = kit(NAMESPACES[0])

    def pair() -> list[Any]:
        return [
            callstate.identify(lk.ModelCheckpoint(monitor="val_loss", dirpath=tmp_path, filename=name), "filename")
            for name in ("best", "other")
        ]

    first = pair()
    lk.trainer(tmp_path, [*first, CallstateCallback()], max_epochs=1).fit(lk.model())
    saved = torch.load(first[0].best_model_path, weights_only=True)["callbacks"]
    assert {first[0].state_key, first[1].state_key} <= set(saved)

    second, probe = pair(), lk.Probe()
    trainer = lk.trainer(tmp_path, [*second, CallstateCallback(strict=True), probe], max_epochs=1)
    trainer.fit(lk.model(), ckpt_path=first[0].best_model_path)
    assert probe.at_fit_start is not None
    for before, after in zip(first, second, strict=True):
        assert probe.at_fit_start[after.state_key]["best_model_path"] == saved[before.state_key]["best_model_path"]


def test_a_checkpoint_saved_before_identify_resumes_through_the_alias(tmp_path: Path) -> None:
    """A ModelCheckpoint's state saved under Lightning's key restores into the identified one (renamed)."""
    lk = kit(NAMESPACES[0])
    plain = lk.ModelCheckpoint(monitor="val_loss", dirpath=tmp_path, filename="best")
    lk.trainer(tmp_path, [plain], max_epochs=1).fit(lk.model())

    identified = callstate.identify(
        lk.ModelCheckpoint(monitor="val_loss", dirpath=tmp_path, filename="best"), "filename"
    )
    adapter, probe = CallstateCallback(strict=True), lk.Probe()
    trainer = lk.trainer(tmp_path, [identified, adapter, probe], max_epochs=1)
    trainer.fit(lk.model(), ckpt_path=plain.best_model_path)
    assert probe.at_fit_start is not None
    assert probe.at_fit_start[identified.state_key]["best_model_score"] == plain.best_model_score
    assert adapter.last_report is not None
    assert dict(adapter.last_report.renamed) == {identified.state_key: plain.state_key}
