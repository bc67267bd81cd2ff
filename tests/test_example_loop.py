"""Kill-and-resume test of examples/plain_pytorch_loop.py, in real subprocesses."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "plain_pytorch_loop.py"
STEPS, EVERY, KILL_AFTER = 200, 10, 45


def _command(run_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(EXAMPLE),
        "--dir",
        str(run_dir),
        "--steps",
        str(STEPS),
        "--checkpoint-every",
        str(EVERY),
        *extra,
    ]


def _same_bits(a: Any, b: Any, where: str = "") -> None:
    """Assert ``a`` and ``b`` are the same, floats and tensors bit for bit."""
    assert type(a) is type(b), f"{where}: {type(a)} != {type(b)}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8)), f"{where}: tensors differ"
    elif isinstance(a, float):
        assert struct.pack("<d", a) == struct.pack("<d", b), f"{where}: {a!r} != {b!r}"
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for k in a:
            _same_bits(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), f"{where}: lengths {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same_bits(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _step_lines(stdout: str) -> dict[int, str]:
    return {int(line.split()[1]): line for line in stdout.splitlines() if line.startswith("step ")}


ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    """An uninterrupted run: its stdout and its final.pt."""
    run_dir = tmp_path_factory.mktemp("straight")
    done = subprocess.run(_command(run_dir), capture_output=True, text=True, timeout=120, env=ENV, check=True)
    return done.stdout, torch.load(run_dir / "final.pt", weights_only=True)


def _read_last(path: Path) -> dict[str, Any]:
    if path.suffix == ".pt":
        return dict(torch.load(path, weights_only=True))
    import callstate

    return callstate.read(path)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["callstate", "torch"])
def test_killed_and_resumed_run_ends_bitwise_identical_to_an_uninterrupted_run(
    tmp_path: Path, fmt: str, straight: tuple[str, dict[str, Any]]
) -> None:
    """SIGKILL mid-run, then --resume: same losses, callback states and model, bit for bit."""
    straight_stdout, expected = straight
    assert expected["step"] > KILL_AFTER + EVERY, "the run must go on well past the kill point"

    run_dir = tmp_path / "killed"
    last_path = run_dir / ("last.callstate" if fmt == "callstate" else "last.pt")
    proc = subprocess.Popen(
        _command(run_dir, "--format", fmt, "--step-time", "0.02"), stdout=subprocess.PIPE, text=True, env=ENV
    )
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(f"step {KILL_AFTER} "):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL, f"the run ended on its own: {seen[-3:]}"
    assert not (run_dir / "final.pt").exists(), "killed before the end"
    last = _read_last(last_path)
    saved_step = last["step"]
    # Steps 80, 160, ... end an epoch; any checkpoint before 80 is mid-epoch (16 batches per epoch).
    assert saved_step % EVERY == 0 and 0 < saved_step < 80, saved_step
    assert last["batch"] != 0, "the checkpoint is mid-epoch, so the data order must come from it"
    assert list(run_dir.iterdir()) == [last_path], "no temporary file is left behind"

    resumed = subprocess.run(
        _command(run_dir, "--format", fmt, "--resume"),
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
        check=True,
    )
    assert resumed.stdout.startswith(f"resumed from step {saved_step}\n"), resumed.stdout[:200]
    got = torch.load(run_dir / "final.pt", weights_only=True)

    _same_bits(got["losses"], expected["losses"], "losses")
    _same_bits(got["callbacks"], expected["callbacks"], "callbacks")
    _same_bits(got["model"], expected["model"], "model")
    assert got["step"] == expected["step"]
    assert set(got["callbacks"]) == {
        "EarlyStopping{'monitor': 'loss'}",
        "EarlyStopping{'monitor': 'val_loss'}",
        "EMA{'decay': 0.9}",
        "EMA{'decay': 0.99}",
    }
    want_lines, got_lines = _step_lines(straight_stdout), _step_lines(resumed.stdout)
    assert min(got_lines) == saved_step + 1
    assert all(got_lines[s] == want_lines[s] for s in got_lines), "printed losses match step for step"
    assert resumed.stdout.splitlines()[-5:] == straight_stdout.splitlines()[-5:], "same final states"
