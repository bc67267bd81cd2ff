"""Kill-and-resume test of examples/lightning_resume.py: real Lightning runs in subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from lightning_helpers import NAMESPACES

if not NAMESPACES:
    pytest.skip("Lightning is not installed: pip install 'callstate[lightning]'", allow_module_level=True)

from callstate.lightning import read_callback_states

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lightning_resume.py"
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
EPOCHS, CRASH_AFTER = 3, 1
COUNTERS = ("Counter{'what': 'epochs'}", "Counter{'what': 'batches'}")
PLAIN = ("NoiseSchedule{'name': 'input-scale'}", "RunningMean{'metric': 'train_loss'}")


def _command(ckpt_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, str(EXAMPLE), "--ckpt-dir", str(ckpt_dir), "--epochs", str(EPOCHS), *extra]


def _run(ckpt_dir: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _command(ckpt_dir, *extra), capture_output=True, text=True, timeout=300, env=ENV, check=check
    )


def _lines(stdout: str, prefix: str) -> list[dict[str, Any]]:
    """Return the JSON of every stdout line that starts with ``prefix``."""
    return [json.loads(line[len(prefix) :]) for line in stdout.splitlines() if line.startswith(prefix)]


def _epochs(stdout: str) -> dict[int, dict[str, Any]]:
    """Return the states printed at the end of each epoch, by epoch number (from 1)."""
    out = {}
    for line in stdout.splitlines():
        if line.startswith("epoch "):
            number, _, states = line[len("epoch ") :].partition(": ")
            out[int(number)] = json.loads(states)
    return out


@pytest.mark.slow
def test_killed_and_resumed_lightning_run_ends_with_the_states_of_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    """SIGKILL mid-epoch, then --resume from last.ckpt: Counters and plain objects end as in a run never killed."""
    # The uninterrupted run goes on alongside the one that is killed: most of each is importing Lightning.
    with subprocess.Popen(
        _command(tmp_path / "straight"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    ) as proc:
        crashed = _run(tmp_path / "run", "--crash-after-epoch", str(CRASH_AFTER), check=False)
        try:
            straight, errors = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, errors[-2000:]
    expected = json.loads(straight.splitlines()[-1])
    assert list(expected) == [*COUNTERS, *PLAIN], straight
    assert expected[COUNTERS[0]] == {"epochs": EPOCHS, "batches": 0}
    assert expected[COUNTERS[1]] == {"epochs": 0, "batches": 16 * EPOCHS}
    assert expected[PLAIN[0]]["steps"] == expected[PLAIN[1]]["count"] == 16 * EPOCHS
    straight_epochs = _epochs(straight)
    assert sorted(straight_epochs) == [1, 2, 3], straight

    assert crashed.returncode == -signal.SIGKILL, (crashed.returncode, crashed.stdout, crashed.stderr[-2000:])
    assert crashed.stdout.splitlines()[-1] == "killed in epoch 2 after batch 8", crashed.stdout
    assert "final states:" not in crashed.stdout
    assert _epochs(crashed.stdout) == {1: straight_epochs[1]}, "before the kill, the runs are the same"

    saved = read_callback_states(tmp_path / "run" / "last.ckpt")
    assert set(saved) >= {*COUNTERS, *PLAIN}, (
        f"the adapter saves the plain objects next to Lightning's: {list(saved)}"
    )
    assert saved[COUNTERS[1]] == {"epochs": 0, "batches": 16}
    assert saved[PLAIN[1]] == straight_epochs[1][PLAIN[1]], "the checkpoint holds epoch 1's RunningMean"

    resumed = _run(tmp_path / "run", "--resume")
    out = resumed.stdout
    assert out.splitlines()[0] == f"resuming from {tmp_path / 'run' / 'last.ckpt'}", out
    assert _lines(out, "restored: ") == [straight_epochs[1]], "the resumed run prints the states of epoch 1"
    assert "report: 5 states restored, missing [], unexpected []" in out.splitlines(), out
    assert _epochs(out) == {2: straight_epochs[2], 3: straight_epochs[3]}, "epochs 2 and 3 replay exactly"
    assert out.splitlines()[-2] == "final states:", out
    got = json.loads(out.splitlines()[-1])
    assert got == expected, f"final states differ:\n{got}\n!=\n{expected}"
