"""Tests for the callstate command, run as real subprocesses against real files."""

from __future__ import annotations

import argparse
import json
import os
import pty
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

import callstate

COUNTER_E, COUNTER_B = "Counter{'what': 'epochs'}", "Counter{'what': 'batches'}"
EARLY = "EarlyStopping{'monitor': 'train_loss', 'mode': 'min'}"
SCRIPT = Path(sys.executable).parent / "callstate"


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "callstate", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,  # generous: the machine running the suite may be very busy
        cwd=cwd,
    )


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """Assert stderr is exactly one line, from callstate, without a traceback; return it."""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {proc.stderr!r}"
    assert lines[0].startswith("callstate: ") and "Traceback" not in proc.stderr, lines[0]
    return lines[0]


LIGHTNING_SCRIPT = textwrap.dedent(
    """
    import sys, warnings
    warnings.simplefilter("ignore")
    import torch, lightning.pytorch as pl
    from lightning.pytorch.callbacks import EarlyStopping
    import callstate

    @callstate.stateful(identity=("what",))
    class Counter(pl.Callback):
        def __init__(self, what):
            self.what = what
            self.state = {"epochs": 0, "batches": 0}
        def on_train_epoch_end(self, *args):
            if self.what == "epochs":
                self.state["epochs"] += 1
        def on_train_batch_end(self, *args):
            if self.what == "batches":
                self.state["batches"] += 1
        def state_dict(self):
            return self.state.copy()
        def load_state_dict(self, state):
            self.state.update(state)

    class Model(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)
        def training_step(self, batch, index):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.layer(x), y)
            self.log("train_loss", loss)
            return loss
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32, 4), torch.randn(32, 1))
    trainer = pl.Trainer(
        max_epochs=2, callbacks=[Counter("epochs"), Counter("batches"), EarlyStopping("train_loss")],
        logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        default_root_dir=sys.argv[1], accelerator="cpu",
    )
    trainer.fit(Model(), torch.utils.data.DataLoader(data, batch_size=8))
    trainer.save_checkpoint(sys.argv[1] + "/model.ckpt")
    """
)


@pytest.fixture(scope="module")
def lightning_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint written by a real Lightning Trainer.fit (two Counters and an EarlyStopping)."""
    pytest.importorskip("lightning.pytorch")  # the one Lightning namespace the script below uses
    where = tmp_path_factory.mktemp("lightning")
    script = where / "make_ckpt.py"
    script.write_text(LIGHTNING_SCRIPT)
    subprocess.run([sys.executable, str(script), str(where)], check=True, capture_output=True, timeout=300)
    return where / "model.ckpt"


def _states() -> dict[str, Any]:
    return {
        COUNTER_E: {"epochs": 2, "batches": 0},
        COUNTER_B: {"epochs": 0, "batches": 8},
        "EMA{'decay': 0.9}": {"shadow": {"w": torch.arange(4.0)}, "updates": 3},
    }


@pytest.fixture
def cs_file(tmp_path: Path) -> Path:
    """A callstate file with two Counters and an EMA holding a tensor."""
    path = tmp_path / "cbs.callstate"
    callstate.save(_states(), path, meta={"note": "kept"})
    return path


def _payload_offset(path: Path, key: str) -> int:
    """Return the offset of the first payload byte of ``key`` in a callstate file (from its index)."""
    data = path.read_bytes()
    index_offset, index_len = struct.unpack("<QQ", data[-32:-16])
    index = json.loads(data[index_offset : index_offset + index_len])
    return next(entry[2] for entry in index["entries"] if entry[0] == key)


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@callstate.stateful(identity=("what",))
class Counter:
    """The callback of the Lightning script, without Lightning."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.state: dict[str, Any] = {}

    def state_dict(self) -> dict[str, Any]:
        return dict(self.state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = dict(state)


# -- the command itself ---------------------------------------------------------------------------


def test_help_documents_every_command_and_the_exit_codes() -> None:
    """--help lists the five commands and the exit statuses; the console script says the same."""
    proc = run("--help")
    assert proc.returncode == 0
    for word in ("inspect", "diff", "verify", "rename", "convert", "exit status:", "--trusted"):
        assert word in proc.stdout, word
    for line in ("0  success", "1  diff: the files differ", "2  usage error"):
        assert line in proc.stdout, line
    script = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert script.returncode == 0 and script.stdout == proc.stdout


def test_subcommand_help_points_to_the_exit_codes_and_explains_its_arguments() -> None:
    """Each command's --help names its options and file arguments, and points to callstate --help for
    the exit statuses instead of repeating them."""
    proc = run("verify", "--help")
    assert proc.returncode == 0 and "--trusted" in proc.stdout
    assert "exit status:" not in proc.stdout and "callstate --help" in proc.stdout
    assert "torch checkpoint" in proc.stdout.split("positional arguments:")[1]


@pytest.mark.parametrize(
    "args",
    [("bogus",), ("inspect",), ("rename", "x", "y"), ("diff", "a"), ()],
    ids=["unknown-command", "missing-file", "missing-new", "missing-b", "no-command"],
)
def test_usage_errors_exit_2_with_one_line(args: tuple[str, ...]) -> None:
    """A command-line mistake exits 2 with one line on stderr (no command: the help on stderr)."""
    proc = run(*args)
    assert proc.returncode == 2, proc
    if args:
        assert "see: callstate" in one_error_line(proc)
    else:
        assert proc.stdout == "" and "usage: callstate" in proc.stderr


@pytest.mark.parametrize("command", ["inspect", "verify"])
def test_missing_file_is_one_line_exit_2(tmp_path: Path, command: str) -> None:
    """A path that does not exist is reported on one line, exit 2."""
    proc = run(command, tmp_path / "nope.callstate")
    assert proc.returncode == 2
    assert one_error_line(proc) == f"callstate: error: {tmp_path / 'nope.callstate'}: no such file"


def test_a_file_of_another_kind_is_refused_on_one_line(tmp_path: Path) -> None:
    """A file that is neither a callstate file nor a torch checkpoint exits 2, saying so."""
    path = tmp_path / "notes.txt"
    path.write_text("hello world")
    proc = run("inspect", path)
    assert proc.returncode == 2
    assert "neither a callstate file nor a torch checkpoint" in one_error_line(proc)


# -- inspect --------------------------------------------------------------------------------------


def test_inspect_callstate_file_shows_class_identity_codec_size_and_checksum(cs_file: Path) -> None:
    """inspect prints one row per entry with the parsed class and identity fields."""
    proc = run("inspect", cs_file)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"{cs_file}: callstate file, 3 entries"
    assert lines[1].split() == ["CLASS", "IDENTITY", "CODEC", "SIZE", "CHECKSUM", "KEY"]
    infos = {i.key: i for i in callstate.inspect(cs_file)}
    row = next(line for line in lines if line.endswith(COUNTER_B))
    assert row.split()[:3] == ["Counter", "what='batches'", "data"], row
    assert f"{infos[COUNTER_B].checksum} ok" in row
    assert len(lines) == 5


def test_inspect_json_is_machine_readable(cs_file: Path) -> None:
    """--json gives key, class, identity, codec, size, checksum and ok for each entry."""
    proc = run("inspect", "--json", cs_file)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["format"] == "callstate" and out["file"] == str(cs_file)
    infos = {i.key: i for i in callstate.inspect(cs_file)}
    assert [e["key"] for e in out["entries"]] == list(infos)
    ema = out["entries"][2]
    assert ema["class"] == "EMA" and ema["identity"] == {"decay": 0.9}
    assert ema["codec"] == infos[ema["key"]].codec and ema["size"] == infos[ema["key"]].size
    assert ema["checksum"] == infos[ema["key"]].checksum and ema["ok"] is True


@pytest.mark.slow
def test_inspect_lightning_checkpoint_lists_its_callbacks(lightning_ckpt: Path) -> None:
    """inspect reads the 'callbacks' of a checkpoint written by a real Trainer, without unpickling."""
    proc = run("inspect", "--json", lightning_ckpt)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["format"] == "torch"
    by_key = {e["key"]: e for e in out["entries"]}
    assert set(by_key) == {COUNTER_E, COUNTER_B, EARLY}
    assert by_key[EARLY]["class"] == "EarlyStopping"
    assert by_key[EARLY]["identity"] == {"monitor": "train_loss", "mode": "min"}
    assert all(e["ok"] and e["codec"] == "torch" and e["size"] > 0 for e in out["entries"])
    table = run("inspect", lightning_ckpt)
    assert table.stdout.splitlines()[0] == f"{lightning_ckpt}: torch checkpoint, 3 entries"


def test_inspect_marks_a_damaged_entry_bad(cs_file: Path) -> None:
    """A flipped payload byte shows as BAD in the table and ok=false in JSON; others stay ok."""
    _flip(cs_file, _payload_offset(cs_file, COUNTER_B) + 3)
    proc = run("inspect", cs_file)
    assert proc.returncode == 0
    assert "1 damaged" in proc.stdout.splitlines()[0]
    row = next(line for line in proc.stdout.splitlines() if line.endswith(COUNTER_B))
    assert " BAD " in row
    entries = json.loads(run("inspect", "--json", cs_file).stdout)["entries"]
    assert [e["ok"] for e in entries] == [True, False, True]


def test_inspect_of_a_file_with_a_broken_header_is_one_line_exit_2(cs_file: Path) -> None:
    """A damaged header cannot be listed: exit 2, one line naming the file."""
    _flip(cs_file, 10)
    proc = run("inspect", cs_file)
    assert proc.returncode == 2
    assert f"{cs_file}: the header checksum does not match" in one_error_line(proc)


# -- verify ---------------------------------------------------------------------------------------


def test_verify_intact_file_exits_0(cs_file: Path) -> None:
    """verify of an intact file says every checksum matches."""
    proc = run("verify", cs_file)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{cs_file}: 3 entries, every checksum matches\n"


def test_verify_names_the_damaged_entry_and_exits_1(cs_file: Path) -> None:
    """verify exits 1 and names exactly the entry whose bytes changed."""
    _flip(cs_file, _payload_offset(cs_file, "EMA{'decay': 0.9}") + 5)
    proc = run("verify", cs_file)
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert "1 of 3 entries do not match their checksums" in line and "\"EMA{'decay': 0.9}\"" in line
    assert COUNTER_E not in line


def test_verify_truncated_file_exits_1(cs_file: Path) -> None:
    """A truncated file fails verification with one line."""
    cs_file.write_bytes(cs_file.read_bytes()[:-7])
    proc = run("verify", cs_file)
    assert proc.returncode == 1
    assert "truncated" in one_error_line(proc)


def _damage_zip_record(path: Path, record_suffix: str, out: Path) -> None:
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(record_suffix))
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    data[info.header_offset + 30 + name_len + extra_len] ^= 0xFF
    out.write_bytes(bytes(data))


@pytest.mark.slow
def test_verify_lightning_checkpoint_names_the_callback_whose_tensor_is_damaged(
    lightning_ckpt: Path, tmp_path: Path
) -> None:
    """A damaged tensor record of EarlyStopping's state fails verify naming EarlyStopping's key."""
    assert run("verify", lightning_ckpt).returncode == 0
    raw = torch.load(lightning_ckpt, weights_only=True)
    best = raw["callbacks"][EARLY]["best_score"]
    assert isinstance(best, torch.Tensor)
    with zipfile.ZipFile(lightning_ckpt) as zf:
        records = [n for n in zf.namelist() if "/data/" in n]
    target = None
    for name in records:
        with zipfile.ZipFile(lightning_ckpt) as zf:
            if zf.read(name) == best.numpy().tobytes() and zf.getinfo(name).file_size == best.nbytes:
                target = name
    assert target is not None, "found the record holding EarlyStopping's best_score"
    damaged = tmp_path / "damaged.ckpt"
    _damage_zip_record(lightning_ckpt, target, damaged)
    proc = run("verify", damaged)
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert "1 of 3 entries do not match" in line and EARLY in line
    assert torch.load(damaged, weights_only=True)["callbacks"][EARLY]["best_score"] != best, (
        "torch.load alone does not notice"
    )


@pytest.mark.slow
def test_damaged_model_weights_fail_verify_and_show_in_inspect(lightning_ckpt: Path, tmp_path: Path) -> None:
    """A damaged record outside 'callbacks' (the model's weights) fails verify and is named by inspect."""
    weight = torch.load(lightning_ckpt, weights_only=True)["state_dict"]["layer.weight"]
    with zipfile.ZipFile(lightning_ckpt) as zf:
        target = next(n for n in zf.namelist() if "/data/" in n and zf.read(n) == weight.numpy().tobytes())
    damaged = tmp_path / "damaged.ckpt"
    _damage_zip_record(lightning_ckpt, target, damaged)
    proc = run("verify", damaged)
    assert proc.returncode == 1
    assert f"record(s) {target} outside 'callbacks'" in one_error_line(proc)
    listed = run("inspect", "--json", damaged)
    assert listed.returncode == 0, listed.stderr
    out = json.loads(listed.stdout)
    assert out["damaged_records_outside_callbacks"] == [target]
    assert all(e["ok"] for e in out["entries"]), "the callbacks' own states are intact"


# -- diff -----------------------------------------------------------------------------------------


def test_diff_of_identical_states_exits_0(cs_file: Path, tmp_path: Path) -> None:
    """Two files with equal states are the same (exit 0), even written separately."""
    other = tmp_path / "other.callstate"
    callstate.save(_states(), other)
    proc = run("diff", cs_file, other)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "same: 3 entries, equal states\n"


@pytest.mark.slow
def test_diff_lists_keys_only_in_each_and_the_differing_fields(cs_file: Path, tmp_path: Path) -> None:
    """diff names keys only in A, only in B, and the fields that differ; exit 1."""
    states = _states()
    del states[COUNTER_E]
    states["Timer"] = {"seconds": 1.5}
    states[COUNTER_B]["batches"] = 9
    states["EMA{'decay': 0.9}"]["shadow"]["w"] = torch.tensor([0.0, 1.0, 2.0, 3.5])
    other = tmp_path / "other.callstate"
    callstate.save(states, other)
    proc = run("diff", cs_file, other)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.splitlines() == [
        f"only in {cs_file}: {COUNTER_E!r}",
        f"only in {other}: 'Timer'",
        f"differ: {COUNTER_B!r}: batches (8 -> 9)",
        "differ: \"EMA{'decay': 0.9}\": shadow['w']",
        f"1 only in {cs_file}, 1 only in {other}, 2 differ, 0 same",
    ]


def test_diff_is_safe_by_default_and_trusted_opts_in(tmp_path: Path) -> None:
    """Pickled states (a type the data codec does not write) are not decoded unless --trusted; then compared."""
    a, b = tmp_path / "a.callstate", tmp_path / "b.callstate"
    with pytest.warns(callstate.PickledStateWarning):
        callstate.save({"ns": argparse.Namespace(lr=0.1, steps=3)}, a)
        callstate.save({"ns": argparse.Namespace(lr=0.2, steps=3)}, b)
    proc = run("diff", a, b)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "argparse.Namespace" in line and "nothing was run" in line and "--trusted" in line
    trusted = run("diff", "--trusted", a, b)
    assert trusted.returncode == 1, trusted.stderr
    assert trusted.stdout.splitlines()[0] == "differ: 'ns': lr (0.1 -> 0.2)"


@pytest.fixture(scope="module")
def converted(lightning_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Lightning checkpoint's callbacks, converted to a callstate file by the command."""
    out = tmp_path_factory.mktemp("converted") / "cbs.callstate"
    conv = run("convert", lightning_ckpt, out)
    assert conv.returncode == 0, conv.stderr
    assert conv.stdout == f"{out}: callstate file with 3 callback state(s) from {lightning_ckpt}\n"
    return out


@pytest.mark.slow
def test_convert_lightning_checkpoint_keeps_every_state(lightning_ckpt: Path, converted: Path) -> None:
    """The converted file holds the checkpoint's callback states, in order, tensors exactly."""
    raw = torch.load(lightning_ckpt, weights_only=True)["callbacks"]
    read = callstate.read(converted)
    assert list(read) == list(raw)
    assert read[COUNTER_B] == raw[COUNTER_B] == {"epochs": 0, "batches": 8}
    assert torch.equal(read[EARLY]["best_score"], raw[EARLY]["best_score"])


@pytest.mark.slow
def test_diff_lightning_checkpoint_against_its_conversion_is_the_same(
    lightning_ckpt: Path, converted: Path
) -> None:
    """diff compares a Lightning checkpoint with a callstate file: the same states, exit 0."""
    proc = run("diff", lightning_ckpt, converted)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "same: 3 entries, equal states\n"


# -- rename ---------------------------------------------------------------------------------------


def test_rename_changes_only_the_key_and_keeps_payload_bytes_order_and_metadata(cs_file: Path) -> None:
    """rename replaces the key in place; every payload byte, the order and the metadata are kept."""
    before = callstate.read(cs_file, lazy=True)
    new = "Counter{'what': 'steps'}"
    proc = run("rename", cs_file, COUNTER_B, new)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{cs_file}: renamed {COUNTER_B!r} to {new!r}\n"
    after = callstate.read(cs_file, lazy=True)
    assert list(after) == [COUNTER_E, new, "EMA{'decay': 0.9}"]
    assert after[new] == before[COUNTER_B], "same codec, checksum and bytes"
    assert after[COUNTER_E] == before[COUNTER_E]
    from callstate._io._files import read_meta

    assert read_meta(cs_file) == {"note": "kept"}
    assert run("verify", cs_file).returncode == 0
    assert [p.name for p in cs_file.parent.iterdir()] == [cs_file.name], "no temporary file left"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("Counter{'what': 'batchs'}", "X", "no entry \"Counter{'what': 'batchs'}\". Closest: "),
        (COUNTER_B, COUNTER_E, "exists already"),
        (COUNTER_B, COUNTER_B, "are the same key"),
        (COUNTER_B, "callstate:versions", "callstate's own entry"),
        (COUNTER_B, "callstate:distributed", "callstate's own entry"),
        ("callstate:versions", "X", "callstate's own entry"),
    ],
    ids=["missing-old", "new-exists", "same", "to-versions", "to-manifest", "from-versions"],
)
def test_rename_refuses_and_leaves_the_file_untouched(
    cs_file: Path, old: str, new: str, message: str
) -> None:
    """A missing OLD, an existing NEW, NEW == OLD or a reserved key exits 2 on one line; the file is unchanged."""
    before = cs_file.read_bytes()
    proc = run("rename", cs_file, old, new)
    assert proc.returncode == 2
    assert message in one_error_line(proc)
    assert cs_file.read_bytes() == before


@pytest.mark.slow
def test_rename_in_a_lightning_checkpoint_keeps_everything_else(lightning_ckpt: Path, tmp_path: Path) -> None:
    """rename works on a Lightning checkpoint: the key changes, the weights and states do not."""
    path = tmp_path / "model.ckpt"
    path.write_bytes(lightning_ckpt.read_bytes())
    proc = run("rename", path, COUNTER_E, "Counter{'what': 'epoch'}")
    assert proc.returncode == 0, proc.stderr
    before = torch.load(lightning_ckpt, weights_only=True)
    after = torch.load(path, weights_only=True)
    assert list(after["callbacks"]) == ["Counter{'what': 'epoch'}", COUNTER_B, EARLY]
    assert after["callbacks"]["Counter{'what': 'epoch'}"] == before["callbacks"][COUNTER_E]
    assert set(after) == set(before)
    for name, tensor in before["state_dict"].items():
        assert torch.equal(after["state_dict"][name], tensor), name


# -- convert --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_convert_callstate_file_to_a_torch_checkpoint_and_back(cs_file: Path, tmp_path: Path) -> None:
    """convert writes {'callbacks': states} with torch.save, and back again, losslessly."""
    ckpt, back = tmp_path / "cbs.ckpt", tmp_path / "back.callstate"
    proc = run("convert", cs_file, ckpt)
    assert proc.returncode == 0, proc.stderr
    raw = torch.load(ckpt, weights_only=True)
    assert list(raw) == ["callbacks"] and list(raw["callbacks"]) == list(_states())
    assert torch.equal(raw["callbacks"]["EMA{'decay': 0.9}"]["shadow"]["w"], torch.arange(4.0))
    assert run("convert", ckpt, back).returncode == 0
    assert run("diff", cs_file, back).returncode == 0


@pytest.mark.slow
def test_convert_refuses_to_overwrite_without_force(cs_file: Path, tmp_path: Path) -> None:
    """An existing OUT is kept unless --force is given."""
    out = tmp_path / "out.ckpt"
    out.write_bytes(b"precious")
    proc = run("convert", cs_file, out)
    assert proc.returncode == 2 and "pass --force" in one_error_line(proc)
    assert out.read_bytes() == b"precious"
    assert run("convert", "--force", cs_file, out).returncode == 0
    assert list(torch.load(out, weights_only=True)) == ["callbacks"]


@pytest.mark.slow
def test_convert_a_torch_checkpoint_with_unsafe_states_needs_trusted(tmp_path: Path) -> None:
    """torch checkpoints are read with weights_only=True unless --trusted."""
    ckpt = tmp_path / "x.ckpt"
    torch.save({"callbacks": {"ns": argparse.Namespace(a=1)}}, ckpt)
    proc = run("convert", ckpt, tmp_path / "x.callstate")
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "argparse.Namespace" in line and "--trusted" in line
    assert not (tmp_path / "x.callstate").exists()


@pytest.mark.slow
def test_convert_a_torch_file_without_callbacks_is_an_error(tmp_path: Path) -> None:
    """A torch file that is not a checkpoint with 'callbacks' is refused on one line."""
    ckpt = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, ckpt)
    proc = run("convert", ckpt, tmp_path / "x.callstate")
    assert proc.returncode == 2
    assert "without a 'callbacks' entry" in one_error_line(proc)


@pytest.mark.parametrize("command", ["verify", "inspect"])
def test_checking_a_torch_file_without_callbacks_is_an_error(tmp_path: Path, command: str) -> None:
    """verify and inspect of a sound torch file with no 'callbacks' exit 2 (the wrong file), listing its entries."""
    ckpt = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, ckpt)
    proc = run(command, ckpt)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert line.startswith("callstate: error: ") and "without a 'callbacks' entry (its entries: ['state_dict'])" in line


@pytest.mark.slow
def test_converted_lightning_states_restore_into_fresh_callbacks(converted: Path) -> None:
    """A callstate file converted from a Lightning checkpoint restores a registry strictly."""
    out = converted

    registry = callstate.CallbackRegistry([Counter("batches"), Counter("epochs")])
    registry.register(Counter("x"), key=EARLY)
    report = callstate.load(registry, out, strict=True)
    assert set(report.restored) == {COUNTER_B, COUNTER_E, EARLY}
    assert registry[COUNTER_E].state == {"epochs": 2, "batches": 0}  # type: ignore[attr-defined]


# -- progress -------------------------------------------------------------------------------------


def _big_file(path: Path) -> None:
    chunk = 5 * 1024 * 1024
    callstate.save({f"Blob{{'i': {i}}}": {"data": bytes([i]) * chunk} for i in range(4)}, path)


def _run_with_terminal_stderr(*args: str | Path) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run the command with stderr on a pseudo-terminal; return the result and what it drew there."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "callstate", *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=slave,
            text=True,
            timeout=120,
        )
        os.close(slave)
        slave = -1
        chunks = []
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the terminal is closed and drained
                break
            if not data:
                break
            chunks.append(data)
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    return proc, b"".join(chunks).decode()


def test_progress_is_drawn_on_a_terminal_for_a_large_file(tmp_path: Path) -> None:
    """verify of a 20 MiB file draws a percentage on stderr when stderr is a terminal, then erases it."""
    path = tmp_path / "big.callstate"
    _big_file(path)
    proc, drawn = _run_with_terminal_stderr("verify", path)
    assert proc.returncode == 0
    assert f"verifying {path}:" in drawn and "100% (20.0 MiB of 20.0 MiB)" in drawn, drawn
    assert drawn.endswith("\r\x1b[K"), "the progress line is erased at the end"
    assert proc.stdout == f"{path}: 4 entries, every checksum matches\n"


@pytest.mark.slow
def test_a_long_single_write_shows_elapsed_time_on_a_terminal(tmp_path: Path) -> None:
    """convert of a 20 MiB file shows the elapsed time while writing OUT, then erases it."""
    path, out = tmp_path / "big.callstate", tmp_path / "big.ckpt"
    _big_file(path)
    proc, drawn = _run_with_terminal_stderr("convert", path, out)
    assert proc.returncode == 0, drawn
    assert f"\rwriting {out} (20.0 MiB): " in drawn and drawn.endswith(" s\r\x1b[K"), drawn
    assert len(torch.load(out, weights_only=True)["callbacks"]) == 4


def test_no_progress_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    """Piped stderr stays empty: progress is for terminals only."""
    path = tmp_path / "big.callstate"
    _big_file(path)
    proc = run("verify", path)
    assert proc.returncode == 0 and proc.stderr == ""


# -- diff of large shared states ------------------------------------------------------------------


def _dag(levels: int, leaf: float) -> list[Any]:
    node: list[Any] = [leaf]
    for _ in range(levels):
        node = [node, node]
    return node


def test_diff_of_shared_dags_compares_each_object_once(tmp_path: Path) -> None:
    """Two files of under 1 KB holding 40-level shared DAGs (2**40 paths) are diffed in seconds, each difference once."""
    import time

    a, b = tmp_path / "a.callstate", tmp_path / "b.callstate"
    callstate.save({"k": _dag(40, 1.0)}, a)
    callstate.save({"k": _dag(40, 2.0)}, b)
    assert a.stat().st_size < 1024
    started = time.perf_counter()
    proc = run("diff", a, b)
    assert time.perf_counter() - started < 60
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.splitlines()[0] == "differ: 'k': " + "[0]" * 40 + "[0] (1.0 -> 2.0)"


def test_inspect_shows_a_class_key_by_the_class_name(tmp_path: Path) -> None:
    """A state keyed by a class (Lightning < 1.5) is shown in CLASS by the class's name, its key in full."""
    from lightning.pytorch.callbacks import EarlyStopping

    path = tmp_path / "old.ckpt"
    torch.save({"callbacks": {EarlyStopping: {"wait_count": 1}}, "pytorch-lightning_version": "1.4.0"}, path)
    proc = run("inspect", path)
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if "early_stopping" in line)
    assert row.split()[0] == "EarlyStopping", row
    assert "<class lightning.pytorch.callbacks.early_stopping.EarlyStopping>" in row


@pytest.mark.parametrize("command", ["inspect", "verify"])
@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_what_is_not_a_regular_file_is_refused_at_once_with_exit_2(tmp_path: Path, command: str, kind: str) -> None:
    """A FIFO (it used to hang), a directory or a device named like a checkpoint: one line, exit 2, at once."""
    import os

    path = tmp_path / "run.ckpt"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        path = Path("/dev/zero")
    proc = run(command, path)
    assert proc.returncode == 2, proc
    assert "not a regular file" in one_error_line(proc)
    if kind == "directory":  # the way out is the file inside, not a pipe read into bytes
        assert "the checkpoint file in it" in one_error_line(proc) and "pipe" not in one_error_line(proc)


def test_version_is_the_installed_metadata() -> None:
    """`callstate --version` prints the version pip installed (the package metadata)."""
    from importlib.metadata import version

    proc = subprocess.run(
        [sys.executable, "-m", "callstate", "--version"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"callstate {version('callstate')} (codec: {callstate.codec_implementation()})"


# -- diff within bounds (issue 22) ----------------------------------------------------------------

_CAPPED = r"""
import re, resource, runpy, sys
size = int(re.search(r"^VmSize:\s+(\d+) kB", open("/proc/self/status").read(), re.M).group(1)) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + (1 << 30), resource.getrlimit(resource.RLIMIT_AS)[1]))
sys.argv = ["callstate", *sys.argv[1:]]
runpy.run_module("callstate", run_name="__main__")
"""


def run_capped(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the callstate command with 1 GiB of address space beyond its start; a hang fails the test at ``timeout``."""
    try:
        return subprocess.run(
            [sys.executable, "-c", _CAPPED, *map(str, args)], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"callstate {' '.join(map(str, args))} did not end in {timeout} s")


def test_diff_of_a_deque_of_a_shared_dag_ends(tmp_path: Path) -> None:
    """Two ~500-byte files holding a deque of a 40-level shared-list DAG are diffed at once, the difference named once."""
    import collections

    a, b = tmp_path / "a.callstate", tmp_path / "b.callstate"
    callstate.save({"k": collections.deque([_dag(40, 1.0)])}, a)
    callstate.save({"k": collections.deque([_dag(40, 2.0)])}, b)
    assert a.stat().st_size < 1024
    proc = run_capped("diff", a, b)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.splitlines()[0] == "differ: 'k': " + "[0]" * 42 + " (1.0 -> 2.0)"


def test_diff_of_big_ints_shows_their_sizes(tmp_path: Path) -> None:
    """A differing 32,000-bit int (its repr raises) is shown by its size, exit 1, no internal error."""
    a, b = tmp_path / "a.callstate", tmp_path / "b.callstate"
    callstate.save({"k": {"x": 2**32000}}, a)
    callstate.save({"k": {"x": 2**32001}}, b)
    proc = run_capped("diff", a, b)
    assert (proc.returncode, proc.stderr) == (1, "")
    assert proc.stdout.splitlines()[0] == "differ: 'k': x (<int of 32,001 bits> -> <int of 32,002 bits>)"


def test_diff_of_complex32_tensors(tmp_path: Path) -> None:
    """complex32 tensors (torch.equal has no kernel for them) compare: the same ones exit 0, others exit 1 naming the field."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "ComplexHalf support is experimental", UserWarning)
        w = torch.tensor([1 + 2j, complex(float("nan"), 0)]).to(torch.complex32)
        paths = [tmp_path / f"{n}.callstate" for n in "abc"]
        callstate.save({"k": {"w": w}}, paths[0])
        callstate.save({"k": {"w": w.clone()}}, paths[1])
        callstate.save({"k": {"w": torch.zeros(2, dtype=torch.complex32)}}, paths[2])
    same = run_capped("diff", paths[0], paths[1])
    assert same.returncode == 0 and "internal error" not in same.stderr, same.stderr
    assert same.stdout == "same: 1 entry, equal states\n"
    differ = run_capped("diff", paths[0], paths[2])
    assert differ.returncode == 1 and "internal error" not in differ.stderr, differ.stderr
    assert differ.stdout.splitlines()[0] == "differ: 'k': w"


def _zero_unit_file(path: Path, value: int) -> None:
    """A callstate file whose one entry is a numpy array of dtype <m8[0Y], written by hand (every checksum right)."""
    import io
    import zlib

    from callstate._encoding import _format

    name = b"<m8[0Y]"
    stream = b"A" + bytes([len(name)]) + name + b"\x01" + struct.pack("<Q", 1) + b"\x00" + b"\x00"
    stream += struct.pack("<Q", 8) + struct.pack("<q", value)
    out = io.BytesIO()
    _format.write_container(out, [("k", "data", (stream,), zlib.crc32(stream), {})], {})
    path.write_bytes(out.getvalue())


def test_diff_of_zero_unit_datetime_arrays_is_a_typed_error(tmp_path: Path) -> None:
    """Files holding a [0Y] datetime array (numpy cannot compare it) are refused as damaged, exit 2, not an internal error."""
    a, b = tmp_path / "a.callstate", tmp_path / "b.callstate"
    _zero_unit_file(a, 0)
    _zero_unit_file(b, 1)  # other bytes: decoded to be compared
    proc = run_capped("diff", a, b)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "internal error" not in line and str(a) in line and "multiplied by 0" in line, line


@pytest.mark.slow
def test_diff_past_its_steps_stops_with_one_error_line(tmp_path: Path) -> None:
    """States shared differently in two 100 KB files (width**3 pairs to compare) stop within the steps their sizes allow: exit 2, one line."""
    width, levels = 60, 5
    sides = []
    for rotate in (False, True):
        below: list[Any] = [[0.0] for _ in range(width)]
        for _ in range(levels):
            below = [[below[(t + (j if rotate else 0)) % width] for t in range(width)] for j in range(width)]
        sides.append(below)
    a, b = tmp_path / "a.callstate", tmp_path / "b.callstate"
    callstate.save({"k": sides[0]}, a)
    callstate.save({"k": sides[1]}, b)
    assert a.stat().st_size + b.stat().st_size < 300_000
    proc = run_capped("diff", a, b, timeout=120)
    assert proc.returncode == 2, proc
    line = one_error_line(proc)
    assert f"{a} and {b}: comparing the states of 'k' stopped at [" in line, line
    assert "Compare the two states in Python" in line and proc.stdout == ""
