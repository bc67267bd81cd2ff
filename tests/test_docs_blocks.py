"""Every Python code block of the README and of docs/ runs as written.

The blocks of one file run in order, in one namespace and one fresh directory, as a reader would
paste them reading from the top; each section (from one heading to the next) is one test. A block that shows only a fragment says so on the line
before it, ``<!-- fragment: why -->``, and is not run; a section whose blocks a dedicated test runs
(with more checks) says ``<!-- tested-by: tests/test_x.py -->`` before its first block. Either
marker without its reason, or naming a test file that does not exist, fails.

Warnings are errors: a block that warns says so in its prose and is marked on the line before it,
``<!-- warns: CallstateWarning Restore was partial -->`` (the warning's class, then text of its
message); it must give that warning, and no other.
"""

from __future__ import annotations

import builtins
import importlib.util
import re
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import pytest

import callstate.errors
from callstate.errors import MissingDependencyError

ROOT = Path(__file__).resolve().parents[1]
_HEADING = re.compile(r"^(#{1,4}) (.+)$")
_MARKER = re.compile(r"^<!-- (fragment|tested-by|warns):\s*(.*?)\s*-->$")
_TOP_IMPORT = re.compile(r"^(?:import|from) (\w+)", re.MULTILINE)


class Block(NamedTuple):
    line: int  # 1-based line of the block's first code line
    code: str
    marker: tuple[str, str] | None  # (kind, reason) of the marker on the line before, if any
    prose: str = ""  # the text between the previous block (or heading) and this one


class Section(NamedTuple):
    source: Path
    title: str
    blocks: list[Block]


def _sections(path: Path) -> list[Section]:
    """The sections of ``path`` that hold at least one ```python block."""
    sections: list[Section] = []
    title, blocks = "(top)", []
    lines = path.read_text(encoding="utf-8").split("\n")
    i = prose_start = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            if line.strip() == "```python":
                before = lines[i - 1] if i else ""
                found = _MARKER.match(before)
                prose = "\n".join(lines[prose_start:i])
                code = "\n".join(lines[i + 1 : end]) + "\n"
                blocks.append(Block(i + 2, code, found.groups() if found else None, prose))
            i = prose_start = end + 1
            continue
        heading = _HEADING.match(line)
        if heading:
            if blocks:
                sections.append(Section(path, title, blocks))
            title, blocks = heading.group(2), []
            prose_start = i + 1
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
            elif kind == "warns":
                problems.extend(f"{_id(section)} line {block.line}: {p}" for p in _warns_problems(block))
    assert problems == []


def _expected_warning(block: Block) -> tuple[type[Warning], str] | None:
    """The warning class and message text a block's ``warns`` marker names, or None without one."""
    if block.marker is None or block.marker[0] != "warns":
        return None
    name, _, text = block.marker[1].partition(" ")
    found = getattr(callstate.errors, name, None) or getattr(builtins, name, None)
    if not (isinstance(found, type) and issubclass(found, Warning)):
        raise LookupError(f"warns marker: {name!r} is not a warning class of callstate.errors or builtins")
    return found, text


def _warns_problems(block: Block) -> list[str]:
    """What is wrong with a block's ``warns`` marker: an unknown class, no message text, prose silent."""
    try:
        expected = _expected_warning(block)
    except LookupError as exc:
        return [str(exc)]
    assert expected is not None
    problems = []
    if not expected[1]:
        problems.append("warns marker without the text of the message")
    said = (block.prose + block.code).lower()
    if "warn" not in said:
        problems.append("the block warns, and neither it nor the prose before it says so")
    return problems


def run_blocks(blocks: list[Block], namespace: dict[str, Any], source: Path) -> None:
    """Run ``blocks`` in ``namespace`` with every warning an error, but the one a block's marker names.

    A marked block must give its warning (of that class, its message containing the marker's text),
    and gives no other.
    """
    for block in blocks:
        code = compile("\n" * (block.line - 1) + block.code, f"{source}:{block.line}", "exec")
        expected = _expected_warning(block)
        with warnings.catch_warnings(record=expected is not None) as caught:
            warnings.simplefilter("error")
            if expected is not None:
                warnings.simplefilter("always")
            try:
                exec(code, namespace)
            except MissingDependencyError as exc:  # a package callstate imports for the block (fsspec for a URL)
                if exc.name not in _OPTIONAL or _installed(exc.name):
                    raise
                _skip_for(source, exc.name)
        if expected is None:
            continue
        category, text = expected
        assert caught, f"{source}:{block.line} is marked as giving a {category.__name__}, and gave none"
        for w in caught:
            assert issubclass(w.category, category) and text in str(w.message), (
                f"{source}:{block.line} gave {w.category.__name__}: {str(w.message)[:300]}, "
                f"not the {category.__name__} ({text!r}) its marker names"
            )


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
    runnable = [b for b in section.blocks if b.marker is None or b.marker[0] == "warns"]
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
    run_blocks(runnable, _NAMESPACES[source], source)


def test_a_block_that_warns_fails_unless_marked_and_a_marked_one_must_warn(tmp_path: Path) -> None:
    """run_blocks: an unmarked block's warning is an error; a marked block must give its warning and no other."""
    warn = "import warnings, callstate\nwarnings.warn(callstate.CallstateWarning('Restore was partial.'))\n"
    marked = ("warns", "CallstateWarning Restore was partial")
    with pytest.raises(callstate.errors.CallstateWarning, match="Restore was partial"):
        run_blocks([Block(1, warn, None, "")], {}, tmp_path / "page.md")
    run_blocks([Block(1, warn, marked, "It warns.")], {}, tmp_path / "page.md")
    with pytest.raises(AssertionError, match="gave none"):
        run_blocks([Block(1, "x = 1\n", marked, "It warns.")], {}, tmp_path / "page.md")
    other = "import warnings\nwarnings.warn(UserWarning('something else'))\n" + warn
    with pytest.raises(AssertionError, match="gave UserWarning: something else"):
        run_blocks([Block(1, other, marked, "It warns.")], {}, tmp_path / "page.md")
    assert _warns_problems(Block(1, "restore()\n", marked, "Nothing said.")) == [
        "the block warns, and neither it nor the prose before it says so"
    ]
    assert _warns_problems(Block(1, warn, ("warns", "NoSuchWarning text"), "It warns.")) == [
        "warns marker: 'NoSuchWarning' is not a warning class of callstate.errors or builtins"
    ]


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
