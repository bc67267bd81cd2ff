"""Trust does not launder: a pickle kept from a file read without trust is refused even with ``trusted=True``.

A pickled entry that no callback claims is kept undecoded and written back by the next save. Where it
is written into another file than the one it came from, and that file was not read with
``trusted=True``, its info records ``{"kept": "<that file>"}``: ``trusted=True`` vouches for the file
being read, not for it, so decoding it needs ``trust_kept=True`` as well. The foreign pickles here
would create a marker file if they ran.
"""

from __future__ import annotations

import array
import json
import pickle
import subprocess
import sys
import warnings
import zlib
from pathlib import Path
from typing import Any

import pytest

import callstate
from callstate._encoding import _format

KEY = "Evil"
# Loading the foreign file into a registry that does not claim its entry is the point of these tests.
pytestmark = pytest.mark.filterwarnings("ignore:Restore was partial:callstate.CallstateWarning")


class _Marker:
    """Pickles as a call that creates the file ``path`` (exclusive): whether it ran shows on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "x"))


def foreign_file(path: Path, marker: Path, *, info: dict[str, str] | None = None) -> Path:
    """Write a callstate file whose one entry is a pickle that creates ``marker`` when unpickled."""
    payload = pickle.dumps(_Marker(marker), protocol=5)
    entries = [(KEY, "pickle", (payload,), zlib.crc32(payload), info or {"pickled": "array.array"})]
    with open(path, "wb") as f:
        _format.write_container(f, entries, {})
    return path


@callstate.stateful(state=("value",))
class Evil:
    """A callback that claims the foreign entry's key."""

    def __init__(self) -> None:
        self.value = 0


def test_a_foreign_pickle_kept_and_saved_into_your_file_does_not_run_when_read_trusted(tmp_path: Path) -> None:
    """A pickle kept from a file read untrusted, saved into one's own file, is refused by trusted=True there."""
    marker = tmp_path / "ran"
    foreign = foreign_file(tmp_path / "foreign.callstate", marker)
    registry = callstate.CallbackRegistry()
    callstate.load(registry, foreign)  # nothing claims it: kept undecoded
    own = tmp_path / "own.callstate"
    callstate.save(registry, own)
    [entry] = callstate.inspect(own)
    assert entry.info["kept"] == str(foreign)
    with pytest.raises(callstate.UnsafeCheckpointError, match="kept undecoded from") as caught:
        callstate.read(own, trusted=True)
    assert (caught.value.key, caught.value.kept_from, caught.value.path) == (KEY, str(foreign), str(own))
    assert "trust_kept=True" in str(caught.value)
    with pytest.raises(callstate.UnsafeCheckpointError):
        callstate.read(own, trusted=True, lazy=True)[KEY].decode()
    with pytest.raises(callstate.UnsafeCheckpointError):
        callstate.load([Evil()], own, trusted=True)
    with pytest.raises(callstate.UnsafeCheckpointError):
        callstate.read(own, trust_kept=True)  # trust_kept alone does not trust the file
    assert not marker.exists()


def test_the_kept_mark_survives_further_saves_and_trusted_reads(tmp_path: Path) -> None:
    """A kept mark stays through a trusted load and a save to a third file, still naming the first source."""
    marker = tmp_path / "ran"
    foreign = foreign_file(tmp_path / "foreign.callstate", marker)
    registry = callstate.CallbackRegistry()
    callstate.load(registry, foreign)
    callstate.save(registry, tmp_path / "own.callstate")
    again = callstate.CallbackRegistry()
    callstate.load(again, tmp_path / "own.callstate", trusted=True)
    callstate.save_async(again, tmp_path / "third.callstate").result()
    assert callstate.inspect(tmp_path / "third.callstate")[0].info["kept"] == str(foreign)
    with pytest.raises(callstate.UnsafeCheckpointError) as caught:
        callstate.read(tmp_path / "third.callstate", trusted=True)
    assert caught.value.kept_from == str(foreign)
    assert not marker.exists()


def test_a_kept_state_in_plain_form_stays_untrusted_after_a_callstate_file(tmp_path: Path) -> None:
    """A pickle in plain form (as in a .pt or .ckpt), saved into a callstate file, is refused by trusted=True."""
    marker = tmp_path / "ran"
    registry = callstate.CallbackRegistry()
    callstate.load(registry, foreign_file(tmp_path / "foreign.callstate", marker))
    plain = registry.state_dict()[KEY]  # {"callstate:encoded": 1, ...}, as a .pt holds it
    for how, target in {
        "given to save": {KEY: plain},
        "kept by load_state_dict": _loaded({KEY: plain}),
    }.items():
        path = tmp_path / f"{how}.callstate"
        callstate.save(target, path)
        with pytest.raises(callstate.UnsafeCheckpointError) as caught:
            callstate.read(path, trusted=True)
        assert caught.value.kept_from == "<a state_dict>", how
    assert not marker.exists()


def _loaded(states: dict[str, Any]) -> callstate.CallbackRegistry:
    registry = callstate.CallbackRegistry()
    registry.load_state_dict(states)
    return registry


def test_trust_kept_accepts_a_kept_pickle_deliberately_and_saving_makes_it_your_own(tmp_path: Path) -> None:
    """read(trusted=True, trust_kept=True) decodes a kept pickle; saving that writes it unmarked."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", callstate.PickledStateWarning)
        callstate.save({"History": array.array("d", [0.5])}, tmp_path / "colleague.callstate")
    registry = callstate.CallbackRegistry()
    callstate.load(registry, tmp_path / "colleague.callstate")
    own = tmp_path / "own.callstate"
    callstate.save(registry, own)
    with pytest.raises(callstate.UnsafeCheckpointError):
        callstate.read(own, trusted=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", callstate.PickledStateWarning)
        callstate.save(callstate.read(own, trusted=True, trust_kept=True), own)
    assert "kept" not in callstate.inspect(own)[0].info
    assert callstate.read(own, trusted=True) == {"History": array.array("d", [0.5])}


def test_a_pickle_written_back_into_its_own_file_or_read_trusted_is_not_marked(tmp_path: Path) -> None:
    """Saving a kept pickle back to the file it was read from, or from a trusted read, keeps it unmarked."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", callstate.PickledStateWarning)
        callstate.save({"History": array.array("d", [0.5])}, tmp_path / "own.callstate")
    registry = callstate.CallbackRegistry()
    callstate.load(registry, tmp_path / "own.callstate")  # untrusted, the default
    callstate.save(registry, tmp_path / "own.callstate")
    callstate.save(registry, tmp_path / "own.callstate")  # its kept parts still come from the old file
    trusted = callstate.CallbackRegistry()
    callstate.load(trusted, tmp_path / "own.callstate", trusted=True)
    callstate.save(trusted, tmp_path / "copy.callstate")
    for name in ("own.callstate", "copy.callstate"):
        assert callstate.inspect(tmp_path / name)[0].info == {"pickled": "array.array"}, name
        assert callstate.read(tmp_path / name, trusted=True)["History"] == array.array("d", [0.5])


def test_the_kept_mark_fits_an_entry_whose_info_is_full(tmp_path: Path) -> None:
    """An entry with the most info items a file may hold is still marked, and its new file stays readable."""
    marker = tmp_path / "ran"
    full = {f"x{i}": "y" for i in range(16)}
    registry = callstate.CallbackRegistry()
    callstate.load(registry, foreign_file(tmp_path / "foreign.callstate", marker, info=full))
    callstate.save(registry, tmp_path / "own.callstate")
    assert callstate.inspect(tmp_path / "own.callstate")[0].info == {"kept": str(tmp_path / "foreign.callstate")}
    with pytest.raises(callstate.UnsafeCheckpointError):
        callstate.read(tmp_path / "own.callstate", trusted=True)
    assert not marker.exists()


def test_cli_inspect_shows_a_kept_pickle_and_trusted_commands_refuse_it(tmp_path: Path) -> None:
    """callstate inspect marks a kept pickle and names its source; convert --trusted refuses it on one line."""
    marker = tmp_path / "ran"
    registry = callstate.CallbackRegistry()
    callstate.load(registry, foreign_file(tmp_path / "foreign.callstate", marker))
    callstate.save(registry, tmp_path / "own.callstate")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "callstate", *args], capture_output=True, text=True, timeout=300, cwd=tmp_path
        )

    shown = run("inspect", "own.callstate")
    assert shown.returncode == 0, shown.stderr
    assert "pickle (kept)" in shown.stdout
    source = str(tmp_path / "foreign.callstate")
    assert f"Evil: a pickle kept from {source}, which was not read with --trusted" in shown.stdout
    [row] = json.loads(run("inspect", "--json", "own.callstate").stdout)["entries"]
    assert (row["codec"], row["kept"]) == ("pickle (kept)", source)
    refused = run("convert", "--trusted", "own.callstate", "out.pt")
    assert refused.returncode == 2
    assert f"kept undecoded from {source}" in refused.stderr
    assert "trust_kept=True" in refused.stderr and len(refused.stderr.splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "out.pt").exists()
