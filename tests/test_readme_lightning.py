"""The Lightning guide (docs/guide/lightning.md) runs as written: its python blocks, in order, in a fresh directory."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from lightning_helpers import LIGHTNING_NOISE, NAMESPACES

import callstate

if "lightning.pytorch" not in NAMESPACES:
    pytest.skip("the README's example imports lightning.pytorch", allow_module_level=True)

README = Path(__file__).resolve().parents[1] / "docs" / "guide" / "lightning.md"

pytestmark = [pytest.mark.filterwarnings(f) for f in LIGHTNING_NOISE]


def lightning_blocks() -> list[str]:
    """Return the ```python blocks of the Lightning guide."""
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)


def _run(block: str, namespace: dict[str, Any], n: int) -> None:
    exec(compile(block, f"{README}:Lightning block {n}", "exec"), namespace)


def test_the_section_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Trainer example fits, resumes from the last.ckpt it wrote; the file functions then read it."""
    blocks = lightning_blocks()
    assert len(blocks) == 2, "a new block in the section: run it here too"
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "readme_lightning"}

    _run(blocks[0], namespace, 1)
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    report = namespace["adapter"].last_report
    assert report is not None and report.missing == () and report.unexpected == ()
    assert "NoiseSchedule{'name': 'input'}" in report.restored

    # The registry holds only the NoiseSchedule: the Trainer's states are kept, and said so, in the
    # guide too (the marker test_docs_blocks checks against its prose).
    assert "<!-- warns: CallstateWarning Restore was partial -->\n```python\n" + blocks[1] in README.read_text(
        encoding="utf-8"
    )
    with pytest.warns(callstate.CallstateWarning, match="Restore was partial"):
        _run(blocks[1], namespace, 2)
    unexpected = namespace["report"].unexpected
    assert len(unexpected) == 3 and set(unexpected) <= set(namespace["registry"].unclaimed)
    assert namespace["registry"]["NoiseSchedule{'name': 'input'}"].scale == 0.5
    assert (tmp_path / "callbacks.callstate").exists() and (tmp_path / "patched.ckpt").exists()
