"""The third-party check's own parts: the junit comparison, the pinned fetch, and the plugin on a real Accelerator."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import accelerate  # noqa: F401  (the plugin's test runs real accelerate)
import pytest
from third_party.fetch import SDIST_SHA256, FetchError, fetch
from third_party.run import counts, outcomes, regressions

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _junit(path: Path, cases: list[tuple[str, str | None]]) -> Path:
    """Write a pytest-style junit report: one testcase per (name, child tag or None for a pass)."""
    suite = ET.Element("testsuite")
    for name, tag in cases:
        case = ET.SubElement(suite, "testcase", classname="test_x.T", name=name)
        if tag is not None:
            ET.SubElement(case, tag, message="m")
    root = ET.Element("testsuites")
    root.append(suite)
    ET.ElementTree(root).write(path)
    return path


def test_a_pass_that_fails_skips_or_vanishes_injected_is_a_regression(tmp_path: Path) -> None:
    """A test passing plain counts as a regression when injected it fails, errors, skips or is missing."""
    plain = outcomes(_junit(tmp_path / "p.xml", [
        ("ok", None), ("fails", None), ("errs", None), ("skips", None), ("gone", None), ("bad", "failure"),
    ]))
    injected = outcomes(_junit(tmp_path / "i.xml", [
        ("ok", None), ("fails", "failure"), ("errs", None), ("errs", "error"), ("skips", "skipped"),
        ("bad", "failure"),
    ]))
    assert injected["test_x.T::errs"] == "error"  # a teardown error after a pass: the worse entry counts
    assert regressions(plain, injected) == [
        ("test_x.T::errs", "error"), ("test_x.T::fails", "failed"),
        ("test_x.T::gone", "missing"), ("test_x.T::skips", "skipped"),
    ]
    assert counts(plain) == "1 failed, 5 passed"


def test_a_version_without_a_pinned_hash_is_refused_before_any_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fetch() of a version whose sdist hash is not pinned raises FetchError and downloads nothing."""
    monkeypatch.setenv("CALLSTATE_THIRD_PARTY_CACHE", str(tmp_path))
    assert "0.0.1" not in SDIST_SHA256
    with pytest.raises(FetchError, match=re.escape("No sdist hash is pinned for accelerate 0.0.1")):
        fetch("0.0.1")
    assert list(tmp_path.iterdir()) == []


PROBE = '''
import os, pickle
import torch
from accelerate import Accelerator

def test_save_load_pickle():
    accelerator = Accelerator(cpu=True)
    accelerator.prepare(torch.nn.Linear(2, 2))
    accelerator.save_state(os.environ["PROBE_OUT"])
    accelerator.load_state(os.environ["PROBE_OUT"])
    pickle.loads(pickle.dumps(accelerator))
'''


def _run_probe(tmp_path: Path, probe: str, plugin: str | None, **env_vars: str) -> Path:
    """Run ``probe`` as a test file in a pytest subprocess, with ``plugin`` if given; return its report's path."""
    (tmp_path / "test_probe.py").write_text(probe)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    report = tmp_path / "inject.json"
    env = dict(os.environ, CALLSTATE_INJECT_REPORT=str(report), **env_vars)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE / "third_party"), str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *(["-p", plugin] if plugin else []),
         "test_probe.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return report


@pytest.mark.slow
@pytest.mark.parametrize("injected", [False, True])
def test_the_plugin_registers_callstate_on_every_accelerator_a_test_builds(tmp_path: Path, injected: bool) -> None:
    """With -p callstate_inject a test's own Accelerator saves and restores callbacks.callstate; without, it does not."""
    report = _run_probe(tmp_path, PROBE, "callstate_inject" if injected else None, PROBE_OUT=str(tmp_path / "ckpt"))
    assert (tmp_path / "ckpt" / "callbacks.callstate").exists() is injected
    if injected:
        tally = json.loads(report.read_text())
        assert tally["registered"] == 1 and tally["restored"] == 1 and tally["saved"] >= 1, tally
    else:
        assert not report.exists()


KERAS_PROBE = '''
import keras
import numpy as np

def test_fit_with_early_stopping():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile("sgd", loss="mse")
    x = np.ones((8, 3), "float32")
    stop = keras.callbacks.EarlyStopping(monitor="loss", patience=1)
    history = model.fit(x, x[:, :1], epochs=3, verbose=0, callbacks=[stop])
    assert history.epoch == [0, 1, 2] and stop.wait == 0
'''


@pytest.mark.slow
@pytest.mark.needs("keras")
@pytest.mark.parametrize("injected", [False, True])
def test_the_keras_plugin_saves_and_restores_every_state_at_each_epoch(tmp_path: Path, injected: bool) -> None:
    """With -p callstate_keras_inject a test's own fit is backed up and restored each epoch; without, it is not."""
    report = _run_probe(tmp_path, KERAS_PROBE, "callstate_keras_inject" if injected else None, KERAS_BACKEND="torch")
    if injected:
        # Three epochs: three backups, each restored; the EarlyStopping's state in each restore.
        assert json.loads(report.read_text()) == {"fits": 1, "saved": 3, "restored": 3, "callback_states": 3}
    else:
        assert not report.exists()


@pytest.mark.needs("keras")
def test_keras_test_files_named_by_the_runner_are_in_the_installed_wheel() -> None:
    """Every Keras test file the runner names ships in the installed Keras (a newer wheel may drop one)."""
    import keras
    from third_party.run import KERAS_TEST_FILES

    tests = Path(keras.__file__).parent / "src" / "callbacks"
    assert [f for f in KERAS_TEST_FILES if not (tests / f).is_file()] == []
