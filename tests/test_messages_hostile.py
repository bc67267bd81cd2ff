"""Hostile values in every message, warning and line of CLI output: bounded and escaped, typed errors.

Files are built with callstate's and torch's own writers around crafted keys and values (control
characters that would erase a line and draw a fake row, 10 MB keys, 36,000-bit ints, 40-level shared
lists), and read through every public path: the library calls in a child process with a time and
address-space cap, the command line in a subprocess with a timeout. Each output must hold no raw
control character (but the newlines that end the lines the tool prints), stay short, and end in a
typed error or exit status 1 or 2 with one line of error, never "internal error".
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

import callstate
from callstate._core._keys import MANIFEST_KEY

torch = pytest.importorskip("torch")

# Each case starts Python with torch in a subprocess or two: seconds each.
pytestmark = pytest.mark.slow

# Erases its line, draws a fake "ok" row, rings the bell, retitles the window, reverses the text.
KEY = "Evil\r\x1b[2KEarlyStopping  -  data  2 B  ok\x07\x1b]0;pwned\x07\n\u202efake row\x9b\x7f"
BIG_KEY = "Big\x1b[2K" + "x" * 10_000_000
HEX_IDENTITY = "Counter{'what': 0x" + "f" * 9_000 + "}"
BIG_INT = 2**36_000
_UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ud800-\udfff\ufeff]")
TIMEOUT = 120

_CHILD = r"""
import json, re, resource, sys, time
import torch, callstate
from callstate._torch._torch_io import torch_load

torch.set_num_threads(1)
code = sys.argv[1]
# Torch before the cap and the clock, as the code may reach it lazily (loop, distributed); an adapter
# only when the code names it (Lightning's import alone takes seconds).
for name in ("distributed", "lightning", "loop", "transformers"):
    if f"callstate.{name}" in code:
        __import__(f"callstate.{name}")
size = int(re.search(r"^VmSize:\s+(\d+) kB", open("/proc/self/status").read(), re.M).group(1)) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + (1 << 30), resource.getrlimit(resource.RLIMIT_AS)[1]))
start = time.perf_counter()
try:
    exec(code, {"callstate": callstate, "torch_load": torch_load, "path": sys.argv[2]})
    result = {"ok": True}
except BaseException as exc:
    result = {"type": type(exc).__name__, "callstate": isinstance(exc, callstate.CallstateError),
              "message": str(exc), "key": str(getattr(exc, "key", None))[:100], "path": getattr(exc, "path", None)}
result["seconds"] = time.perf_counter() - start
print(json.dumps(result))
"""


def _clean(text: str) -> None:
    """Assert ``text`` holds no raw control or bidirectional character, newlines apart."""
    found = _UNSAFE.search(text)
    assert found is None, f"raw {found.group()!r} at {found.start()}: {text[max(0, found.start() - 60):][:160]!r}"


def child(code: str, path: Path) -> dict[str, Any]:
    """Run ``code`` (with ``path`` bound) in a capped child process; return its outcome."""
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", _CHILD, code, str(path)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result: dict[str, Any] = json.loads(proc.stdout)
    if "message" in result:
        _clean(result["message"])
        assert len(result["message"]) < 5_000
    return result


def cli(*args: object) -> subprocess.CompletedProcess[str]:
    """Run the ``callstate`` command; assert it ends in time, cleanly, never in an internal error."""
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-m", "callstate", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode in (0, 1, 2), proc.stderr[-2000:]
    assert "internal error" not in proc.stderr, proc.stderr[:2000]
    _clean(proc.stdout)
    _clean(proc.stderr)
    if proc.returncode and proc.stderr:
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("callstate: "), proc.stderr[:2000]
    return proc


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A callstate file whose keys draw on the terminal, run to 10 MB, or hold a 36,000-bit identity."""
    path = tmp_path_factory.mktemp("hostile") / "hostile.callstate"
    callstate.save({KEY: 1, BIG_KEY: 2, HEX_IDENTITY: 3}, path)
    return path


def test_inspect_shows_every_key_escaped_and_bounded(hostile: Path) -> None:
    """inspect's table shows each hostile key escaped on its own row, bounded; --json carries them whole."""
    proc = cli("inspect", hostile)
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert len(lines) == 5  # the summary, the header, one row per entry: no row drawn by a key
    assert len(proc.stdout) < 5_000
    assert "\\x1b[2KEarlyStopping" in proc.stdout and "<int of 36,000 bits>" in proc.stdout
    listed = cli("inspect", "--json", hostile)
    keys = [e["key"] for e in json.loads(listed.stdout)["entries"]]
    assert keys == [KEY, BIG_KEY, HEX_IDENTITY]


def test_verify_diff_rename_convert_migrate_escape_keys(hostile: Path, tmp_path: Path) -> None:
    """verify, diff, rename, convert and migrate show hostile keys escaped and bounded."""
    assert cli("verify", hostile).returncode == 0
    other = tmp_path / "other.callstate"
    callstate.save({KEY: 2, "plain": 1}, other)
    diff = cli("diff", hostile, other)
    assert diff.returncode == 1 and len(diff.stdout) < 5_000
    assert diff.stdout.count("\n") == 5  # two only in the first, one only in the second, one differs, totals
    rename = cli("rename", hostile, KEY[:-1], "new")
    assert rename.returncode == 2 and "no entry" in rename.stderr
    converted = tmp_path / "converted.pt"
    assert cli("convert", hostile, converted).returncode == 0
    assert cli("migrate", "--dry-run", "--import", "json", hostile).returncode == 0


def test_torch_checkpoint_with_huge_int_keys_and_versions(tmp_path: Path) -> None:
    """A torch checkpoint keyed by a 36,000-bit int, or versioned so, is shown bounded or refused typed."""
    keyed = tmp_path / "keyed.pt"
    torch.save({"callbacks": {BIG_INT: {"x": 1}, KEY: {}, (BIG_INT, KEY): 1}}, keyed)
    shown = cli("inspect", keyed)
    assert shown.returncode == 0 and "<int of 36,001 bits>" in shown.stdout and len(shown.stdout) < 5_000
    assert cli("verify", keyed).returncode == 0
    # torch.load(weights_only=True) refuses such an int (LONG4): a one-line error.
    assert cli("convert", keyed, tmp_path / "out.callstate").returncode == 2
    other = tmp_path / "other.pt"
    torch.save({"callbacks": {KEY: {"x": 2}}}, other)
    assert cli("diff", keyed, other).returncode == 2
    versioned = tmp_path / "versioned.pt"
    torch.save({"callbacks": {KEY: {}}, "callstate:versions": {KEY: BIG_INT}}, versioned)
    for command in ("inspect", "verify"):
        proc = cli(command, versioned)
        assert proc.returncode in (1, 2) and "<int of 36,001 bits>" in proc.stderr
    for code in (
        "callstate.lightning.read_callback_states(path)",
        "callstate.loop.load_checkpoint(path, [])",
    ):
        result = child(code, versioned)
        assert result["callstate"] and result["type"] == "CorruptCheckpointError", result
        assert result["seconds"] < 10


def test_a_mismatch_message_lists_hostile_keys_bounded(hostile: Path) -> None:
    """A strict load naming unclaimed hostile keys raises a short StateMismatchError, keys escaped."""
    result = child("callstate.load([], path, strict=True)", hostile)
    assert result["type"] == "StateMismatchError" and result["callstate"]
    assert "\\x1b[2KEarlyStopping" in result["message"]


@pytest.mark.parametrize(
    ("manifest", "shown"),
    [
        ("L = []\nfor _ in range(40): L = [L, L]\nm = {'layout': 1, 'world_size': 2, 'per_rank': L}", "[["),
        ("m = {'layout': 2**32000, 'world_size': 2, 'per_rank': []}", "<int of 32,001 bits>"),
        ("m = {'layout': 1, 'world_size': 2**32000, 'per_rank': []}", "<int of 32,001 bits>"),
    ],
    ids=["shared-list", "huge-layout", "huge-world-size"],
)
def test_a_hostile_manifest_is_refused_at_once(manifest: str, shown: str, tmp_path: Path) -> None:
    """A per-rank manifest of a 40-level shared list or a 32,000-bit int: a CorruptCheckpointError at once."""
    path = tmp_path / "ranks.callstate"
    code = f"{manifest}\ncallstate.save({{{MANIFEST_KEY!r}: m}}, path)\n"
    assert child(code, path).get("ok"), "the manifest could not be written"
    assert path.stat().st_size < 6_000
    result = child("callstate.distributed.load([], path)", path)
    assert result["type"] == "CorruptCheckpointError", result
    assert result["key"] == MANIFEST_KEY and result["path"] == str(path)
    assert shown in result["message"] and result["seconds"] < 10


def _zip_with_member(path: Path, member: str) -> Path:
    """A torch checkpoint with one more member, compressed (torch.save never does), named ``member``."""
    torch.save({"callbacks": {}}, path)  # its members are in the folder "member/"
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr(zipfile.ZipInfo(member), b"x" * 100, compress_type=zipfile.ZIP_DEFLATED)
    return path


def test_zip_member_names_are_escaped(tmp_path: Path) -> None:
    """A zip member named with control characters is escaped in the CorruptCheckpointError and the CLI."""
    path = _zip_with_member(tmp_path / "member.pt", "member/\x1b[2Kfake\r\n")
    for command in ("inspect", "verify"):
        proc = cli(command, path)
        assert proc.returncode in (1, 2) and "\\x1b[2Kfake\\r\\n" in proc.stderr
    for code in ("torch_load(path, trusted=False)", "callstate.lightning.read_callback_states(path)"):
        result = child(code, path)
        assert result["type"] == "CorruptCheckpointError" and "\\x1b[2Kfake" in result["message"]


def test_the_hugging_face_adapter_shows_a_hostile_state_bounded() -> None:
    """The Hugging Face adapter's message about an unknown saved state is bounded for a shared-list DAG."""
    code = (
        "from callstate.transformers import _Exported\n"
        "class CB:\n"
        "    def state(self): return {'args': {}, 'attributes': {'a': 1}}\n"
        "L = []\nfor _ in range(40): L = [L, L]\n"
        "_Exported(CB()).load_state_dict({'\\x1b[2Kb': L})\n"
    )
    pytest.importorskip("transformers")
    result = child(code, Path("unused"))
    assert result["type"] == "ValueError" and "\\x1b[2Kb" in result["message"] and result["seconds"] < 10


def test_file_names_are_escaped_in_every_command(tmp_path: Path) -> None:
    """A file named to erase a line, retitle the terminal and draw a fake status shows escaped in every command's output."""
    name = tmp_path / "ok.callstate\r\x1b[2K\x1b]0;pwned\x07FAKE: every checksum matches\n.callstate"
    callstate.save({"A": {"x": 1}}, name)
    for args in (
        ("inspect", name),
        ("verify", name),
        ("rename", name, "A", "B"),
        ("convert", name, f"{name}.pt"),
        ("convert", f"{name}.pt", f"{name}.back.callstate"),
        ("migrate", "--import", "json", name),
        ("diff", name, f"{name}.back.callstate"),
    ):
        proc = cli(*args)
        assert proc.returncode in (0, 1), (args, proc.stderr)
        assert proc.stdout, args  # each printed a line naming the file, escaped (cli checks it)


def test_the_progress_line_escapes_the_names_in_its_label() -> None:
    """The progress line, drawn on a terminal for large files, shows a file's name escaped."""
    import io

    from callstate._cli._progress import PROGRESS_MIN_BYTES, Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    progress = Progress("checking a\r\x1b]0;pwned\x07b", PROGRESS_MIN_BYTES, stream=stream)
    progress.update(PROGRESS_MIN_BYTES // 2, force=True)
    drawn = stream.getvalue()
    assert "\\x1b]0;pwned\\x07" in drawn
    _clean(drawn.replace("\r", ""))  # the \r the line itself starts with, to redraw in place
