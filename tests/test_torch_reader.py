"""The inert torch-checkpoint reader: a zip checkpoint's 'callbacks', sizes and records, nothing run."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

import callstate
from callstate._torch_reader import TorchFile


class Canary:
    """Unpickling it runs a shell command that creates a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {self.path}",))


class LegacyKey:
    """A class Lightning < 1.5 used as a state's key."""


def _read(path: Path) -> TorchFile:
    tf = TorchFile(str(path))
    tf.close()
    return tf


def test_lists_each_callback_with_its_records_and_size(tmp_path: Path) -> None:
    """Each state is listed under its key with the records its tensors use and its size with the tensors' data."""
    path = tmp_path / "c.ckpt"
    torch.save(
        {"callbacks": {"EMA": {"shadow": torch.zeros(1000), "n": 3}, "Timer": {"t": 1.5}}, "w": torch.ones(4)},
        path,
    )
    tf = _read(path)
    assert list(tf.entries) == ["EMA", "Timer"]
    assert [r.nbytes for r in tf.entries["EMA"]] == [4000] and tf.entries["Timer"] == []
    assert tf.sizes["EMA"] > 4000 > tf.sizes["Timer"]
    assert len(tf.records) == 2, "the model's tensor is a record too, outside 'callbacks'"


def test_reads_a_state_that_would_run_code_without_running_it(tmp_path: Path) -> None:
    """A state whose unpickling calls os.system is listed, and the command never runs."""
    canary = tmp_path / "canary"
    path = tmp_path / "c.ckpt"
    torch.save({"callbacks": {"Evil": {"x": Canary(canary)}}}, path)
    assert list(_read(path).entries) == ["Evil"]
    assert not canary.exists()


def test_a_class_key_is_named_as_a_class(tmp_path: Path) -> None:
    """A class used as a key (Lightning < 1.5) is listed as '<class module.name>', its class never imported."""
    path = tmp_path / "c.ckpt"
    torch.save({"callbacks": {LegacyKey: {"n": 1}}}, path)
    assert list(_read(path).entries) == [f"<class {__name__}.LegacyKey>"]


def test_bad_records_names_a_damaged_tensor_and_reports_progress(tmp_path: Path) -> None:
    """A flipped byte in a tensor's record is found by its CRC-32; progress gets the bytes checked so far."""
    path = tmp_path / "c.ckpt"
    marked = torch.arange(100.0) + 12345.5
    torch.save({"callbacks": {"EMA": {"shadow": marked}, "Other": {"w": torch.ones(10)}}}, path)
    data = bytearray(path.read_bytes())
    data[data.find(marked.numpy().tobytes())] ^= 0xFF
    path.write_bytes(bytes(data))
    tf = TorchFile(str(path))
    seen: list[int] = []
    try:
        bad = tf.bad_records(seen.append)
    finally:
        tf.close()
    assert bad == {r.key for r in tf.entries["EMA"]}
    assert seen == sorted(seen) and seen[-1] == 400 + 40


def test_a_file_that_is_no_zip_is_corrupt(tmp_path: Path) -> None:
    """Bytes that are not a zip raise CorruptCheckpointError naming the file."""
    path = tmp_path / "c.ckpt"
    path.write_bytes(b"PK\x03\x04 and then nothing")
    with pytest.raises(callstate.CorruptCheckpointError, match="a damaged torch checkpoint") as e:
        TorchFile(str(path))
    assert e.value.path == str(path)


def test_a_zip_without_a_pickle_is_corrupt(tmp_path: Path) -> None:
    """A zip file with no data.pkl raises CorruptCheckpointError: it is not a torch checkpoint."""
    path = tmp_path / "c.ckpt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/other.txt", "x")
    with pytest.raises(callstate.CorruptCheckpointError, match=r"without archive/data\.pkl is not a torch checkpoint"):
        TorchFile(str(path))


@pytest.mark.parametrize(
    ("checkpoint", "problem"),
    [
        ({"state_dict": {}}, "without a 'callbacks' entry"),
        ({"callbacks": [1, 2]}, "'callbacks' entry is a list"),
        ([1, 2], "holds a list"),
    ],
    ids=["absent", "list", "root-list"],
)
def test_a_checkpoint_without_a_callbacks_mapping_is_corrupt(
    tmp_path: Path, checkpoint: object, problem: str
) -> None:
    """A checkpoint with no 'callbacks' mapping raises CorruptCheckpointError naming the file and the entry."""
    path = tmp_path / "c.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(callstate.CorruptCheckpointError, match=problem) as e:
        TorchFile(str(path))
    assert (e.value.path, e.value.key) == (str(path), "callbacks")
