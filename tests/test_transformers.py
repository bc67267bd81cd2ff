"""callstate.transformers on real Trainer.train runs (a tiny GPT-2 on CPU): HF's flaws alone, and fixed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hf_helpers as h  # before transformers: it keeps transformers offline
import pytest

pytest.importorskip("transformers")

import callstate
from callstate.transformers import CHECKPOINT_FILE, CallstateCallback, UnsupportedTrainerError

pytestmark = [
    pytest.mark.slow,
    # HF's Trainer on CPU says so, and accelerate warns about the thread count it picks.
    pytest.mark.filterwarnings("ignore::FutureWarning:transformers"),
    # Most resumes here leave some saved states to the registry on purpose; one test checks the warning.
    pytest.mark.filterwarnings("ignore:Restore was partial:callstate.CallstateWarning"),
]

HERE = Path(__file__).parent
ES_KEY = "EarlyStoppingCallback{'early_stopping_patience': 100, 'early_stopping_threshold': 1000000000.0}"


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    """The callback states at the end of an uninterrupted 8-step run."""
    import tempfile

    noise = h.Noise()
    callbacks = h.reference_callbacks()
    with tempfile.TemporaryDirectory() as out:
        h.trainer(out, [*callbacks, CallstateCallback([noise]), h.Decay(noise)]).train()
    return h.states(callbacks, noise)


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output directory of the same run killed with SIGKILL at step 5: checkpoints 2 and 4."""
    out = tmp_path_factory.mktemp("killed")
    done = subprocess.run(
        [sys.executable, str(HERE / "hf_helpers.py"), str(out), "5"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == -9, done.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["checkpoint-2", "checkpoint-4"]
    return out


@pytest.fixture
def run(killed: Path, tmp_path: Path) -> Path:
    """A copy of the killed run's output directory, for one test to resume."""
    return Path(shutil.copytree(killed, tmp_path / "run"))


def test_a_killed_run_resumed_with_callbacks_reordered_ends_as_an_uninterrupted_one(
    reference: dict[str, Any], run: Path
) -> None:
    """SIGKILL at step 5, resume (True) with the list reversed: every state, EarlyStopping's too, as without the kill."""
    assert (run / "checkpoint-4" / CHECKPOINT_FILE).is_file() and (run / "checkpoint-4" / "trainer_state.json").is_file()
    noise = h.Noise()
    callbacks = h.reference_callbacks()[::-1]
    adapter = CallstateCallback([noise])
    h.trainer(str(run), [h.Decay(noise), *callbacks, adapter]).train(resume_from_checkpoint=True)
    assert h.states(callbacks, noise) == reference
    meter = next(cb for cb in callbacks if isinstance(cb, h.Meter) and cb.what == "steps")
    assert meter.seen_at_begin == 4  # restored before its on_train_begin, though listed before the adapter
    assert adapter.last_report is not None and ES_KEY in adapter.last_report.restored
    assert not adapter.last_report.missing and not adapter.last_report.unexpected
    saved = callstate.read(run / "checkpoint-8" / CHECKPOINT_FILE)
    assert saved["Tally{'what': 'evals'}"] == {"count": 40} and saved[ES_KEY] == {"early_stopping_patience_counter": 3}


def test_a_callback_removed_then_added_back_keeps_its_state_in_between(run: Path) -> None:
    """Resumed without Meter('evals') to step 6, then with it: its step-4 state crossed checkpoint-6 and came back."""
    meter_steps = h.Meter("steps")
    trainer = h.trainer(str(run), [meter_steps, CallstateCallback(), h.Stopper(6)])
    with pytest.warns(callstate.CallstateWarning, match="Meter{'what': 'evals'}"):
        trainer.train(resume_from_checkpoint=True)
    assert meter_steps.count == 6
    kept = callstate.read(run / "checkpoint-6" / CHECKPOINT_FILE)
    assert kept["Meter{'what': 'evals'}"] == {"count": 20}  # from checkpoint-4, no callback had it
    back, meter_steps = h.Meter("evals"), h.Meter("steps")
    adapter = CallstateCallback(strict=False)
    h.trainer(str(run), [back, meter_steps, *[cb for cb in h.reference_callbacks() if not isinstance(cb, h.Meter)], adapter]).train(
        resume_from_checkpoint=str(run / "checkpoint-6")
    )
    assert (back.count, meter_steps.count) == (30, 8)


def test_resume_from_a_checkpoint_elsewhere(run: Path, tmp_path: Path) -> None:
    """A checkpoint moved out of output_dir restores from where train() is told, not from a guess."""
    moved = tmp_path / "archive" / "best"
    shutil.move(str(run / "checkpoint-4"), moved)
    tally = h.Tally("steps")
    h.trainer(str(tmp_path / "new"), [tally, h.Tally("evals"), CallstateCallback(), h.Stopper(5)]).train(
        resume_from_checkpoint=str(moved)
    )
    assert tally.count == 5


def _callstate_warnings(trainer: Any, **train: Any) -> list[str]:
    """Train, recording every warning; return the messages of the CallstateWarnings."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train(**train)
    return [str(w.message) for w in caught if issubclass(w.category, callstate.CallstateWarning)]


@pytest.mark.parametrize("checkpoint", ["with the file", "without it", "without it, HF's states adopted"])
def test_a_partial_resume_warns_once(run: Path, checkpoint: str) -> None:
    """A resume that leaves a callback without state says so in one warning, with where the states came from."""
    callbacks: list[Any] = [h.Meter("steps"), h.Meter("added")]
    if checkpoint != "with the file":
        (run / "checkpoint-4" / CHECKPOINT_FILE).unlink()
    if checkpoint == "without it, HF's states adopted":
        callbacks.append(h.Tally("steps"))
    trainer = h.trainer(str(run), [*callbacks, CallstateCallback(), h.Stopper(5)])
    said = _callstate_warnings(trainer, resume_from_checkpoint=str(run / "checkpoint-4"))
    assert len(said) == 1, said
    assert "Restore was partial" in said[0] and "Meter{'what': 'added'}" in said[0]
    if checkpoint == "without it":
        assert f"has no {CHECKPOINT_FILE}" in said[0] and "Meter{'what': 'steps'}" in said[0]
    elif checkpoint == "without it, HF's states adopted":
        assert "Tally{'what': 'steps'} (by identity)" in said[0]
        assert callbacks[2].count == 5  # 4 adopted from trainer_state.json, one more step


# -- HF's flaws, each with HF alone and with the adapter -------------------------------------------------


class NaiveRestore(h._callback_base()):  # type: ignore[misc]
    """The 14-line fix a user writes: save in on_save, load in on_train_begin, guessing the directory."""

    def __init__(self, callbacks: list[Any]) -> None:
        self.callbacks = callbacks

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}", "naive.callstate")
        callstate.save([cb for cb in self.callbacks if hasattr(cb, "state_dict")], path)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}", "naive.callstate")
        if os.path.exists(path):
            callstate.load([cb for cb in self.callbacks if hasattr(cb, "state_dict")], path)


@pytest.fixture(scope="module")
def hf_alone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain Trainer run with HF's own restore on, two Tallies, EarlyStopping and the naive fix."""
    out = tmp_path_factory.mktemp("hf")
    callbacks = [h.Tally("steps"), h.Tally("evals"), h.Meter("steps"), h.early_stopping()]
    callbacks.append(NaiveRestore(callbacks))
    h.trainer(str(out), [*callbacks, h.Stopper(4)], plain=True, restore_callback_states_from_checkpoint=True).train()
    return out


def _tallies(state_file: Path) -> Any:
    return json.loads(state_file.read_text())["stateful_callbacks"]["Tally"]


def test_hf_saves_a_growing_list_and_the_adapter_one_state_per_key(hf_alone: Path, run: Path) -> None:
    """HF alone appends every save's Tally states (4 entries, then 6); callstate has one entry per key."""
    assert len(_tallies(hf_alone / "checkpoint-2" / "trainer_state.json")) == 4
    assert len(_tallies(hf_alone / "checkpoint-4" / "trainer_state.json")) == 6
    for step in (2, 4):
        entries = callstate.read(run / f"checkpoint-{step}" / CHECKPOINT_FILE)
        assert entries["Tally{'what': 'steps'}"] == {"count": step}
        assert sum(k.startswith("Tally") for k in entries) == 2


def test_hf_restores_the_first_entries_into_new_instances_by_position(hf_alone: Path, tmp_path: Path) -> None:
    """HF alone, resumed with the Tallies reordered: new instances, built from the first (step 0) entries."""
    out = Path(shutil.copytree(hf_alone, tmp_path / "hf"))
    evals, steps = h.Tally("evals"), h.Tally("steps")
    trainer = h.trainer(str(out), [evals, steps, h.Stopper(5)], plain=True, restore_callback_states_from_checkpoint=True)
    trainer.train(resume_from_checkpoint=True)
    kept = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, h.Tally)]
    assert evals not in kept and steps not in kept  # the user's objects were dropped
    assert [cb.what for cb in kept] == ["steps", "evals"]  # matched by position: the saved order, not the user's
    assert sorted((cb.what, cb.count) for cb in kept) == [("evals", 0), ("steps", 1)]  # 20 and 4 lost
    assert (evals.count, steps.count) == (0, 0)


def test_the_adapter_restores_into_the_users_instances_by_key(run: Path) -> None:
    """With the adapter, the same reordered resume restores 20 and 4 into the objects the user holds."""
    evals, steps = h.Tally("evals"), h.Tally("steps")
    trainer = h.trainer(str(run), [evals, steps, CallstateCallback(), h.Stopper(5)])
    trainer.train(resume_from_checkpoint=True)
    assert evals in trainer.callback_handler.callbacks and steps in trainer.callback_handler.callbacks
    assert (evals.count, steps.count) == (20, 5)


def test_hf_restores_nothing_by_default(hf_alone: Path, tmp_path: Path) -> None:
    """HF alone, with its default restore_callback_states_from_checkpoint=False: Tally starts from 0 again."""
    out = Path(shutil.copytree(hf_alone, tmp_path / "hf"))
    steps = h.Tally("steps")
    h.trainer(str(out), [steps, h.Stopper(5)], plain=True).train(resume_from_checkpoint=True)
    assert steps.count == 1  # the adapter's 5: test_the_adapter_restores_into_the_users_instances_by_key


def test_the_naive_fix_guesses_late_and_misses_early_stopping(hf_alone: Path, tmp_path: Path, run: Path) -> None:
    """The naive fix restores after callbacks listed before it, misses a moved checkpoint and EarlyStopping."""
    out = Path(shutil.copytree(hf_alone, tmp_path / "hf"))
    meter, stopping = h.Meter("steps"), h.early_stopping()
    callbacks = [meter, stopping]
    h.trainer(str(out), [*callbacks, NaiveRestore(callbacks), h.Stopper(6)], plain=True).train(resume_from_checkpoint=True)
    assert (meter.seen_at_begin, meter.count) == (0, 6)  # restored only after meter's on_train_begin
    assert stopping.early_stopping_patience_counter == 1  # 2 with its state restored
    moved = tmp_path / "elsewhere"
    shutil.copytree(hf_alone / "checkpoint-4", moved)
    meter = h.Meter("steps")
    h.trainer(str(tmp_path / "new"), [meter, NaiveRestore([meter]), h.Stopper(5)], plain=True).train(
        resume_from_checkpoint=str(moved)
    )
    assert meter.count == 1  # nothing restored: the guess looked in new/checkpoint-4
    meter, stopping = h.Meter("steps"), h.early_stopping()
    h.trainer(str(run), [meter, stopping, CallstateCallback(), h.Stopper(6)]).train(resume_from_checkpoint=True)
    assert (meter.seen_at_begin, meter.count, stopping.early_stopping_patience_counter) == (4, 6, 2)


def test_a_checkpoint_without_the_file_adopts_hfs_own_states_and_says_how(hf_alone: Path, tmp_path: Path) -> None:
    """A plain Trainer's checkpoint: HF's saved states adopted by identity, else by class and order; strict refuses the rest."""
    out = Path(shutil.copytree(hf_alone, tmp_path / "hf"))
    evals, steps, stopping, other, meter = h.Tally("evals"), h.Tally("steps"), h.early_stopping(), h.Tally("other"), h.Meter("steps")
    trainer = h.trainer(str(out), [evals, steps, stopping, other, meter, h.Stopper(5)])
    with pytest.warns(callstate.CallstateWarning, match=f"has no {CHECKPOINT_FILE}.*by identity.*by class and order"):
        trainer.train(resume_from_checkpoint=True)
    adapter = trainer.callstate_callback
    assert (evals.count, steps.count, stopping.early_stopping_patience_counter) == (20, 5, 1)
    assert other.count == 2  # HF's third saved Tally entry (the step-2 save of Tally('steps')), by position as HF does
    assert adapter.last_adoption == {
        "Tally{'what': 'evals'}": "identity", "Tally{'what': 'steps'}": "identity", ES_KEY: "identity",
        "Tally{'what': 'other'}": "class and order",
    }
    assert adapter.last_report.missing == ("Meter{'what': 'steps'}",) and meter.count == 1
    with pytest.raises(callstate.StateMismatchError, match=f"has no {CHECKPOINT_FILE}"):
        h.trainer(str(out), [h.Meter("steps"), CallstateCallback(strict=True)]).train(resume_from_checkpoint=True)


def test_hfs_own_restore_flag_is_accepted_and_the_adapter_takes_its_place(run: Path) -> None:
    """restore_callback_states_from_checkpoint=True: the user's instances restored by key, said once, none replaced."""
    evals, steps = h.Tally("evals"), h.Tally("steps")
    trainer = h.trainer(str(run), [evals, steps, h.Stopper(5)], restore_callback_states_from_checkpoint=True)
    with pytest.warns(callstate.CallstateWarning, match="in place of HF's own restore") as said:
        trainer.train(resume_from_checkpoint=True)
    assert sum("in place of HF" in str(w.message) for w in said) == 1
    assert [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, h.Tally)] == [evals, steps]
    assert (evals.count, steps.count) == (20, 5)


def test_a_plain_trainers_checkpoint_resumes_its_early_stopping_counter(hf_alone: Path, tmp_path: Path) -> None:
    """Switching to the adapter with HF's flag on: EarlyStoppingCallback's counter from trainer_state.json goes on."""
    out = Path(shutil.copytree(hf_alone, tmp_path / "hf"))
    stopping = h.early_stopping()
    trainer = h.trainer(str(out), [stopping, h.Stopper(6)], restore_callback_states_from_checkpoint=True)
    with pytest.warns(callstate.CallstateWarning, match="trainer_state.json"):
        trainer.train(resume_from_checkpoint=True)
    assert stopping in trainer.callback_handler.callbacks
    assert stopping.early_stopping_patience_counter == 2  # 1 saved at step 4, one more evaluation at step 6


class OutOfMemoryOnce(h._callback_base()):  # type: ignore[misc]
    """Raises the error accelerate's find_executable_batch_size takes for an out-of-memory, at the first step only."""

    def __init__(self) -> None:
        self.raised = False

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self.raised:
            self.raised = True
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_auto_find_batch_size_reruns_at_a_smaller_batch_as_a_plain_trainer_does(tmp_path: Path) -> None:
    """An out-of-memory at batch 16 with auto_find_batch_size: both Trainers go on at batch 14, on_train_begin twice."""
    sizes = []
    for plain in (True, False):
        meter = h.Meter("steps")
        trainer = h.trainer(
            str(tmp_path / str(plain)), [OutOfMemoryOnce(), meter, h.Stopper(2)], plain=plain,
            auto_find_batch_size=True, per_device_train_batch_size=16, eval_strategy="no", metric_for_best_model=None,
        )
        trainer.train()
        sizes.append((trainer.state.train_batch_size, meter.count))
    assert sizes == [(14, 2), (14, 2)]


def test_a_resume_rerun_after_an_out_of_memory_keeps_the_state_restored_first(run: Path) -> None:
    """The second on_train_begin of one train() restores nothing: the restored count stays, training goes on."""
    meter = h.Meter("steps")
    trainer = h.trainer(str(run), [OutOfMemoryOnce(), meter, h.Stopper(6)], auto_find_batch_size=True)
    trainer.train(resume_from_checkpoint=True)
    assert trainer._train_batch_size == 1  # 2 in the checkpoint, reduced by 10% (HF's state keeps the saved 2)
    assert (meter.seen_at_begin, meter.count) == (4, 6)
    assert trainer.callstate_callback.last_report.restored[:1] == ("Meter{'what': 'steps'}",)


def test_the_callback_list_is_hfs_own_outside_train(tmp_path: Path) -> None:
    """The CallstateCallback given joins callback_handler.callbacks while train() runs only; HF's list before and after."""
    adapter = CallstateCallback()
    seen = []

    class Look(h._callback_base()):  # type: ignore[misc]
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            seen.append(adapter in trainer.callback_handler.callbacks)

    look = Look()
    plain = h.trainer(str(tmp_path / "plain"), [look, h.Stopper(1)], plain=True)
    trainer = h.trainer(str(tmp_path / "cs"), [look, adapter, h.Stopper(1)], eval_strategy="no", metric_for_best_model=None)
    names = [type(cb) for cb in plain.callback_handler.callbacks]
    assert [type(cb) for cb in trainer.callback_handler.callbacks] == names
    assert trainer.callstate_callback is adapter
    trainer.train()
    assert seen == [True] and [type(cb) for cb in trainer.callback_handler.callbacks] == names


def test_hfs_duplicate_class_warning_is_silenced_only_for_callbacks_told_apart(tmp_path: Path) -> None:
    """Two Tallies with different keys: no "there is already one"; two Stoppers (no state): HF still warns."""
    import logging

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    hf_logger = logging.getLogger("transformers.trainer_callback")
    keep = Keep()
    hf_logger.addHandler(keep)
    hf_logger.setLevel(logging.WARNING)  # the helper sets transformers' own verbosity to errors only
    try:
        trainer = h.trainer(str(tmp_path), [h.Tally("steps"), h.Tally("evals"), h.Stopper(1), h.Stopper(2)])
        trainer.add_callback(h.Tally("more"))
    finally:
        hf_logger.setLevel(logging.NOTSET)
        hf_logger.removeHandler(keep)
    twins = [m for m in records if "there is already one" in m]
    assert len(twins) == 1 and "Stopper" in twins[0]


def test_the_registry_follows_the_trainers_callbacks(tmp_path: Path) -> None:
    """A callback removed from the Trainer leaves the registry at the next train(); one given in callbacks= stays."""
    meter, mine = h.Meter("steps"), h.Meter("mine")
    adapter = CallstateCallback([mine])
    trainer = h.trainer(str(tmp_path), [meter, mine, adapter, h.Stopper(2)], eval_strategy="no", metric_for_best_model=None)
    trainer.train()
    assert meter in adapter.registry and mine in adapter.registry
    other = h.Meter("evals")
    trainer.remove_callback(meter)
    trainer.remove_callback(mine)
    trainer.add_callback(other)
    trainer.train()
    assert meter not in adapter.registry and other in adapter.registry and mine in adapter.registry
    assert sorted(callstate.read(tmp_path / "checkpoint-2" / CHECKPOINT_FILE)) == [
        "Meter{'what': 'evals'}", "Meter{'what': 'mine'}"
    ]


# -- refusals --------------------------------------------------------------------------------------------


def test_a_plain_trainer_with_the_callback_is_refused_at_train_begin(tmp_path: Path) -> None:
    """CallstateCallback in a plain Trainer: UnsupportedTrainerError naming CallstateTrainerMixin."""
    with pytest.raises(UnsupportedTrainerError, match="CallstateTrainerMixin") as caught:
        h.trainer(str(tmp_path), [CallstateCallback()], plain=True).train()
    assert caught.value.needs == "CallstateTrainerMixin"


def test_strict_refuses_a_resume_that_does_not_match(run: Path) -> None:
    """strict=True and a saved state without its callback: StateMismatchError, nothing restored, no step run."""
    tally = h.Tally("steps")
    trainer = h.trainer(str(run), [tally, CallstateCallback(strict=True)])
    with pytest.raises(callstate.StateMismatchError) as caught:
        trainer.train(resume_from_checkpoint=True)
    assert "Tally{'what': 'evals'}" in caught.value.unexpected
    assert tally.count == 0 and trainer.state.global_step == 0


def test_a_state_that_needs_trust_is_refused_by_default(run: Path) -> None:
    """A pickled state in the checkpoint: UnsafeCheckpointError unless trusted=True, and nothing changes."""
    checkpoint = run / "checkpoint-4"
    states = callstate.read(checkpoint / CHECKPOINT_FILE)
    with pytest.warns(callstate.PickledStateWarning):
        callstate.save({**states, "Noise": {"scale": h.Noise()}}, checkpoint / CHECKPOINT_FILE)
    tally, noise = h.Tally("steps"), h.Noise()
    with pytest.raises(callstate.UnsafeCheckpointError):
        h.trainer(str(run), [tally, CallstateCallback([noise])]).train(resume_from_checkpoint=True)
    assert (tally.count, noise.scale) == (0, 1.0)
    adapter = CallstateCallback([noise], trusted=True)
    h.trainer(str(run), [tally, adapter, h.Stopper(5)]).train(resume_from_checkpoint=True)
    assert tally.count == 5 and isinstance(noise.scale, h.Noise)


def test_a_file_cannot_set_an_attribute_the_callback_does_not_export(run: Path) -> None:
    """A state for an ExportableState callback naming another attribute: RestoreError, every callback unchanged."""
    checkpoint = run / "checkpoint-4"
    states = callstate.read(checkpoint / CHECKPOINT_FILE)
    callstate.save({**states, "Tally{'what': 'evals'}": {"what": "steps"}}, checkpoint / CHECKPOINT_FILE)
    steps, evals = h.Tally("steps"), h.Tally("evals")
    with pytest.raises(callstate.RestoreError, match="does not export"):
        h.trainer(str(run), [steps, evals, CallstateCallback()]).train(resume_from_checkpoint=True)
    assert (steps.what, steps.count, evals.what, evals.count) == ("steps", 0, "evals", 0)


def _damage_trainer_state(checkpoint: Path) -> None:
    (checkpoint / "trainer_state.json").write_text("{not json")


def _remove_weights(checkpoint: Path) -> None:
    (checkpoint / "model.safetensors").unlink()


@pytest.mark.parametrize(
    ("damage", "error"),
    [(_damage_trainer_state, json.JSONDecodeError), (_remove_weights, ValueError)],
    ids=["trainer_state.json garbage", "model weights missing"],
)
def test_a_checkpoint_the_trainer_refuses_puts_the_callbacks_back(
    run: Path, tmp_path: Path, damage: Any, error: type[Exception]
) -> None:
    """The callbacks are restored, then HF fails to load the checkpoint: its error, unchanged, and every callback back."""
    checkpoint = Path(shutil.copytree(run / "checkpoint-4", tmp_path / "damaged"))
    damage(checkpoint)
    meter, tally, noise = h.Meter("steps"), h.Tally("evals"), h.Noise()
    meter.count, tally.count, noise.scale = 99, 77, 0.25
    adapter = CallstateCallback([noise])
    trainer = h.trainer(str(tmp_path / "out"), [meter, tally, adapter])
    with pytest.raises(error) as caught:
        trainer.train(resume_from_checkpoint=str(checkpoint))
    assert not isinstance(caught.value, callstate.CallstateError)  # the Trainer's own error
    assert any("callbacks restored from the checkpoint were put back" in n for n in caught.value.__notes__)
    assert (meter.count, tally.count, noise.scale, meter.seen_at_begin) == (99, 77, 0.25, None)
    assert adapter.last_report is None and dict(adapter.registry.unclaimed) == {}
    # The same objects then resume from a sound checkpoint.
    h.trainer(str(run), [meter, tally, adapter, h.Stopper(5)]).train(resume_from_checkpoint=str(run / "checkpoint-4"))
    assert (meter.seen_at_begin, meter.count, tally.count) == (4, 5, 20)


class _FailsAtStep(h._callback_base()):  # type: ignore[misc]
    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        raise RuntimeError("step failed")


def test_a_failure_once_training_began_keeps_the_restored_states(run: Path) -> None:
    """on_train_begin commits the resume: an error at step 5 leaves the callbacks with what they hold then."""
    meter = h.Meter("steps")
    adapter = CallstateCallback()
    with pytest.raises(RuntimeError, match="step failed") as caught:
        h.trainer(str(run), [meter, adapter, _FailsAtStep()]).train(resume_from_checkpoint=True)
    assert not getattr(caught.value, "__notes__", [])
    assert meter.count == 5 and adapter.last_report is not None and "Meter{'what': 'steps'}" in adapter.last_report.restored


def test_a_checkpoint_directory_that_does_not_exist_gets_the_trainers_own_error(tmp_path: Path) -> None:
    """No such directory: Trainer's "Can't find a valid checkpoint at ...", nothing about callbacks.callstate."""
    missing = tmp_path / "no_such_checkpoint"
    meter = h.Meter("steps")
    meter.count = 99
    adapter = CallstateCallback()
    with pytest.raises(ValueError, match="Can't find a valid checkpoint at") as caught:
        h.trainer(str(tmp_path / "out"), [meter, adapter]).train(resume_from_checkpoint=str(missing))
    assert CHECKPOINT_FILE not in str(caught.value) and str(missing) in str(caught.value)
    assert meter.count == 99 and adapter.last_report is None


@pytest.mark.parametrize("link", ["dangling", "loop"])
def test_a_broken_link_for_the_file_is_a_checkpoint_error_and_changes_nothing(run: Path, link: str) -> None:
    """callbacks.callstate a dangling or looping symlink: CheckpointError naming it, strict or not, before any change."""
    path = run / "checkpoint-4" / CHECKPOINT_FILE
    path.unlink()
    os.symlink(run / "elsewhere" / CHECKPOINT_FILE if link == "dangling" else path, path)
    for strict in (False, True):
        meter = h.Meter("steps")
        meter.count = 99
        trainer = h.trainer(str(run), [meter, CallstateCallback(strict=strict)])
        with pytest.raises(callstate.CheckpointError, match="symbolic link") as caught:
            trainer.train(resume_from_checkpoint=str(run / "checkpoint-4"))
        assert caught.value.path == str(path) and "remove the link" in str(caught.value)
        assert meter.count == 99 and trainer.state.global_step == 0


def test_two_adapters_or_a_clashing_key_are_refused(tmp_path: Path) -> None:
    """Two CallstateCallback, or a plain object keyed like a Trainer callback: DuplicateKeyError before training."""
    with pytest.raises(callstate.DuplicateKeyError, match="single CallstateCallback"):
        h.trainer(str(tmp_path), [CallstateCallback(), CallstateCallback()]).train()
    with pytest.raises(callstate.DuplicateKeyError, match="Tally"):
        h.trainer(str(tmp_path), [h.Tally("steps"), CallstateCallback([h.Meter("x")]), h.Tally("steps")]).train()


# -- a moved output_dir --------------------------------------------------------------------------------


@callstate.stateful(state=("last", "seen"))
class Where(h._callback_base()):  # type: ignore[misc]
    """Remembers the checkpoint directory of every step (paths as values and dict keys); notes them at train begin."""

    def __init__(self) -> None:
        self.last = ""
        self.seen: dict[str, int] = {}
        self.at_begin: tuple[str, dict[str, int]] | None = None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.last = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        self.seen[self.last] = state.global_step

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.at_begin = (self.last, dict(self.seen))


class WhereHF(h._callback_base(), h._exportable()):  # type: ignore[misc]
    """An HF ExportableState callback holding a path: HF saves it into trainer_state.json."""

    def __init__(self) -> None:
        self.last = ""
        self.at_begin: str | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.at_begin = self.last

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.last = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")

    def state(self) -> dict[str, Any]:
        return {"args": {}, "attributes": {"last": self.last}}


def test_a_moved_output_dir_resumed_with_relocate_keeps_its_paths_in_the_new_place(tmp_path: Path) -> None:
    """output_dir moved with shutil.move, resumed with relocate=: paths restored (file and adoption) and saved anew point into it."""
    old, new = tmp_path / "old" / "run", tmp_path / "new" / "run"
    h.trainer(str(old), [Where(), WhereHF(), CallstateCallback()], max_steps=4).train()
    new.parent.mkdir()
    shutil.move(str(old), str(new))
    where = Where()
    adapter = CallstateCallback(relocate={old: new})
    hf = WhereHF()
    h.trainer(str(new), [where, hf, adapter], max_steps=6).train(resume_from_checkpoint=str(new / "checkpoint-4"))
    expected = {str(new / f"checkpoint-{step}"): step for step in (1, 2, 3, 4)}
    assert where.at_begin == (str(new / "checkpoint-4"), expected) and hf.at_begin == str(new / "checkpoint-4")
    assert adapter.last_report is not None
    assert dict(adapter.last_report.relocated) == {"Where": 5, "WhereHF{}": 1}
    saved = callstate.read(new / "checkpoint-6" / CHECKPOINT_FILE)
    assert set(saved["Where"]["seen"]) == {str(new / f"checkpoint-{step}") for step in range(1, 7)}
    # A checkpoint without callbacks.callstate: HF's own states, adopted from trainer_state.json, move too.
    (new / "checkpoint-4" / CHECKPOINT_FILE).unlink()
    hf, adapter = WhereHF(), CallstateCallback(relocate={old: new})
    with pytest.warns(callstate.CallstateWarning, match="trainer_state.json"):
        h.trainer(str(new), [hf, adapter], max_steps=4).train(resume_from_checkpoint=str(new / "checkpoint-4"))
    assert hf.at_begin == str(new / "checkpoint-4") and dict(adapter.last_report.relocated) == {"WhereHF{}": 1}


@pytest.mark.parametrize(
    ("relocate", "error", "match"),
    [({"": "/new"}, ValueError, "empty or a root"), ({"/old": None}, TypeError, "new prefix None")],
)
def test_a_malformed_relocate_is_refused_when_the_callback_is_made(
    tmp_path: Path, relocate: Any, error: type[Exception], match: str
) -> None:
    """CallstateCallback(relocate=) checks the mapping as callstate.load does, before any train: nothing restored."""
    meter = h.Meter("steps")
    with pytest.raises(error, match=match):
        h.trainer(str(tmp_path), [meter, CallstateCallback(relocate=relocate)])
    assert meter.count == 0 and meter.seen_at_begin is None

def test_a_callstate_trainer_without_the_callback_gets_one(run: Path) -> None:
    """CallstateTrainer with no CallstateCallback adds one: the Trainer callbacks' states still restore."""
    tally = h.Tally("evals")
    trainer = h.trainer(str(run), [tally, h.Stopper(5)])
    trainer.train(resume_from_checkpoint=True)
    assert tally.count == 20
    assert isinstance(trainer.callstate_callback, CallstateCallback) and trainer.callstate_callback.last_report.restored


def test_hf_saves_from_the_main_process_only_and_the_adapter_from_every_rank(tmp_path: Path) -> None:
    """DDP on 2 CPU ranks (gloo): HF alone keeps rank 0's state for both; the adapter gives each rank its own."""
    from accelerate_helpers import run_ranks

    results = run_ranks(h.ddp_run, 2, str(tmp_path))
    # HF alone: rank 1 counted 8 by step 4, but trainer_state.json holds rank 0's 4, and a resume from
    # step 2 hands rank 1 rank 0's 2 (it ends at 6, not 8).
    assert [r["hf"] for r in results] == [(4, 4, 4), (8, 4, 6)]
    # The adapter: the per-rank RankMeter resumed from step 2 ends as it did uninterrupted on each rank;
    # an ExportableState callback is global by HF's contract, so rank 1 gets rank 0's state (2 + 2 * 2).
    assert [r["ours"] for r in results] == [(4, 4, 4), (8, 8, 6)]
    saved = callstate.read(tmp_path / "ours" / "checkpoint-2" / CHECKPOINT_FILE)
    assert saved["RankMeter{'what': 'steps'}@rank1"] == {"count": 4}
    assert results[1]["restored"] == ("RankTally{'what': 'steps'}", "RankMeter{'what': 'steps'}")


# -- state versions --------------------------------------------------------------------------------------

STEPS_KEY = "Meter{'what': 'steps'}"


def meter_v2(migrate: Any = None) -> type:
    """Version 2 of hf_helpers.Meter (the same keys): its state is ``{"total": n}``, no longer ``{"count": n}``.

    Its 1 -> 2 migration is ``migrate`` (default: the rename).
    """

    class Meter(h.Meter):  # type: ignore[misc]
        @property
        def total(self) -> int:
            return int(self.count)

        @total.setter
        def total(self, value: int) -> None:
            self.count = value

    Meter.__qualname__ = "Meter"
    cls: type = callstate.stateful(state=("total",), version=2)(Meter)
    callstate.migration(cls, from_version=1)(migrate or (lambda state: {"total": state.pop("count")}))
    return cls


def versions(checkpoint: Path) -> dict[str, int]:
    """Return the version each entry of the checkpoint's callstate file was saved at, by key."""
    return {i.key: i.version for i in callstate.inspect(checkpoint / CHECKPOINT_FILE)}


def test_a_resume_migrates_an_older_state_before_on_train_begin_and_saves_the_new_version(run: Path) -> None:
    """Checkpoint-4 saved by Meter version 1, resumed with version 2: migrated, then checkpoint-6 at version 2."""
    assert versions(run / "checkpoint-4")[STEPS_KEY] == 1
    meter, adapter = meter_v2()("steps"), CallstateCallback()
    h.trainer(str(run), [meter, adapter, h.Stopper(6)], eval_strategy="no", metric_for_best_model=None).train(
        resume_from_checkpoint=str(run / "checkpoint-4")
    )
    assert meter.seen_at_begin == 4 and meter.count == 6
    assert adapter.last_report is not None and adapter.last_report.migrated == {STEPS_KEY: (1, 2)}
    saved = versions(run / "checkpoint-6")
    assert saved[STEPS_KEY] == 2 and saved["Meter{'what': 'evals'}"] == 1  # an unclaimed state keeps its version
    assert callstate.read(run / "checkpoint-6" / CHECKPOINT_FILE)[STEPS_KEY] == {"total": 6}


def test_a_newer_saved_version_or_a_failing_migration_fails_the_resume_and_changes_nothing(run: Path) -> None:
    """StateVersionError (saved at 2, class at 1) and MigrationError from train(): no callback changed, no step run."""
    newer = run / "checkpoint-2"
    states = callstate.read(newer / CHECKPOINT_FILE)
    callstate.save({**states, STEPS_KEY: {"total": 2}, "callstate:versions": {STEPS_KEY: 2}}, newer / CHECKPOINT_FILE)
    assert versions(newer)[STEPS_KEY] == 2
    meter, tally = h.Meter("steps"), h.Tally("evals")
    trainer = h.trainer(str(run), [meter, tally, CallstateCallback()])
    with pytest.raises(callstate.errors.StateVersionError) as too_new:
        trainer.train(resume_from_checkpoint=str(newer))
    assert (too_new.value.key, too_new.value.saved, too_new.value.current) == (STEPS_KEY, 2, 1)
    assert (meter.count, tally.count, trainer.state.global_step) == (0, 0, 0)

    def broken(state: dict[str, Any]) -> dict[str, Any]:
        return {"total": state["steps"]}

    meter, tally = meter_v2(broken)("steps"), h.Tally("evals")
    adapter = CallstateCallback()
    trainer = h.trainer(str(run), [meter, tally, adapter])
    with pytest.raises(callstate.errors.MigrationError) as failed:
        trainer.train(resume_from_checkpoint=str(run / "checkpoint-4"))
    assert (failed.value.key, failed.value.step) == (STEPS_KEY, (1, 2)) and isinstance(failed.value.__cause__, KeyError)
    assert (meter.count, tally.count, trainer.state.global_step) == (0, 0, 0) and adapter.last_report is None


@pytest.fixture(autouse=True)
def _no_leftover_process_group() -> Iterator[None]:
    yield
    import torch.distributed as dist

    assert not dist.is_initialized()


# -- random streams ------------------------------------------------------------------------------------


class Draw(h._callback_base()):  # type: ignore[misc]
    """Draws from Python's, numpy's and torch's streams just after each save and at train begin."""

    def __init__(self) -> None:
        self.after_save: dict[int, tuple[float, float, float]] = {}
        self.at_begin: tuple[float, float, float] | None = None

    @staticmethod
    def _draw() -> tuple[float, float, float]:
        import random

        import numpy as np
        import torch

        return random.random(), float(np.random.rand()), float(torch.rand(1))

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.after_save[state.global_step] = self._draw()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.at_begin = self._draw()


def test_rng_state_in_the_callback_brings_the_streams_of_the_checkpoint_back(tmp_path: Path) -> None:
    """CallstateCallback([RNGState()]): a resumed train draws what the saved run drew after that save."""
    first = Draw()
    h.trainer(str(tmp_path), [first, CallstateCallback([callstate.RNGState()])], max_steps=2, save_steps=2,
              eval_strategy="no").train()
    rng, resumed = callstate.RNGState(), Draw()
    adapter = CallstateCallback([rng], strict=True)
    h.trainer(str(tmp_path), [resumed, adapter], max_steps=2, save_steps=2, eval_strategy="no").train(
        resume_from_checkpoint=str(tmp_path / "checkpoint-2")
    )
    assert {"python", "numpy", "torch"} <= set(rng.restored)
    assert resumed.at_begin == first.after_save[2] != first.at_begin
