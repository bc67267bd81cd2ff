"""``callstate migrate`` on real files, run as a subprocess: dry run, in place, --out, every other entry kept."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import callstate

KEY, HALL = "Thermo{'room': 'lab'}", "Thermo{'room': 'hall'}"

# The classes "importable here": version 3 of Thermo and its migrations, as a user's module.
MODULE = textwrap.dedent(
    """
    import callstate

    @callstate.stateful(identity=("room",), state=("kelvin", "readings"), version=3)
    class Thermo:
        def __init__(self, room):
            self.room, self.kelvin, self.readings = room, 0.0, 0

    @callstate.migration(Thermo, from_version=1)
    def to_kelvin(state):
        return {"kelvin": state["celsius"] + 273.15}

    @callstate.migration(Thermo, from_version=2)
    def count_readings(state):
        return {**state, "readings": 0}
    """
)


def run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "callstate", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


@callstate.stateful(identity=("room",), state=("celsius",))
class Thermo:
    """Version 1 of the module's Thermo, as it was when the file was saved."""

    def __init__(self, room: str, celsius: float) -> None:
        self.room, self.celsius = room, celsius


@callstate.stateful(identity=("room",), state=("kelvin",), version=2)
class ThermoV2:
    """Version 2 of the module's Thermo."""

    def __init__(self, room: str, kelvin: float) -> None:
        self.room, self.kelvin = room, kelvin


ThermoV2.__qualname__ = "Thermo"


@pytest.fixture
def old_file(tmp_path: Path) -> Path:
    """A file with a version 1 and a version 2 Thermo, and an entry of a class not versioned here."""
    (tmp_path / "thermo_versions.py").write_text(MODULE)
    path = tmp_path / "old.callstate"
    states = callstate.CallbackRegistry([Thermo("lab", 20.0), ThermoV2("hall", 300.0)]).state_dict()
    callstate.save({**states, "Other": {"x": [1, 2]}}, path, meta={"run": 7})
    return path


def entries(path: Path) -> dict[str, Any]:
    """Return key -> (codec, checksum, payload bytes, info) of every entry, undecoded."""
    return {
        k: (v.codec, v.checksum, [bytes(p) for p in v.parts], dict(v.info))
        for k, v in callstate.read(path, lazy=True).items()
    }


def test_dry_run_lists_what_would_change_and_writes_nothing(old_file: Path, tmp_path: Path) -> None:
    """--dry-run names each state and its versions; the file is byte for byte as it was."""
    before = old_file.read_bytes()
    proc = run("migrate", old_file.name, "--dry-run", "--import", "thermo_versions", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"old.callstate: would migrate {KEY!r} from version 1 to 3",
        f"old.callstate: would migrate {HALL!r} from version 2 to 3",
    ]
    assert old_file.read_bytes() == before


def test_migrate_rewrites_in_place_keeping_every_other_entry_byte_for_byte(
    old_file: Path, tmp_path: Path
) -> None:
    """In place: the two states at version 3, decoded as the migrations made them; Other and meta kept."""
    before = entries(old_file)
    proc = run("migrate", old_file.name, "--import", "thermo_versions", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"old.callstate: migrated {KEY!r} from version 1 to 3" in proc.stdout
    after = entries(old_file)
    assert after["Other"] == before["Other"]
    assert {i.key: i.version for i in callstate.inspect(old_file)} == {KEY: 3, HALL: 3, "Other": 1}
    assert callstate.read(old_file) == {
        KEY: {"kelvin": 293.15, "readings": 0},
        HALL: {"kelvin": 300.0, "readings": 0},
        "Other": {"x": [1, 2]},
        "callstate:versions": {KEY: 3, HALL: 3},
    }
    from callstate._io._files import read_meta

    assert read_meta(old_file) == {"run": 7}
    again = run("migrate", old_file.name, "--import", "thermo_versions", cwd=tmp_path)
    assert again.returncode == 0 and "nothing to migrate" in again.stdout
    table = run("inspect", old_file.name, cwd=tmp_path)
    assert table.stdout.splitlines()[1].split()[5] == "VERSION"


def test_migrate_to_out_leaves_the_file_and_refuses_an_existing_out(old_file: Path, tmp_path: Path) -> None:
    """--out writes the migrated file there; FILE is unchanged; an existing OUT is refused (exit 2)."""
    before = old_file.read_bytes()
    proc = run("migrate", old_file.name, "--out", "new.callstate", "--import", "thermo_versions", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert old_file.read_bytes() == before
    assert callstate.inspect(tmp_path / "new.callstate")[0].version == 3
    proc = run("migrate", old_file.name, "--out", "new.callstate", "--import", "thermo_versions", cwd=tmp_path)
    assert proc.returncode == 2 and "exists already" in proc.stderr


def test_migrate_without_the_classes_changes_nothing(old_file: Path, tmp_path: Path) -> None:
    """Without --import and no class known here, migrate says it cannot tell (exit 2) and rewrites nothing."""
    before = old_file.read_bytes()
    proc = run("migrate", old_file.name, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "cannot tell whether its states need migrating" in proc.stderr
    assert "'Other'" in proc.stderr and "--import MODULE" in proc.stderr
    assert old_file.read_bytes() == before


def test_migrate_with_imports_that_version_nothing_has_nothing_to_migrate(old_file: Path, tmp_path: Path) -> None:
    """With --import of modules that declare no versions, the entries are at version 1: nothing to migrate, exit 0."""
    before = old_file.read_bytes()
    (tmp_path / "unversioned.py").write_text("X = 1\n")
    proc = run("migrate", old_file.name, "--import", "unversioned", cwd=tmp_path)
    assert proc.returncode == 0 and "nothing to migrate" in proc.stdout, proc.stderr
    assert old_file.read_bytes() == before


def test_migrate_refuses_a_newer_state_and_a_missing_module(old_file: Path, tmp_path: Path) -> None:
    """A state newer than the class here, or an --import that fails: one error line, exit 2, no change."""
    (tmp_path / "thermo_old.py").write_text(
        "import callstate\n"
        "@callstate.stateful(identity=('room',), state=('celsius',), version=1)\n"
        "class Thermo:\n    pass\n"
    )
    before = old_file.read_bytes()
    proc = run("migrate", old_file.name, "--import", "thermo_old", cwd=tmp_path)
    assert proc.returncode == 2
    assert "newer than the version 1" in proc.stderr and len(proc.stderr.splitlines()) == 1
    proc = run("migrate", old_file.name, "--import", "no_such_module_here", cwd=tmp_path)
    assert proc.returncode == 2 and "cannot be imported" in proc.stderr
    assert old_file.read_bytes() == before


def test_rename_and_convert_of_a_lightning_checkpoint_keep_its_versions(tmp_path: Path) -> None:
    """A checkpoint's top-level versions follow a renamed key and go into the converted file's entries."""
    torch = pytest.importorskip("torch")

    path = tmp_path / "model.ckpt"
    torch.save(
        {"callbacks": {KEY: {"kelvin": 1.0}, "Other": {}}, "callstate:versions": {KEY: 2}, "epoch": 1}, path
    )
    shown = run("inspect", "--json", path.name, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert {e["key"]: e["version"] for e in json.loads(shown.stdout)["entries"]} == {KEY: 2, "Other": 1}
    proc = run("rename", path.name, KEY, HALL, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    renamed = torch.load(path, weights_only=True)
    assert renamed["callstate:versions"] == {HALL: 2} and renamed["epoch"] == 1
    proc = run("convert", path.name, "out.callstate", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert {i.key: i.version for i in callstate.inspect(tmp_path / "out.callstate")} == {HALL: 2, "Other": 1}


def test_diff_names_a_changed_version(old_file: Path, tmp_path: Path) -> None:
    """diff reports a state saved at another version as differing, even with the same bytes."""
    proc = run("migrate", old_file.name, "--out", "new.callstate", "--import", "thermo_versions", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    diff = run("diff", old_file.name, "new.callstate", cwd=tmp_path)
    assert diff.returncode == 1
    assert f"differ: {HALL!r}: version (2 -> 3), readings\n" in diff.stdout
    plain = callstate.read(old_file, lazy=True)[KEY].to_plain()
    callstate.save({KEY: plain}, tmp_path / "a.callstate")
    plain["info"] = {"version": "2"}
    callstate.save({KEY: plain}, tmp_path / "b.callstate")
    same_bytes = run("diff", "a.callstate", "b.callstate", cwd=tmp_path)
    assert same_bytes.returncode == 1 and f"differ: {KEY!r}: version (1 -> 2)" in same_bytes.stdout


def test_migrate_refuses_an_entry_under_the_reserved_versions_key(tmp_path: Path) -> None:
    """A crafted entry "callstate:versions" is not dropped silently: the file is refused, unchanged."""
    from callstate._encoding import _format, _writing

    (tmp_path / "thermo_versions.py").write_text(MODULE)
    path = tmp_path / "crafted.callstate"
    encoded = _writing.encode_entries({KEY: {"celsius": 20.0}, "callstate:versions": {"b": 1}})
    with path.open("wb") as out:
        _format.write_container(out, [(*e[:4], {}) for e in encoded], {})
    before = path.read_bytes()
    proc = run("migrate", path.name, "--import", "thermo_versions", cwd=tmp_path)
    assert proc.returncode != 0 and "'callstate:versions'" in proc.stderr and "crafted.callstate" in proc.stderr
    assert path.read_bytes() == before


@pytest.mark.parametrize("source", ["raise RuntimeError('broken user module')\n", "def f(:\n"])
def test_migrate_with_a_module_that_fails_at_import_is_a_usage_error(
    old_file: Path, tmp_path: Path, source: str
) -> None:
    """A module raising (or not compiling) at import: exit 2 naming it and its exception, no 'report it'."""
    (tmp_path / "broken_mod.py").write_text(source)
    before = old_file.read_bytes()
    proc = run("migrate", old_file.name, "--import", "broken_mod", cwd=tmp_path)
    assert proc.returncode == 2 and "--import broken_mod" in proc.stderr
    assert ("RuntimeError: broken user module" in proc.stderr) or ("SyntaxError" in proc.stderr)
    assert "report" not in proc.stderr and old_file.read_bytes() == before


def test_migrate_in_place_through_a_symlink_rewrites_its_target(old_file: Path, tmp_path: Path) -> None:
    """The link stays a link; the file it names is the one migrated."""
    link = tmp_path / "link.callstate"
    link.symlink_to(old_file)
    proc = run("migrate", link.name, "--import", "thermo_versions", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink() and link.resolve() == old_file.resolve()
    assert {i.key: i.version for i in callstate.inspect(old_file)} == {KEY: 3, HALL: 3, "Other": 1}


def test_a_loop_checkpoint_s_versions_entry_is_no_entry_of_inspect_verify_or_convert(tmp_path: Path) -> None:
    """A .pt keeps its versions inside "callbacks": inspect, verify and convert count only the states."""
    torch = pytest.importorskip("torch")

    path = tmp_path / "loop.pt"
    torch.save({"callbacks": {KEY: {"kelvin": 1.0}, "callstate:versions": {KEY: 3}}, "step": 3}, path)
    shown = run("inspect", "--json", path.name, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert {e["key"]: e["version"] for e in json.loads(shown.stdout)["entries"]} == {KEY: 3}
    checked = run("verify", path.name, cwd=tmp_path)
    assert checked.returncode == 0 and "1 entry" in checked.stdout
    proc = run("convert", path.name, "out.callstate", cwd=tmp_path)
    assert proc.returncode == 0 and "with 1 callback state(s)" in proc.stdout
    back = run("convert", "out.callstate", "back.pt", cwd=tmp_path)
    assert back.returncode == 0 and "with 1 callback state(s)" in back.stdout


def test_inspect_and_verify_report_a_malformed_entry_version_as_that_entry_s_damage(tmp_path: Path) -> None:
    """One entry's version is no number: verify exits 1 naming it; inspect lists every entry."""
    path = tmp_path / "v.callstate"
    callstate.save({KEY: {"kelvin": 1.0}, "Other": {"x": 1}}, path)
    plain = callstate.read(path, lazy=True)[KEY].to_plain()
    plain["info"] = {"version": "x"}
    callstate.save({KEY: plain, "Other": {"x": 1}}, path)
    checked = run("verify", path.name, cwd=tmp_path)
    assert checked.returncode == 1 and KEY in checked.stdout + checked.stderr
    shown = run("inspect", "--json", path.name, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert [(e["key"], e["ok"]) for e in json.loads(shown.stdout)["entries"]] == [(KEY, False), ("Other", True)]


# A module that stands for a standard-library or installed one in the directory being migrated: if it
# is ever imported, it leaves a marker file there.
IMPOSTOR = "open(__file__ + '.imported', 'w').close()\n"


@pytest.mark.parametrize("how", ["script", "python -m"])
def test_migrate_import_never_lets_the_directory_shadow_what_callstate_imports(tmp_path: Path, how: str) -> None:
    """A decimal.py and numpy.py beside the file are not imported by migrate --import of another module."""
    import decimal

    np = pytest.importorskip("numpy")
    (tmp_path / "thermo_versions.py").write_text(MODULE)
    for name in ("decimal", "numpy"):
        (tmp_path / f"{name}.py").write_text(IMPOSTOR)
    state = {"celsius": 20.0, "note": decimal.Decimal("1.5"), "trace": np.arange(3.0)}
    callstate.save({KEY: state}, tmp_path / "old.callstate")
    command = [str(Path(sys.executable).parent / "callstate")] if how == "script" else [sys.executable, "-m", "callstate"]
    proc = subprocess.run(
        [*command, "migrate", "old.callstate", "--import", "thermo_versions"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.glob("*.imported")) == []
    assert callstate.read(tmp_path / "old.callstate")[KEY] == {"kelvin": 293.15, "readings": 0}
