"""The JAX guide's training loop, run as written: killed with SIGKILL during async saves, then resumed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import jax
import orbax.checkpoint as ocp
import pytest

import callstate

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guide" / "jax.md"
_BLOCK = re.compile(r"<!-- tested-by: tests/test_orbax_guide.py -->\n```python\n(.*?)```", re.DOTALL)


def script(tmp_path: Path) -> Path:
    """The guide's loop, as a file."""
    path = tmp_path / "loop.py"
    (code,) = _BLOCK.findall(GUIDE.read_text())
    path.write_text(code)
    return path


def run(path: Path, directory: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-W", "error", str(path), str(directory)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.mark.slow
def test_the_guide_loop_killed_during_an_async_save_resumes_to_the_same_end(tmp_path: Path) -> None:
    """SIGKILL mid-run leaves each step absent or complete; the resumed run ends as an unbroken one does."""
    loop = script(tmp_path)
    reference = run(loop, tmp_path / "whole").splitlines()[-1]
    assert reference.startswith("done")
    directory = tmp_path / "killed"
    child = subprocess.Popen(
        [sys.executable, str(loop), str(directory)], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert child.stdout is not None
    for line in child.stdout:
        if line.startswith("saved 8"):
            break
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    child.stdout.close()
    with ocp.CheckpointManager(directory) as mngr:
        steps = mngr.all_steps()
    assert steps and max(steps) <= 9
    for step in steps:  # every step orbax lists is complete: both items, every callback state
        states = callstate.read(directory / str(step) / "callbacks" / "callbacks.callstate")
        ema = states["EMA{'decay': 0.9}"]
        assert ema["updates"] == step and isinstance(ema["params"]["w"], jax.Array)
        assert (directory / str(step) / "params").is_dir()
    resumed = run(loop, directory)
    assert f"resumed at step {max(steps)}" in resumed
    assert resumed.splitlines()[-1] == reference
