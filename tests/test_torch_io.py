"""Torch checkpoint files: the torch.load wrapper, the atomic torch.save, the check of 'callbacks'."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import torch
from torch_hostile import (
    callbacks_pickle,
    checkpoint,
    declare_size,
    deep_tuple,
    integer,
    run_capped,
    storage,
    text,
)

import callstate
from callstate._torch._torch_io import blocked_global, torch_load, torch_save
from callstate._torch._torch_layout import callbacks_of


@pytest.mark.parametrize(
    ("message", "name"),
    [
        (
            "Unsupported global: GLOBAL argparse.Namespace was not an allowed global by default.",
            "argparse.Namespace",
        ),
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


# -- the pre-scan before torch.load ---------------------------------------------------------------


@pytest.mark.parametrize("mode", ["load", "lightning"])
def test_a_deep_tuple_key_never_reaches_torch_load(tmp_path: Path, mode: str) -> None:
    """A 200,000-deep tuple key, which crashes torch.load(weights_only=True), is refused by the pre-scan."""
    path = checkpoint(tmp_path / "c.ckpt", callbacks_pickle(deep_tuple(200_000), integer(1)))
    result = run_capped(mode, path)
    assert "death" not in result, f"the child died ({result['death']}):\n{result['stderr']}"
    assert result["type"] == "CorruptCheckpointError" and "nested more than" in result["message"], result


def test_a_record_declared_larger_than_the_file_never_reaches_torch_load(tmp_path: Path) -> None:
    """A 3 GB storage declared by a 1 KB file is refused before torch allocates it."""
    path = checkpoint(
        tmp_path / "c.ckpt", callbacks_pickle(text("EMA"), storage("0", 3 * 10**9)), {"0": bytes(16)}
    )
    declare_size(path, "archive/data/0", 3 * 10**9)
    result = run_capped("load", path)
    assert (
        result.get("type") == "CorruptCheckpointError" and "more than the file holds" in result["message"]
    ), result


def test_duplicate_members_are_refused_before_torch_load(tmp_path: Path) -> None:
    """Two archive/data.pkl are refused by torch_load too, so every loading function sees what inspect sees."""
    pkl = callbacks_pickle(text("k"), integer(1))
    path = checkpoint(tmp_path / "c.ckpt", pkl, extra=(("archive/data.pkl", pkl),))
    with pytest.raises(callstate.CorruptCheckpointError, match="several members named") as e:
        torch_load(path, trusted=True)
    assert e.value.path == str(path)


def test_a_blocked_global_is_still_unsafe(tmp_path: Path) -> None:
    """A file needing a global torch refuses passes the pre-scan and is an UnsafeCheckpointError naming it."""
    path = tmp_path / "c.pt"
    torch.save({"callbacks": {"ns": argparse.Namespace(a=1)}}, path)
    with pytest.raises(callstate.UnsafeCheckpointError) as e:
        torch_load(path, trusted=False)
    assert e.value.global_name == "argparse.Namespace" and e.value.path == str(path)


def test_the_pre_scan_reads_no_tensor_data(tmp_path: Path) -> None:
    """A tensor record whose bytes fail their CRC still loads: the scan reads the pickle and directory only."""
    path = tmp_path / "c.pt"
    marked = torch.arange(50.0) + 777.25
    torch.save({"callbacks": {"k": {"t": marked}}}, path)
    data = bytearray(path.read_bytes())
    data[data.find(marked.numpy().tobytes())] ^= 0x01
    path.write_bytes(bytes(data))
    loaded = torch_load(path, trusted=False)["callbacks"]["k"]["t"]
    assert not torch.equal(loaded, marked) and loaded.shape == marked.shape


def test_a_file_that_is_no_zip_is_refused_as_torch_load_would_misread_it(tmp_path: Path) -> None:
    """A legacy (pre-zip) torch file is refused with a message saying how to re-save it."""
    path = tmp_path / "c.pt"
    torch.save({"callbacks": {}}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(callstate.CorruptCheckpointError, match=r"re-save it with torch\.save"):
        torch_load(path, trusted=False)


def test_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    """A FIFO given as a torch checkpoint is refused immediately, not waited on."""
    import os

    fifo = tmp_path / "pipe.ckpt"
    os.mkfifo(fifo)
    with pytest.raises(callstate.CorruptCheckpointError, match="not a regular file"):
        torch_load(fifo, trusted=False)
