"""One read for every checkpoint kind: callstate.read/inspect/load and the command line take callstate
files, torch checkpoints (Lightning's .ckpt, callstate.loop's .pt) and framework checkpoint directories."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

import callstate
from callstate import distributed
from callstate._cli._commands import main
from callstate._torch import torch_save


@callstate.stateful(identity=("name",))
class Counter:
    """A callback with one number of state."""

    def __init__(self, name: str) -> None:
        self.name, self.n = name, 0

    def state_dict(self) -> dict[str, Any]:
        return {"n": self.n}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.n = state["n"]


@callstate.stateful(identity=("name",), version=2)
class Migrated:
    """A callback at version 2 of its state."""

    def __init__(self, name: str) -> None:
        self.name, self.total = name, 0

    def state_dict(self) -> dict[str, Any]:
        return {"total": self.total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total = state["total"]

@callstate.migration(Migrated, from_version=1)
def _up(state: dict[str, Any]) -> dict[str, Any]:
    return {"total": state["n"]}


KEY = "Counter{'name': 'a'}"


def _counted(n: int) -> Counter:
    c = Counter("a")
    c.n = n
    return c


def _lightning_ckpt(path: Path, n: int = 5) -> Path:
    torch_save({"pytorch-lightning_version": "2.4.0", "state_dict": {}, "callbacks": {KEY: {"n": n}}}, path)
    return path


def _hf_dir(tmp_path: Path, n: int = 5) -> Path:
    directory = tmp_path / "checkpoint-12"
    directory.mkdir()
    distributed.save([_counted(n)], directory / "callbacks.callstate")
    return directory


def test_read_inspect_and_load_take_a_lightning_checkpoint(tmp_path: Path) -> None:
    """callstate.read, inspect and load read a Lightning .ckpt's callback states, safely."""
    path = _lightning_ckpt(tmp_path / "last.ckpt")
    assert callstate.read(path) == {KEY: {"n": 5}}
    [entry] = callstate.inspect(path)
    assert (entry.key, entry.codec, entry.ok) == (KEY, "torch", True)
    c = Counter("a")
    assert callstate.load([c], path).restored == (KEY,) and c.n == 5


def test_load_takes_a_loop_checkpoint(tmp_path: Path) -> None:
    """callstate.load restores from a callstate.loop .pt file, its versions beside the states."""
    path = tmp_path / "run.pt"
    callstate.loop.save_checkpoint(path, [_counted(7)], step=3)
    c = Counter("a")
    callstate.load([c], path)
    assert c.n == 7 and callstate.read(path)[KEY] == {"n": 7}


def test_read_and_load_take_a_framework_checkpoint_directory(tmp_path: Path) -> None:
    """A Hugging Face checkpoint-N directory is read through the callbacks.callstate inside it."""
    directory = _hf_dir(tmp_path)
    assert callstate.read(directory) == {KEY: {"n": 5}}
    c = Counter("a")
    callstate.load([c], directory)
    assert c.n == 5 and [e.key for e in callstate.inspect(directory)] == [KEY]


def test_refusals_say_what_the_file_is_and_which_call_reads_it(tmp_path: Path) -> None:
    """A callstate file given to the Lightning reader, a torch checkpoint given to the callstate file
    reader, and a directory without callbacks.callstate each say what they are and what reads them."""
    cs = tmp_path / "x.callstate"
    callstate.save([_counted(1)], cs)
    with pytest.raises(callstate.CorruptCheckpointError, match=r"is a callstate file.*callstate.load"):
        callstate.lightning.restore([Counter("a")], cs)
    ckpt = _lightning_ckpt(tmp_path / "last.ckpt")
    with pytest.raises(callstate.CorruptCheckpointError, match=r"is a torch checkpoint.*callstate.load"):
        distributed.load([Counter("a")], ckpt)
    with pytest.raises(callstate.CorruptCheckpointError, match=r"directory without callbacks.callstate"):
        callstate.read(tmp_path)


def test_load_of_a_number_says_which_path_types_it_takes() -> None:
    """callstate.load(reg, 123) is a typed error naming the accepted path types."""
    with pytest.raises(callstate.errors.PathTypeError, match=r"path \(str or os.PathLike\).*got int") as err:
        callstate.load([Counter("a")], 123)  # type: ignore[arg-type]
    assert isinstance(err.value, TypeError) and err.value.got is int


def test_a_single_process_framework_checkpoint_has_no_manifest_and_resumes(tmp_path: Path) -> None:
    """A world of one without per-rank states writes no callstate:distributed entry, and a later
    restore (any world size) still finds the states."""
    directory = _hf_dir(tmp_path, n=9)
    names = [e.key for e in callstate.inspect(directory / "callbacks.callstate")]
    assert names == [KEY]
    c = Counter("a")
    distributed.load([c], directory / "callbacks.callstate")
    assert c.n == 9


def test_read_hides_a_manifest_that_records_nothing(tmp_path: Path) -> None:
    """An older single-process file's manifest (world of one, no per-rank keys) is not returned as a state."""
    path = tmp_path / "old.callstate"
    manifest = {"layout": 1, "world_size": 1, "per_rank": []}
    callstate.save({KEY: {"n": 1}, distributed.MANIFEST_KEY: manifest}, path)
    assert callstate.read(path) == {KEY: {"n": 1}}


def _cli(capsys: pytest.CaptureFixture[str], *args: str | os.PathLike[str]) -> tuple[int, str, str]:
    code = main([os.fspath(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_inspect_finds_the_file_in_a_checkpoint_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """callstate inspect/verify out/checkpoint-12 read its callbacks.callstate."""
    directory = _hf_dir(tmp_path)
    code, out, err = _cli(capsys, "inspect", directory)
    assert code == 0 and "callbacks.callstate: callstate file, 1 entry" in out, err
    assert _cli(capsys, "verify", directory)[0] == 0


def test_cli_inspect_parses_per_rank_keys_and_names_callstate_entries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Per-rank rows show class, identity and rank apart; the manifest is shown as callstate's."""
    path = tmp_path / "ranks.callstate"
    manifest = {"layout": 1, "world_size": 2, "per_rank": [KEY]}
    states = {f"{KEY}@rank0": {"n": 1}, f"{KEY}@rank1": {"n": 2}, distributed.MANIFEST_KEY: manifest}
    callstate.save(states, path)
    _code, out, _ = _cli(capsys, "inspect", "--json", path)
    rows = {r["key"]: r for r in json.loads(out)["entries"]}
    one = rows[f"{KEY}@rank1"]
    assert (one["class"], one["identity"], one["rank"]) == ("Counter", {"name": "a"}, 1)
    assert rows[distributed.MANIFEST_KEY]["class"] == "(callstate)"
    _code, out, _ = _cli(capsys, "inspect", path)
    assert "RANK" in out.splitlines()[1]


def test_cli_verify_of_a_text_file_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """verify on a file that is no checkpoint exits 2 with an error: line, as on a directory."""
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    code, _, err = _cli(capsys, "verify", text)
    assert code == 2 and err.startswith("callstate: error:") and "neither a callstate file" in err


def test_cli_diff_shows_old_and_new_tensor_scalars(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """diff shows a one-element tensor's old -> new value."""
    a, b = tmp_path / "a.ckpt", tmp_path / "b.ckpt"
    torch_save({"callbacks": {KEY: {"best": torch.tensor(0.5)}}}, a)
    torch_save({"callbacks": {KEY: {"best": torch.tensor(0.25)}}}, b)
    code, out, _ = _cli(capsys, "diff", a, b)
    assert code == 1 and "tensor(0.5) -> tensor(0.25)" in out


def test_cli_migrate_rewrites_the_states_inside_a_lightning_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """callstate migrate on a .ckpt migrates its callback states in place, the rest of it kept."""

    key = "Migrated{'name': 'a'}"
    path = tmp_path / "last.ckpt"
    weights = {"w": torch.ones(2)}
    torch_save({"pytorch-lightning_version": "2.4.0", "state_dict": weights, "callbacks": {key: {"n": 3}}}, path)
    code, out, err = _cli(capsys, "migrate", path)
    assert code == 0, err
    assert "migrated" in out and "from version 1 to 2" in out
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["callbacks"][key] == {"total": 3}
    assert checkpoint["callstate:versions"] == {key: 2}
    assert torch.equal(checkpoint["state_dict"]["w"], torch.ones(2))
