"""The versions guide's worked example (docs/guide/versions.md) runs as written, and its migrate output is real."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guide"
README = GUIDE / "versions.md"


PAGES = {"When a state changes shape": "versions.md", "Command line": "cli.md"}


def section(title: str) -> str:
    """Return the guide page whose title is ``title``."""
    return (GUIDE / PAGES[title]).read_text(encoding="utf-8")


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", section("When a state changes shape"), flags=re.DOTALL)


def test_the_worked_example_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Version 1 saves, version 3 loads it through both migrations and saves at version 3."""
    blocks = python_blocks()
    assert len(blocks) == 2, "a new block in the section: run it here too"
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "readme_versions"}
    exec(compile(blocks[0], f"{README}:versions block 1", "exec"), namespace)
    assert (tmp_path / "timer.callstate").exists()
    exec(compile(blocks[1], f"{README}:versions block 2", "exec"), namespace)
    assert namespace["report"].migrated == {"Timer{'name': 'epoch'}": (1, 3)}


def test_the_migrate_commands_print_what_the_readme_shows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI guide's callstate migrate session, run on the example's file with its classes as mytimers."""
    blocks = python_blocks()
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], f"{README}:versions block 1", "exec"), {"__name__": "readme_versions"})
    (tmp_path / "mytimers.py").write_text("import callstate\n" + blocks[1].split("\ntimer = Timer(", 1)[0])
    cli = section("Command line").split("`callstate migrate FILE", 1)[1]
    session = re.findall(r"```\n(.*?)```", cli, flags=re.DOTALL)[0]
    commands = re.findall(r"^\$ (callstate .*)\n((?:[^$].*\n)*)", session, flags=re.MULTILINE)
    assert len(commands) == 2
    for command, shown in commands:
        args = command.split()[1:]
        proc = subprocess.run(
            [sys.executable, "-m", "callstate", *args], capture_output=True, text=True, timeout=300, cwd=tmp_path
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == shown, command
