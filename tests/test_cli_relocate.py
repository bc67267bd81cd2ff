"""The ``callstate relocate`` command: paths inside a file's states moved, in place, atomically."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

import callstate

STATE = {"dirpath": "/old/run", "best_k_models": {"/old/run/a.ckpt": 0.5}, "other": "/old/runner"}
MOVED = {"dirpath": "/new/run", "best_k_models": {"/new/run/a.ckpt": 0.5}, "other": "/old/runner"}


def relocate(path: Path, old: str, new: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "callstate", "relocate", str(path), "--from", old, "--to", new],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_relocate_a_callstate_file_keeping_untouched_states_byte_for_byte(tmp_path: Path) -> None:
    """The states holding old paths are rewritten; a state without one keeps its checksum."""
    path = tmp_path / "run.callstate"
    callstate.save({"ModelCheckpoint": STATE, "Counter": {"n": 3}}, path)
    before = {e.key: e.checksum for e in callstate.inspect(path)}
    done = relocate(path, "/old/run", "/new/run")
    assert done.returncode == 0, done.stderr
    assert "moved 2 path(s) in 1 state(s) from '/old/run' to '/new/run'" in done.stdout
    assert callstate.read(path) == {"ModelCheckpoint": MOVED, "Counter": {"n": 3}}
    after = {e.key: e.checksum for e in callstate.inspect(path)}
    assert after["Counter"] == before["Counter"] and after["ModelCheckpoint"] != before["ModelCheckpoint"]


def test_relocate_a_lightning_checkpoint(tmp_path: Path) -> None:
    """A .ckpt's callback states move; the rest of the checkpoint stays as it was."""
    path = tmp_path / "last.ckpt"
    weights = {"w": torch.ones(2)}
    torch.save({"pytorch-lightning_version": "2.6.0", "state_dict": weights, "callbacks": {"MC": STATE}}, path)
    done = relocate(path, "/old/run/", "/new/run")
    assert done.returncode == 0, done.stderr
    back = torch.load(path, weights_only=True)
    assert back["callbacks"] == {"MC": MOVED}
    assert torch.equal(back["state_dict"]["w"], weights["w"])
    assert back["pytorch-lightning_version"] == "2.6.0"


def test_a_root_prefix_is_a_usage_error(tmp_path: Path) -> None:
    """--from / would move every path: refused with exit 2, the file unchanged."""
    path = tmp_path / "run.callstate"
    callstate.save({"A": STATE}, path)
    data = path.read_bytes()
    done = relocate(path, "/", "/new")
    assert done.returncode == 2 and "empty or a root" in done.stderr
    assert path.read_bytes() == data
