"""A tiny Hugging Face training run for the tests: a GPT-2 built locally, synthetic data, CPU, no downloads.

``trainer(out, callbacks, ...)`` builds a ``CallstateTrainer`` (or, ``plain=True``, a ``Trainer``)
of 8 steps that saves and evaluates every 2 steps. The callbacks here count what happens to them.
Run as a script (``python hf_helpers.py OUT KILL_AT``) it trains with the reference callbacks and
kills itself with SIGKILL at step ``KILL_AT``.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import callstate

# Nothing here downloads anything: were transformers to try, it would fail rather than reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

STEPS = 8
EVERY = 2


def _quiet() -> None:
    import transformers

    transformers.logging.set_verbosity_error()


def dataset(n: int) -> Any:
    """Return ``n`` fixed sequences of 8 tokens, as a torch Dataset of input_ids and labels."""
    import torch

    class Tokens(torch.utils.data.Dataset):  # type: ignore[misc]
        def __len__(self) -> int:
            return n

        def __getitem__(self, i: int) -> dict[str, Any]:
            ids = torch.randint(0, 32, (8,), generator=torch.Generator().manual_seed(i))
            return {"input_ids": ids, "labels": ids}

    return Tokens()


def model() -> Any:
    """Return a GPT-2 of one layer and 8 dimensions over 32 tokens, the same weights every time."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=32, n_positions=8, n_embd=8, n_layer=1, n_head=2, tie_word_embeddings=False)
    return GPT2LMHeadModel(config)


def trainer(out: str, callbacks: list[Any], *, plain: bool = False, **overrides: Any) -> Any:
    """Return a Trainer of ``STEPS`` steps on CPU writing checkpoints into ``out`` every ``EVERY`` steps."""
    _quiet()
    from transformers import Trainer, TrainingArguments

    from callstate.transformers import CallstateTrainer

    settings: dict[str, Any] = dict(
        output_dir=out,
        max_steps=STEPS,
        save_steps=EVERY,
        eval_strategy="steps",
        eval_steps=EVERY,
        metric_for_best_model="loss",
        per_device_train_batch_size=2,
        per_device_eval_batch_size=4,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        logging_steps=1000,
        dataloader_num_workers=0,
        seed=0,
    )
    settings.update(overrides)
    cls = Trainer if plain else CallstateTrainer
    return cls(
        model=model(),
        args=TrainingArguments(**settings),
        train_dataset=dataset(16),
        eval_dataset=dataset(4),
        callbacks=callbacks,
    )


def early_stopping() -> Any:
    """Return an EarlyStoppingCallback whose counter grows at every evaluation but the first, never stopping."""
    from transformers import EarlyStoppingCallback

    return EarlyStoppingCallback(early_stopping_patience=100, early_stopping_threshold=1e9)


def _callback_base() -> type:
    from transformers import TrainerCallback

    return TrainerCallback  # type: ignore[no-any-return]


class _Counting(_callback_base()):  # type: ignore[misc]
    """Counts steps (``what='steps'``) or evaluations, ten a time (``what='evals'``)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.count = 0

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.what == "steps":
            self.count += 1

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.what == "evals":
            self.count += 10


@callstate.stateful(identity=("what",), state=("count",))
class Meter(_Counting):
    """A TrainerCallback with a callstate state; notes what it holds when training begins."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.seen_at_begin: int | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.seen_at_begin = self.count


def _exportable() -> type:
    from transformers.trainer_callback import ExportableState

    return ExportableState  # type: ignore[no-any-return]


class Tally(_Counting, _exportable()):  # type: ignore[misc]
    """An HF ExportableState callback, as HF documents them: two instances told apart by ``what``."""

    def state(self) -> dict[str, Any]:
        return {"args": {"what": self.what}, "attributes": {"count": self.count}}


class Noise:
    """A plain object (no Trainer callback) with a state: a noise scale, halved at every step by Decay."""

    def __init__(self) -> None:
        self.scale = 1.0

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale = state["scale"]


class Killer(_callback_base()):  # type: ignore[misc]
    """Kills its own process with SIGKILL at the end of step ``at``: an interruption nothing can clean up."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.at:
            os.kill(os.getpid(), signal.SIGKILL)


class Stopper(_callback_base()):  # type: ignore[misc]
    """Stops training at the end of step ``at``, after that step's checkpoint."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.at:
            control.should_training_stop = True


def reference_callbacks() -> list[Any]:
    """Return the callbacks of the reference run: two Meters, two Tallies and an EarlyStoppingCallback."""
    return [Meter("steps"), Meter("evals"), Tally("steps"), Tally("evals"), early_stopping()]


def states(callbacks: list[Any], noise: Noise) -> dict[str, Any]:
    """Return what every reference callback holds, by name."""
    out: dict[str, Any] = {"noise": noise.scale}
    for cb in callbacks:
        if isinstance(cb, Meter | Tally):
            out[f"{type(cb).__name__}:{cb.what}"] = cb.count
        elif hasattr(cb, "early_stopping_patience_counter"):
            out["early_stopping"] = cb.early_stopping_patience_counter
    return out


class Decay(_callback_base()):  # type: ignore[misc]
    """Halves the Noise's scale at every step, so the plain object's state changes during training."""

    def __init__(self, noise: Noise) -> None:
        self.noise = noise

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.noise.scale /= 2


def main() -> None:
    """Train with the reference callbacks into argv[1] and SIGKILL this process at step argv[2]."""
    from callstate.transformers import CallstateCallback

    out, kill_at = sys.argv[1], int(sys.argv[2])
    noise = Noise()
    trainer(out, [*reference_callbacks(), CallstateCallback([noise]), Decay(noise), Killer(kill_at)]).train()
    raise AssertionError("not killed")


if __name__ == "__main__":
    main()


# -- distributed runs --------------------------------------------------------------------------------------


@callstate.stateful(identity=("what",), state=("count",), per_rank=True)
class RankMeter(_Counting):
    """A per-rank TrainerCallback: each step adds its rank + 1, so every rank's count differs."""

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.count += args.process_index + 1


class RankTally(_Counting, _exportable()):  # type: ignore[misc]
    """The same as an HF ExportableState callback."""

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.count += args.process_index + 1

    def state(self) -> dict[str, Any]:
        return {"args": {"what": self.what}, "attributes": {"count": self.count}}


def ddp_run(out: str) -> dict[str, Any]:
    """On every rank: 4 steps with HF alone, resumed with its restore on; the same with the adapter."""
    import json

    from callstate.transformers import CallstateCallback

    hf, ours = os.path.join(out, "hf"), os.path.join(out, "ours")
    tally = RankTally("steps")
    trainer(hf, [tally, Stopper(4)], plain=True, eval_strategy="no", metric_for_best_model=None).train()
    with open(os.path.join(hf, "checkpoint-4", "trainer_state.json")) as f:
        saved_by_hf = json.load(f)["stateful_callbacks"]["RankTally"]["attributes"]["count"]
    again = trainer(
        hf,
        [RankTally("steps"), Stopper(4)],
        plain=True,
        eval_strategy="no",
        metric_for_best_model=None,
        restore_callback_states_from_checkpoint=True,
    )
    again.train(resume_from_checkpoint=os.path.join(hf, "checkpoint-2"))
    hf_restored = next(cb.count for cb in again.callback_handler.callbacks if isinstance(cb, RankTally))
    meter, exported = RankMeter("steps"), RankTally("steps")
    trainer(ours, [meter, exported, CallstateCallback(), Stopper(4)], eval_strategy="no", metric_for_best_model=None).train()
    meter2, exported2 = RankMeter("steps"), RankTally("steps")
    adapter = CallstateCallback()
    trainer(ours, [exported2, meter2, adapter, Stopper(4)], eval_strategy="no", metric_for_best_model=None).train(
        resume_from_checkpoint=os.path.join(ours, "checkpoint-2")
    )
    return {
        "hf": (tally.count, saved_by_hf, hf_restored),
        "ours": (meter.count, meter2.count, exported2.count),
        "restored": adapter.last_report.restored if adapter.last_report else None,
    }
