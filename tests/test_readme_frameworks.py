"""The Hugging Face, accelerate and "Other frameworks" guides (docs/guide/) run as written, against the real packages."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

import callstate

# The recipes train with torch: where it is missing (the core suite on other Pythons) there is nothing to run.
pytest.importorskip("torch")

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guide"
PAGES = {"Hugging Face Trainer": "transformers.md", "accelerate": "accelerate.md", "Other frameworks": "other-frameworks.md"}
README = GUIDE
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the Hugging Face example downloads nothing

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::FutureWarning:transformers"),
    # torch.distributed.optim, which ignite imports, scripts functions with the deprecated torch.jit.
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:`torch.jit.interface` is deprecated:DeprecationWarning"),
    # torchtnt 0.2 imports pkg_resources (setuptools < 81 warns that it is deprecated).
    pytest.mark.filterwarnings("ignore:pkg_resources is deprecated:UserWarning"),
    pytest.mark.filterwarnings("ignore:Deprecated call to `pkg_resources:DeprecationWarning"),
    # DCP in a single process, as torchtnt's saver calls it without a process group.
    pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning"),
]


def blocks(heading: str) -> list[str]:
    """Return the ```python blocks of the guide page titled ``heading``."""
    text = (GUIDE / PAGES[heading]).read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def run(block: str, namespace: dict[str, Any], where: str) -> None:
    exec(compile(block, f"{README}:{where}", "exec"), namespace)


def run_section(heading: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Run the section's single block in ``tmp_path``; return the names it defined."""
    (block,) = blocks(heading)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "readme_section"}
    run(block, namespace, heading)
    return namespace


def test_the_hugging_face_section_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Trainer example trains 4 steps, resumes from out/checkpoint-4 and restores every callback."""
    pytest.importorskip("transformers")
    namespace = run_section("Hugging Face Trainer", tmp_path, monkeypatch)
    report = namespace["adapter"].last_report
    assert report is not None and report.missing == () and report.unexpected == ()
    assert any(k.startswith("EarlyStoppingCallback{") for k in report.restored) and "NoiseSchedule" in report.restored
    assert (tmp_path / "out" / "checkpoint-6" / "callbacks.callstate").is_file()


def test_the_accelerate_section_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """save_state writes ckpt/callbacks.callstate; load_state restores the reordered Counters strictly."""
    pytest.importorskip("accelerate")
    namespace = run_section("accelerate", tmp_path, monkeypatch)
    assert namespace["callbacks"].last_report == callstate.RestoreReport(
        restored=("Counter{'what': 'epochs'}", "Counter{'what': 'steps'}")
    )
    namespace["callbacks"].detach()


def test_the_other_frameworks_recipes_run_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Fabric, Ignite and torchtnt recipes save and restore the registry with each real package."""
    try:
        import pkg_resources  # noqa: F401  # torchtnt 0.2 imports it
    except ImportError:
        pytest.fail("torchtnt 0.2 imports pkg_resources, gone since setuptools 81: pip install 'setuptools<81' "
                    "(the test extra pins it, so make test installs it)")
    found = blocks("Other frameworks")
    assert len(found) == 4, "a new block in the section: run it here too"
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "readme_frameworks"}
    run(found[0], namespace, "Other frameworks: the callback")
    for block, name in zip(found[1:], ("Fabric", "Ignite", "torchtnt"), strict=True):
        run(block, namespace, f"Other frameworks: {name}")
    assert (tmp_path / "fabric.ckpt").is_file()
    assert sorted(p.name for p in (tmp_path / "ignite").iterdir()) == ["checkpoint_8.pt"]
    assert namespace["unit"].callbacks.report == callstate.RestoreReport(
        restored=("Counter{'what': 'epochs'}", "Counter{'what': 'steps'}")
    )
