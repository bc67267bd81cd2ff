"""The one torch.load wrapper: safe unless trusted, and its failures as callstate errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import callstate
from callstate._torch_io import blocked_global, torch_load


@pytest.mark.parametrize(
    ("message", "name"),
    [
        ("Unsupported global: GLOBAL argparse.Namespace was not an allowed global by default.", "argparse.Namespace"),
        ("Trying to load unsupported GLOBAL posix.system whose module posix is blocked.", "posix.system"),
        ("nothing about globals", None),
    ],
)
def test_blocked_global_reads_the_name_torch_gives(message: str, name: str | None) -> None:
    """The refused global is read from each form of torch's message; other messages name none."""
    assert blocked_global(message) == name


def test_plain_checkpoint_loads_safely(tmp_path: Path) -> None:
    """A checkpoint of tensors and plain data loads with weights_only."""
    path = tmp_path / "c.pt"
    torch.save({"callbacks": {"k": {"t": torch.ones(2)}}}, path)
    assert torch.equal(torch_load(path, trusted=False)["callbacks"]["k"]["t"], torch.ones(2))


def test_a_damaged_checkpoint_is_corrupt_naming_the_file(tmp_path: Path) -> None:
    """Bytes that are no torch checkpoint give CorruptCheckpointError with the path."""
    path = tmp_path / "c.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(callstate.CorruptCheckpointError, match="not a readable torch checkpoint") as e:
        torch_load(path, trusted=False)
    assert e.value.path == str(path)


def test_a_missing_file_is_an_os_error(tmp_path: Path) -> None:
    """A path that does not exist raises FileNotFoundError, as open() would."""
    with pytest.raises(FileNotFoundError):
        torch_load(tmp_path / "absent.pt", trusted=False)
