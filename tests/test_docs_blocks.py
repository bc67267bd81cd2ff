"""Every Python code block of the README and of docs/ runs as written.

The blocks of one file run in order, in one namespace and one fresh directory, as a reader would
paste them reading from the top; each section (from one heading to the next) is one test. A block that shows only a fragment says so on the line
before it, ``<!-- fragment: why -->``, and is not run; a section whose blocks a dedicated test runs
(with more checks) says ``<!-- tested-by: tests/test_x.py -->`` before its first block. Either
marker without its reason, or naming a test file that does not exist, fails.
"""

from __future__ import annotations

import importlib.util
import re
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from callstate.errors import MissingDependencyError

ROOT = Path(__file__).resolve().parents[1]
_HEADING = re.compile(r"^(#{1,4}) (.+)$")
_MARKER = re.compile(r"^<!-- (fragment|tested-by):\s*(.*?)\s*-->$")
_TOP_IMPORT = re.compile(r"^(?:import|from) (\w+)", re.MULTILINE)


class Block(NamedTuple):
    line: int  # 1-based line of the block's first code line
    code: str
    marker: tuple[str, str] | None  # (kind, reason) of the marker on the line before, if any


class Section(NamedTuple):
    source: Path
    title: str
    blocks: list[Block]


def _sections(path: Path) -> list[Section]:
    """The sections of ``path`` that hold at least one ```python block."""
    sections: list[Section] = []
    title, blocks = "(top)", []
    lines = path.read_text(encoding="utf-8").split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            if line.strip() == "```python":
                before = lines[i - 1] if i else ""
                found = _MARKER.match(before)
                blocks.append(Block(i + 2, "\n".join(lines[i + 1 : end]) + "\n", found.groups() if found else None))
            i = end + 1
            continue
        heading = _HEADING.match(line)
        if heading:
            if blocks:
                sections.append(Section(path, title, blocks))
            title, blocks = heading.group(2), []
        i += 1
    if blocks:
        sections.append(Section(path, title, blocks))
    return sections


def _all_sections() -> list[Section]:
    sources = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [s for source in sources if source.exists() for s in _sections(source)]


SECTIONS = _all_sections()


def _id(section: Section) -> str:
    return f"{section.source.relative_to(ROOT)}::{section.title}"


def test_every_marker_says_why() -> None:
    """Each fragment marker gives its reason, each tested-by marker names an existing test file."""
    problems = []
    for section in SECTIONS:
        for block in section.blocks:
            if block.marker is None:
                continue
            kind, reason = block.marker
            if not reason:
                problems.append(f"{_id(section)} line {block.line}: {kind} marker without a reason")
            elif kind == "tested-by" and not (ROOT / reason).is_file():
                problems.append(f"{_id(section)} line {block.line}: {reason} does not exist")
    assert problems == []


def test_blocks_are_found() -> None:
    """The extraction finds the README's and the guides' blocks (a broken parser must not make every test pass)."""
    assert sum(len(s.blocks) for s in SECTIONS if s.source.name == "README.md") >= 2
    assert sum(len(s.blocks) for s in SECTIONS if s.source.parent.name == "guide") >= 10


_NAMESPACES: dict[Path, dict[str, Any]] = {}
_DIRECTORIES: dict[Path, Path] = {}
# The optional packages a block may import (the core suite runs without them), and, per file, the one
# an earlier section lacked: the later sections build on its names, so they are skipped too.
_OPTIONAL = {"numpy", "torch", "lightning", "transformers", "accelerate", "ignite", "torchtnt", "jax", "keras",
             "orbax", "fsspec", "s3fs"}
_LACKING: dict[Path, str] = {}


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except ImportError:  # a finder that refuses the name (tests/test_without_optional.py blocks them so)
        return False


def _skip_for(source: Path, package: str) -> None:
    _LACKING.setdefault(source, package)
    pytest.importorskip(package)  # skips, saying "could not import 'package'" (a failure with --require-all)


@pytest.mark.parametrize("section", SECTIONS, ids=_id)
def test_section_runs(
    section: Section, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The section's blocks run in order, in the namespace and directory the file's earlier blocks left."""
    if section.blocks[0].marker is not None and section.blocks[0].marker[0] == "tested-by":
        pytest.skip(f"run by {section.blocks[0].marker[1]}, with more checks")
    runnable = [b for b in section.blocks if b.marker is None]
    if not runnable:
        pytest.skip("every block of the section is a marked fragment")
    source = section.source
    if source in _LACKING:
        pytest.skip(f"needs {_LACKING[source]} (an earlier section of {source.name}, whose names this one uses, does)")
    for name in sorted({n for b in runnable for n in _TOP_IMPORT.findall(b.code)} & _OPTIONAL):
        if not _installed(name):
            _skip_for(source, name)
    if source not in _DIRECTORIES:
        _DIRECTORIES[source] = tmp_path_factory.mktemp(source.stem.lower())
        _NAMESPACES[source] = {"__name__": f"docs_{source.stem.lower()}"}
    monkeypatch.chdir(_DIRECTORIES[source])
    namespace = _NAMESPACES[source]
    with warnings.catch_warnings():
        # A block may show a warning on purpose (a partial restore); it must not fail the run.
        from callstate import CallstateWarning

        warnings.simplefilter("default", CallstateWarning)
        # The distributed blocks run here in one process, without a process group, which DCP notes.
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        for block in runnable:
            where = f"{section.source}:{block.line}"
            try:
                exec(compile("\n" * (block.line - 1) + block.code, where, "exec"), namespace)
            except MissingDependencyError as exc:  # a package callstate imports for the block (fsspec for a URL)
                if exc.name not in _OPTIONAL or _installed(exc.name):
                    raise
                _skip_for(source, exc.name)


def test_no_prose_line_starts_a_blockquote() -> None:
    """No line of the README or docs/ outside a code block starts with '>': Markdown would render it as a quote (">= 2.0" did)."""
    found = []
    for source in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        fenced = False
        for number, line in enumerate(source.read_text(encoding="utf-8").split("\n"), 1):
            if line.startswith("```"):
                fenced = not fenced
            elif not fenced and line.lstrip().startswith(">"):
                found.append(f"{source.relative_to(ROOT)}:{number}: {line}")
    assert found == []
