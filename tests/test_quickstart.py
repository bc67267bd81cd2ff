"""The quickstart demo runs on its own and prints the restored numbers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parent.parent / "examples" / "quickstart.py"
EPOCHS = "Counter{'what': 'epochs'}"
BATCHES = "Counter{'what': 'batches'}"


def test_quickstart_prints_restored_states(tmp_path: Path) -> None:
    """examples/quickstart.py exits 0 and shows both Counters restored with 2 epochs and 32 batches."""
    out = subprocess.run(
        [sys.executable, "-I", str(DEMO)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    lines = out.stdout.splitlines()
    assert lines[0] == f"keys: [{EPOCHS!r}, {BATCHES!r}]"
    assert f"restored: [{BATCHES!r}, {EPOCHS!r}]" in lines
    assert f"  {EPOCHS}: {{'epochs': 2, 'batches': 0}}" in lines
    assert f"  {BATCHES}: {{'epochs': 0, 'batches': 32}}" in lines
    assert list(tmp_path.iterdir()) == []  # the demo cleans up after itself


def test_quickstart_needs_only_callstate(tmp_path: Path) -> None:
    """The demo imports neither torch, lightning nor numpy."""
    code = (
        "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__'); "
        "print('HEAVY', sorted(m for m in ('torch', 'lightning', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", code, str(DEMO)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "HEAVY []"


def test_readme_shows_the_demo_output_verbatim(tmp_path: Path) -> None:
    """The output block under "`make demo` prints:" in the README is exactly what the demo prints."""
    readme = (DEMO.parent.parent / "README.md").read_text()
    block = readme.split("`make demo` prints:", 1)[1].split("```", 2)[1]
    out = subprocess.run(
        [sys.executable, "-I", str(DEMO)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert block.strip("\n") == out.stdout.strip("\n")
