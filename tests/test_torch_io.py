"""Torch checkpoint files: the torch.load wrapper, the atomic torch.save, the check of 'callbacks'."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import callstate
from callstate._torch_io import blocked_global, callbacks_of, torch_load, torch_save


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


# -- torch_save -------------------------------------------------------------------------------------


def test_torch_save_writes_what_torch_load_reads(tmp_path: Path) -> None:
    """torch_save writes a torch.save file that torch_load reads back, tensors included."""
    path = tmp_path / "c.pt"
    torch_save({"callbacks": {"k": {"t": torch.arange(3.0)}}, "step": 7}, path)
    loaded = torch_load(path, trusted=False)
    assert loaded["step"] == 7 and torch.equal(loaded["callbacks"]["k"]["t"], torch.arange(3.0))


def test_torch_save_that_fails_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    """A torch.save that raises halfway leaves the previous file whole and no temp file beside it."""
    path = tmp_path / "c.pt"
    torch_save({"callbacks": {"k": 1}}, path)
    before = path.read_bytes()

    class Unsaveable:
        def __reduce__(self) -> Any:
            raise RuntimeError("cannot pickle this")

    with pytest.raises(RuntimeError, match="cannot pickle this"):
        torch_save({"callbacks": {"k": Unsaveable()}}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


# -- callbacks_of -----------------------------------------------------------------------------------


def test_callbacks_of_returns_the_callbacks_mapping_itself() -> None:
    """The checkpoint's own 'callbacks' mapping is returned, not a copy."""
    states = {"Counter{'what': 'epochs'}": {"n": 1}}
    assert callbacks_of({"callbacks": states, "step": 3}, "c.pt", required=True) is states


def test_callbacks_of_an_optional_absent_entry_is_empty() -> None:
    """Without required, a checkpoint with no 'callbacks' (weights only) gives an empty mapping."""
    assert callbacks_of({"state_dict": {}}, "c.pt", required=False) == {}


@pytest.mark.parametrize("required", [True, False])
def test_callbacks_of_a_checkpoint_that_is_no_mapping_is_corrupt(required: bool) -> None:
    """A checkpoint that is not a mapping raises CorruptCheckpointError naming the file, its type and the entry."""
    with pytest.raises(
        callstate.CorruptCheckpointError,
        match=r"^'c\.pt' holds a list, not a Lightning checkpoint \(a dict with a 'callbacks' entry\): check the path\.$",
    ) as e:
        callbacks_of([1, 2], "c.pt", required=required, expected="a Lightning checkpoint")
    assert (e.value.path, e.value.key) == ("c.pt", "callbacks")


def test_callbacks_of_a_required_absent_entry_lists_the_entries_there_are() -> None:
    """A required 'callbacks' that is absent raises CorruptCheckpointError listing the entries the file has."""
    with pytest.raises(
        callstate.CorruptCheckpointError,
        match=r"^'w\.pt' is a checkpoint without a 'callbacks' entry \(its entries: \['optimizer', 'state_dict'\]\), "
        r"so not a Lightning checkpoint or a callstate\.loop\.save_checkpoint file: check the path\.$",
    ) as e:
        callbacks_of({"state_dict": {}, "optimizer": {}}, "w.pt", required=True)
    assert (e.value.path, e.value.key) == ("w.pt", "callbacks")


def test_callbacks_of_lists_at_most_ten_entries() -> None:
    """A checkpoint with many entries and no 'callbacks' lists ten of them, then an ellipsis."""
    with pytest.raises(callstate.CorruptCheckpointError, match=r"'e09', '\.\.\.'\]\)") as e:
        callbacks_of({f"e{i:02d}": i for i in range(50)}, "w.pt", required=True)
    assert "e10" not in str(e.value)


@pytest.mark.parametrize("required", [True, False])
def test_callbacks_of_a_callbacks_entry_that_is_no_mapping_is_corrupt(required: bool) -> None:
    """A 'callbacks' that is not a mapping raises CorruptCheckpointError naming its type, whether required or not."""
    with pytest.raises(
        callstate.CorruptCheckpointError,
        match=r"^'c\.pt': its 'callbacks' entry is a list, not a mapping of key -> state, so it is not a "
        r"callstate\.loop\.save_checkpoint file or was altered; restore it from a copy\.$",
    ) as e:
        callbacks_of(
            {"callbacks": [1]}, "c.pt", required=required, expected="a callstate.loop.save_checkpoint file"
        )
    assert (e.value.path, e.value.key) == ("c.pt", "callbacks")


def test_callbacks_of_an_object_in_memory_is_named_as_the_checkpoint() -> None:
    """Without a file name, messages speak of the checkpoint and the error's path is None."""
    with pytest.raises(
        callstate.CorruptCheckpointError, match=r"^The checkpoint: its 'callbacks' entry is a str"
    ) as e:
        callbacks_of({"callbacks": "x"}, None, required=True)
    assert e.value.path is None
