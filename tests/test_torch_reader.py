"""The inert torch-checkpoint reader: a zip checkpoint's 'callbacks', sizes and records, nothing run."""

from __future__ import annotations

import os
import pickle
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
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
from callstate._torch._torch_reader import MAX_DEPTH, STORAGE_ITEMSIZE, TorchFile
from callstate.lightning import read_callback_states


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
        {
            "callbacks": {"EMA": {"shadow": torch.zeros(1000), "n": 3}, "Timer": {"t": 1.5}},
            "w": torch.ones(4),
        },
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
    with pytest.raises(
        callstate.CorruptCheckpointError, match=r"without archive/data\.pkl is not a torch checkpoint"
    ):
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


# -- bounds: each finding of issue 11, read in a capped child -------------------------------------


def _refused(result: dict[str, Any], match: str) -> None:
    """The child refused the file with a CallstateError whose message has ``match``, in time."""
    assert "death" not in result, f"the child died ({result['death']}):\n{result['stderr']}"
    assert result.get("callstate"), result
    assert match in result["message"], result
    assert result["seconds"] < 5, result


@pytest.mark.slow
def test_a_shared_dag_is_read_in_linear_time(tmp_path: Path) -> None:
    """A 40-level DAG sharing one list twice per level is read in time and memory: each object is walked once."""
    shared: list[Any] = [1]
    for _ in range(40):
        shared = [shared, shared]
    path = checkpoint(tmp_path / "c.ckpt", pickle.dumps({"callbacks": {"k": shared}}, protocol=2))
    result = run_capped("reader", path)
    assert result.get("ok") == ["k"] and result["seconds"] < 5, result


@pytest.mark.slow
def test_a_record_declared_larger_than_the_file_is_refused(tmp_path: Path) -> None:
    """A central directory declaring a 3 GB record the file does not hold is refused, nothing allocated."""
    pkl = callbacks_pickle(text("EMA"), storage("0", 3 * 10**9))
    path = checkpoint(tmp_path / "c.ckpt", pkl, {"0": bytes(16)})
    declare_size(path, "archive/data/0", 3 * 10**9)
    _refused(run_capped("reader", path), "declares 3000000000 bytes, more than the file holds")


@pytest.mark.slow
def test_a_compressed_bomb_is_refused(tmp_path: Path) -> None:
    """A record of 1.5 GB of deflated zeros is refused before anything is decompressed: torch.save never compresses."""
    pkl = callbacks_pickle(text("EMA"), storage("0", 1536 * 2**20))
    path = checkpoint(tmp_path / "c.ckpt", pkl)
    with zipfile.ZipFile(path, "a") as zf:
        info = zipfile.ZipInfo("archive/data/0")
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w", force_zip64=True) as w:
            chunk = bytes(64 * 2**20)
            for _ in range(24):
                w.write(chunk)
    assert path.stat().st_size < 4 * 2**20
    _refused(run_capped("reader", path), "is compressed or encrypted, which torch.save never writes")


@pytest.mark.parametrize("compression", [zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_a_compressed_member_is_refused(tmp_path: Path, compression: int) -> None:
    """Any compressed member is refused with CorruptCheckpointError naming it (torch.save writes them stored)."""
    path = tmp_path / "c.ckpt"
    torch.save({"callbacks": {"k": 1}}, path)
    with zipfile.ZipFile(path) as src:
        members = [(i.filename, src.read(i.filename)) for i in src.infolist()]
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members:
            zf.writestr(name, data)
    with pytest.raises(callstate.CorruptCheckpointError, match=r"c/data\.pkl is compressed") as e:
        TorchFile(str(path))
    assert e.value.path == str(path)


@pytest.mark.slow
def test_a_deep_tuple_key_is_refused_not_a_crash(tmp_path: Path) -> None:
    """A 200,000-deep tuple as a key in 'callbacks' is refused from the opcodes, before CPython hashes it."""
    path = checkpoint(tmp_path / "c.ckpt", callbacks_pickle(deep_tuple(200_000), integer(1)))
    _refused(run_capped("reader", path), f"tuples nested more than {MAX_DEPTH} levels deep")


@pytest.mark.slow
def test_a_deep_list_chain_is_refused(tmp_path: Path) -> None:
    """A 100,000-deep chain of lists (built by appends) is refused by the depth cap, not a RecursionError."""
    chain = b"]" * 100_000 + b"a" * 99_999
    path = checkpoint(tmp_path / "c.ckpt", callbacks_pickle(text("k"), chain))
    _refused(run_capped("reader", path), f"containers nested more than {MAX_DEPTH} levels deep")


@pytest.mark.slow
def test_a_memo_index_beyond_the_pickle_is_refused(tmp_path: Path) -> None:
    """A LONG_BINPUT of index 2**32 - 16 (a 32 GB memo for the C unpickler) is refused from the opcodes."""
    value = b"}r" + struct.pack("<I", 2**32 - 16)
    path = checkpoint(tmp_path / "c.ckpt", callbacks_pickle(text("k"), value))
    _refused(run_capped("reader", path), "memo index 4294967280")


@pytest.mark.parametrize("container", [tuple, list])
def test_nesting_at_the_cap_is_read_and_one_more_level_refused(tmp_path: Path, container: type) -> None:
    """Tuples or lists nested to the cap (counting the checkpoint's two dicts) are read; one more is refused."""
    deep: Any = 1
    for _ in range(MAX_DEPTH - 2):
        deep = container([deep])
    path = tmp_path / "c.ckpt"
    torch.save({"callbacks": {"k": deep}}, path)
    assert list(_read(path).entries) == ["k"]
    torch.save({"callbacks": {"k": container([deep])}}, path)
    with pytest.raises(callstate.CorruptCheckpointError, match=f"nested more than {MAX_DEPTH} levels deep"):
        TorchFile(str(path))


def test_duplicate_member_names_are_refused(tmp_path: Path) -> None:
    """Two members named archive/data.pkl are refused: torch.load reads one, zipfile the other."""
    ours = callbacks_pickle(text("Shown"), integer(1))
    theirs = callbacks_pickle(text("Other"), integer(2))
    path = checkpoint(tmp_path / "c.ckpt", ours, extra=(("archive/data.pkl", theirs),))
    assert list(torch.load(path, weights_only=True)["callbacks"]) == ["Shown"]
    with zipfile.ZipFile(path) as zf:
        assert zf.read("archive/data.pkl") == theirs, "zipfile reads the other one: the differential is real"
    with pytest.raises(
        callstate.CorruptCheckpointError, match=r"several members named \['archive/data.pkl'\]"
    ):
        TorchFile(str(path))


def test_members_outside_the_first_members_folder_are_refused(tmp_path: Path) -> None:
    """The folder is the first member's, as torch.load takes it; a data.pkl in another folder is refused."""
    path = tmp_path / "c.ckpt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("other/data.pkl", callbacks_pickle(text("Other"), integer(1)))
        zf.writestr("other/version", "3\n")
        zf.writestr("archive/data.pkl", callbacks_pickle(text("Mine"), integer(1)))
        zf.writestr("archive/version", "3\n")
    with pytest.raises(RuntimeError, match="not in a subdirectory"):
        torch.load(path, weights_only=True)
    with pytest.raises(callstate.CorruptCheckpointError, match="members outside its folder 'other/'"):
        TorchFile(str(path))


def test_a_checkpoint_without_a_version_record_is_refused(tmp_path: Path) -> None:
    """A zip without archive/version is refused, as torch.load refuses it."""
    path = tmp_path / "c.ckpt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", callbacks_pickle(text("k"), integer(1)))
    with pytest.raises(RuntimeError, match='hasRecord\\("version"\\)'):
        torch.load(path, weights_only=True)
    with pytest.raises(callstate.CorruptCheckpointError, match="without archive/version"):
        TorchFile(str(path))


@pytest.mark.parametrize(
    ("numel", "record", "problem"),
    [(8, 4, "declares 8 bytes but its record holds 4"), (1, None, "has no record")],
)
def test_a_storage_that_its_record_does_not_hold_is_refused(
    tmp_path: Path, numel: int, record: int | None, problem: str
) -> None:
    """A storage larger than its record, or without one, is refused (torch.load refuses both)."""
    records = {} if record is None else {"0": bytes(record)}
    path = checkpoint(tmp_path / "c.ckpt", callbacks_pickle(text("k"), storage("0", numel)), records)
    with pytest.raises(RuntimeError):
        torch.load(path, weights_only=True)
    with pytest.raises(callstate.CorruptCheckpointError, match=problem):
        TorchFile(str(path))


def test_storage_sizes_cover_every_storage_class_torch_names() -> None:
    """Every storage class torch.save can name has its element size in the reader's table."""
    for dtype, name in torch.storage._dtype_to_storage_type_map().items():
        assert STORAGE_ITEMSIZE[name] == torch._utils._element_size(dtype), name
    assert STORAGE_ITEMSIZE["UntypedStorage"] == 1


def test_tensors_of_every_dtype_are_sized(tmp_path: Path) -> None:
    """Tensors of typed and untyped storages (float8, uint16) are read with their data size."""
    path = tmp_path / "c.ckpt"
    states = {
        "a": torch.zeros(5, dtype=torch.float64),
        "b": torch.zeros(5, dtype=torch.uint16),
        "c": torch.zeros(5, dtype=torch.float8_e4m3fn),
    }
    torch.save({"callbacks": {k: {"t": v} for k, v in states.items()}}, path)
    tf = _read(path)
    assert {k: [r.nbytes for r in refs] for k, refs in tf.entries.items()} == {"a": [40], "b": [10], "c": [5]}


# -- agreement with torch.load, on generated checkpoints ------------------------------------------

# What callstate refuses on purpose although torch.load may load it: ambiguous or altered files (torch
# checks no CRC-32 and ignores the local headers' names, zipfile checks both).
_DELIBERATE = (
    "several members named",
    "is compressed or encrypted",
    "its pickle is damaged",
    "a damaged torch checkpoint",
    "has no local header",
)

_leaves = st.one_of(st.integers(-(2**40), 2**40), st.floats(allow_nan=False), st.text(max_size=5), st.none())


@st.composite
def _states(draw: st.DrawFn) -> Any:
    """Nested dicts, lists and tuples with shared parts and small tensors of random sizes and dtypes."""
    pool: list[Any] = []

    def extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(
            st.lists(children, max_size=3),
            st.lists(children, max_size=3).map(tuple),
            st.dictionaries(st.text(max_size=3), children, max_size=3),
        )

    tensors = st.builds(
        lambda n, dtype: torch.arange(n).to(dtype),
        st.integers(0, 40),
        st.sampled_from([torch.float32, torch.float64, torch.int8, torch.uint16, torch.bfloat16]),
    )
    value = draw(st.recursive(st.one_of(_leaves, tensors), extend, max_leaves=12))
    pool.append(value)
    shared = draw(st.lists(st.sampled_from(pool), max_size=3))  # the same object several times
    return {"v": value, "again": shared}


def _mutate(path: Path, how: str, at: float) -> None:
    """Alter a torch.save file: truncate it, flip a byte, compress it or add a second data.pkl."""
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: int(len(data) * at)])
    elif how == "flip":  # in the members, not the zip directory (see the README: zip directory fields)
        with zipfile.ZipFile(path) as zf:
            start_dir = zf.start_dir
        i = int((start_dir - 1) * at)
        path.write_bytes(data[:i] + bytes([data[i] ^ 0x20]) + data[i + 1 :])
    elif how in ("compress", "duplicate"):
        with zipfile.ZipFile(path) as zf:
            members = [(i.filename, zf.read(i.filename)) for i in zf.infolist()]
        kind = zipfile.ZIP_DEFLATED if how == "compress" else zipfile.ZIP_STORED
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the duplicate name
            with zipfile.ZipFile(path, "w", compression=kind) as zf:
                for name, body in members:
                    zf.writestr(name, body)
                    if how == "duplicate" and name.endswith("data.pkl"):
                        zf.writestr(name, pickle.dumps({"callbacks": {"other": 1}}, protocol=2))


def _outcome(call: Any) -> tuple[str, Any]:
    try:
        return "ok", call()
    except callstate.CallstateError as exc:
        return "refused", str(exc)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    callbacks=st.dictionaries(st.text(min_size=1, max_size=8), _states(), max_size=4),
    how=st.sampled_from(["none", "none", "truncate", "flip", "compress", "duplicate"]),
    at=st.floats(0.0, 1.0),
)
def test_inspect_and_read_callback_states_agree_with_torch_load(
    tmp_path: Path, callbacks: dict[str, Any], how: str, at: float
) -> None:
    """On generated checkpoints, TorchFile and read_callback_states list the keys torch.load loads, or refuse."""
    path = tmp_path / "c.ckpt"
    torch.save({"callbacks": callbacks, "state_dict": {"w": torch.ones(3)}}, path)
    _mutate(path, how, at)
    try:
        theirs: Any = ("ok", sorted(torch.load(path, weights_only=True)["callbacks"]))
    except Exception:
        theirs = ("failed", None)
    ours = _outcome(lambda: sorted(_read(path).entries))
    lightning = _outcome(lambda: sorted(read_callback_states(path)))
    if how == "none":
        assert ours == lightning == theirs == ("ok", sorted(callbacks))
    if ours[0] == "ok":
        assert ours == theirs, "what inspect shows is what torch.load loads"
    if lightning[0] == "ok":
        assert lightning == theirs
    if theirs[0] == "ok":
        for side in (ours, lightning):
            assert side == theirs or any(d in side[1] for d in _DELIBERATE), side
