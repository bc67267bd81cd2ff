"""A feature whose optional dependency is missing says which package and how to install it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import callstate
from callstate._support._optional import require


def test_require_returns_the_module() -> None:
    """An installed module is imported and returned."""
    assert require("json", extra="x", needed_for="y") is sys.modules["json"]


def test_a_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing package raises MissingDependencyError, a CallstateError and a ModuleNotFoundError."""
    monkeypatch.setitem(sys.modules, "somepkg", None)
    with pytest.raises(callstate.errors.MissingDependencyError) as e:
        require("somepkg.sub", extra="some", needed_for="the feature")
    assert isinstance(e.value, callstate.CallstateError) and isinstance(e.value, ModuleNotFoundError)
    assert e.value.name == "somepkg" and e.value.extra == "some"
    assert str(e.value) == (
        "the feature needs somepkg, which is not installed here: pip install 'callstate[some]'."
    )


def test_a_missing_torch_points_at_the_cpu_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """For torch the message also says how to get the CPU build instead of a multi-GB CUDA one."""
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(callstate.errors.MissingDependencyError, match=r"callstate\[torch\].*CPU build"):
        require("torch", extra="torch", needed_for="x")


def test_a_broken_installed_package_is_not_reported_as_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A package that is installed but imports something missing raises that error unchanged."""
    (tmp_path / "brokenpkg.py").write_text("import no_such_module_here\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as e:
        require("brokenpkg", extra="b", needed_for="x")
    assert not isinstance(e.value, callstate.CallstateError)
    assert e.value.name == "no_such_module_here"


def test_checkpoint_functions_without_torch(tmp_path: Path) -> None:
    """save_checkpoint and load_checkpoint to a .pt file without torch raise the clear error."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None  # as if torch were not installed
        import callstate
        from callstate.loop import load_checkpoint, save_checkpoint
        for call in (lambda: save_checkpoint({str(tmp_path / "x.pt")!r}, []),
                     lambda: load_checkpoint({str(tmp_path / "x.pt")!r}, [])):
            try:
                call()
            except callstate.errors.MissingDependencyError as exc:
                print(type(exc).__name__, exc)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2
    assert "writing the torch checkpoint" in lines[0] and "x.pt" in lines[0] and "callstate[torch]" in lines[0]
    assert "reading the torch checkpoint" in lines[1] and "callstate[torch]" in lines[1]


def test_a_file_with_arrays_read_without_numpy_names_the_entry_and_the_extra(tmp_path: Path) -> None:
    """Reading a numpy array where numpy is missing is MissingDependencyError naming the entry, not 'damaged'."""
    pytest.importorskip("numpy")
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        import callstate
        data = callstate.dumps({"k": {"a": np.arange(3)}, "plain": {"n": 1}})
        for name in [m for m in sys.modules if m == "numpy" or m.startswith("numpy.")]:
            del sys.modules[name]
        sys.modules["numpy"] = None  # as if numpy were not installed
        print([i.ok for i in callstate.inspect(data)])  # inspecting decodes nothing
        try:
            callstate.read(data)
        except callstate.errors.MissingDependencyError as exc:
            print(type(exc).__name__, exc.name, exc.extra, exc)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    checked, error = proc.stdout.splitlines()
    assert checked == "[True, True]"
    assert error.startswith("MissingDependencyError numpy numpy <bytes>, entry 'k': ")
    assert "callstate[numpy]" in error and "damaged" not in error


@pytest.mark.parametrize(
    ("adapter", "blocked", "extra"),
    [
        ("lightning", ("lightning", "pytorch_lightning"), "lightning"),
        ("transformers", ("transformers",), "transformers"),
        ("accelerate", ("accelerate",), "accelerate"),
    ],
)
def test_an_adapter_without_its_framework_is_a_missing_dependency(adapter: str, blocked: tuple[str, ...], extra: str) -> None:
    """callstate.<adapter> without its framework raises MissingDependencyError with the extra, as the README says."""
    script = textwrap.dedent(
        f"""
        import sys
        for name in {blocked!r}:
            sys.modules[name] = None  # as if not installed
        import callstate
        try:
            callstate.{adapter}
        except callstate.errors.MissingDependencyError as exc:
            print(isinstance(exc, ModuleNotFoundError), exc.name, exc.extra)
            print(exc)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    first, message = proc.stdout.splitlines()
    assert first == f"True {blocked[0]} {extra}"
    assert f"pip install 'callstate[{extra}]'" in message
