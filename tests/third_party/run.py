"""Run frameworks' own test files twice, plain and with callstate's adapter injected; fail on any regression.

``python tests/third_party/run.py`` (``.ci/run`` calls it after ``make test``; run it from the
repository with the project's interpreter) runs two suites, each in two pytest subprocesses at once
(as they are, and with an injection plugin of ours), and compares them. It prints the counts of
each run and exits 1 when a test that passed plain did not pass injected (failed, errored, skipped
or went missing), listing each; or when an injected run's report shows the injection did nothing,
or a plain run passed nothing. ``--suite accelerate`` or ``--suite keras`` runs one.

**accelerate**: ``tests/test_state_checkpointing.py`` and ``tests/test_accelerator.py``, fetched at the
installed version (``fetch.py``: the sdist from the package index, its hash pinned, unpacked into a
cache outside the repository); injected with ``-p callstate_inject`` (``callstate_inject.py``:
``callstate.accelerate.register(accelerator, [Tally()])`` on every Accelerator they build).

- Tests that need a GPU, an XPU, FP8, several devices or ``torchdata``'s stateful dataloader skip
  themselves by accelerate's own markers (``require_non_cpu``, ``require_cuda_or_xpu``, ...), and so do
  those accelerate marks ``@slow`` (run only with ``RUN_SLOW=1``): 31 of 78 in accelerate 1.16.0.
- ``DESELECT`` (``-k``): the two ``test_can_unwrap_distributed_compiled_model_*`` tests, which
  ``torch.compile`` a model (inductor builds C++ kernels: about 10 s of CPU each, the largest part
  of a run) and then only unwrap it; neither saves nor loads a state, so the adapter is not on
  their path.

Measured on the 2-core machine (accelerate 1.16.0, torch 2.13 CPU): 45 passed and 31 skipped in
each run, the injected one registering 50 Accelerators, writing 78 states and restoring 25;
51 s of CPU (user and system) for both runs together, and 215 s of wall time for the whole (both
runs at once, the sdist cached) while the machine's load average was near 17 from other work.

**keras**: the callback tests shipped in the installed Keras wheel (``KERAS_TEST_FILES`` under
``keras/src/callbacks/``), on the torch backend, with a ``pytest.ini`` declaring Keras's markers
(Keras's own conftest is not in the wheel); injected with ``-p callstate_keras_inject``
(``callstate_keras_inject.py``: every ``fit`` gets ``callstate.keras.resumable``, and every state is
restored from the backup at each epoch's end). Left out: ``tensorboard_test.py`` (TensorBoard's
writers, no state of a fit), ``orbax_checkpoint_test.py`` (orbax; callstate.orbax has its own tests),
``remote_monitor_test.py`` (an HTTP client) and ``swap_ema_weights_test.py`` (about 2 minutes on 2
cores even plain, where the others take 25 s together; its EMA weights are optimizer variables, which
the round trip restores in the other files' fits too).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from fetch import FetchError, fetch  # noqa: E402

TEST_FILES = ("tests/test_state_checkpointing.py", "tests/test_accelerator.py")
DESELECT = "not test_can_unwrap_distributed_compiled_model"
PLUGIN = "callstate_inject"

KERAS_TEST_FILES = (
    "early_stopping_test.py",
    "reduce_lr_on_plateau_test.py",
    "model_checkpoint_test.py",
    "csv_logger_test.py",
    "learning_rate_scheduler_test.py",
    "terminate_on_nan_test.py",
    "backup_and_restore_test.py",
    "monitor_callback_test.py",
    "lambda_callback_test.py",
    "callback_test.py",
)
KERAS_PLUGIN = "callstate_keras_inject"
# Keras's markers, which its repository's conftest declares; none of this project's pytest options apply.
KERAS_PYTEST_INI = """[pytest]
markers =
    requires_trainable_backend: the test trains a model
    skip_if_backend: the test is skipped on the named backend
"""
SUITES = ("accelerate", "keras")


def outcomes(junit_xml: Path) -> dict[str, str]:
    """Return each test's outcome (``passed``, ``failed``, ``error`` or ``skipped``) from a pytest junit-xml report."""
    found: dict[str, str] = {}
    for case in ET.parse(junit_xml).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = "failed" if child.tag == "failure" else child.tag
                break
        # A test that fails in its teardown has two entries: the worse one counts.
        if found.get(name, "passed") == "passed":
            found[name] = outcome
    return found


def regressions(plain: dict[str, str], injected: dict[str, str]) -> list[tuple[str, str]]:
    """Return ``(test, injected outcome)`` for each test that passed plain and did not pass injected."""
    return sorted(
        (name, injected.get(name, "missing"))
        for name, outcome in plain.items()
        if outcome == "passed" and injected.get(name) != "passed"
    )


def counts(results: dict[str, str]) -> str:
    """Return ``"45 passed, 31 skipped"``-style counts of ``results``."""
    tally: dict[str, int] = {}
    for outcome in results.values():
        tally[outcome] = tally.get(outcome, 0) + 1
    return ", ".join(f"{n} {outcome}" for outcome, n in sorted(tally.items())) or "no tests"


@dataclass(frozen=True)
class Suite:
    """A framework's test files, where to run them, and the plugin that injects callstate into them.

    ``idle`` reads the plugin's report and says why the injection did nothing (None if it did
    something); ``describe`` says what it did, in a line.
    """

    name: str
    directory: Path
    files: tuple[str, ...]
    plugin: str
    idle: Callable[[dict[str, int]], str | None]
    describe: Callable[[dict[str, int]], str]
    deselect: str | None = None
    env: dict[str, str] = field(default_factory=dict)


def _accelerate_idle(report: dict[str, int]) -> str | None:
    if not report.get("registered") or not report.get("restored"):
        return "the injected run registered no Accelerator or restored no state: the injection did nothing"
    return None


def _accelerate_describe(report: dict[str, int]) -> str:
    return (f"callstate registered on {report.get('registered', 0)} Accelerators, saved "
            f"{report.get('saved', 0)} states, restored {report.get('restored', 0)}")


def _keras_idle(report: dict[str, int]) -> str | None:
    if not report.get("fits") or not report.get("restored") or not report.get("callback_states"):
        return "the injected run wrapped no fit or restored no callback's state: the injection did nothing"
    return None


def _keras_describe(report: dict[str, int]) -> str:
    return (f"callstate wrapped {report.get('fits', 0)} fits, saved {report.get('saved', 0)} backups and "
            f"restored each ({report.get('callback_states', 0)} callback states)")


def accelerate_suite() -> Suite:
    directory = fetch()
    version = directory.name.rsplit("-", 1)[-1]
    return Suite(
        f"accelerate {version}", directory, TEST_FILES, PLUGIN, _accelerate_idle, _accelerate_describe, DESELECT
    )


def keras_suite(scratch: Path) -> Suite:
    # Found, not imported: importing Keras here would import TensorFlow into the runner.
    spec = importlib.util.find_spec("keras")
    if spec is None or spec.origin is None:
        raise FetchError("Keras is not installed: pip install 'callstate[keras]'")
    version = importlib.metadata.version("keras")
    tests = Path(spec.origin).parent / "src" / "callbacks"
    directory = scratch / "keras"
    directory.mkdir()
    (directory / "pytest.ini").write_text(KERAS_PYTEST_INI)
    files = tuple(str(tests / name) for name in KERAS_TEST_FILES)
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise FetchError(f"the installed Keras {version} has no {', '.join(missing)}")
    return Suite(
        f"keras {version}", directory, files, KERAS_PLUGIN, _keras_idle, _keras_describe, env={"KERAS_BACKEND": "torch"}
    )


def _start(suite: Suite, scratch: Path, mode: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
    junit = scratch / f"{mode}.xml"
    log = scratch / f"{mode}.log"
    env = dict(os.environ, **suite.env)
    env.pop("PYTEST_ADDOPTS", None)
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(suite.directory / "pytest.ini"),
        "--rootdir", str(suite.directory), *(["-k", suite.deselect] if suite.deselect else []),
        f"--junitxml={junit}", *suite.files,
    ]
    if mode == "injected":
        command[4:4] = ["-p", suite.plugin]
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH", "")) if p)
        env["CALLSTATE_INJECT_REPORT"] = str(scratch / "inject.json")
    with log.open("wb") as output:
        process = subprocess.Popen(command, cwd=suite.directory, env=env, stdout=output, stderr=subprocess.STDOUT)
    return process, junit, log


def run_suite(suite: Suite, scratch: Path) -> int:
    """Run ``suite`` plain and injected at once, print the comparison, and return the exit status."""
    started = time.monotonic()
    runs = {mode: _start(suite, scratch, mode) for mode in ("plain", "injected")}
    results: dict[str, dict[str, str]] = {}
    for mode, (process, junit, log) in runs.items():
        process.wait()
        if not junit.is_file():
            print(f"{mode} run of {suite.name}'s tests wrote no report (exit {process.returncode}):")
            print(log.read_text(errors="replace")[-4000:])
            return 1
        results[mode] = outcomes(junit)
    report_file = scratch / "inject.json"
    injection = json.loads(report_file.read_text()) if report_file.is_file() else {}
    logs = {mode: log.read_text(errors="replace") for mode, (_, _, log) in runs.items()}
    elapsed = time.monotonic() - started
    where = ", ".join(Path(f).name for f in suite.files)
    print(f"{suite.name}'s own tests ({where}{'; -k ' + repr(suite.deselect) if suite.deselect else ''}):")
    print(f"  plain:    {counts(results['plain'])}")
    print(f"  injected: {counts(results['injected'])}; {suite.describe(injection)}")
    print(f"  wall time {elapsed:.0f} s")
    status = 0
    if not any(outcome == "passed" for outcome in results["plain"].values()):
        print("the plain run passed no test: see its log\n" + logs["plain"][-4000:])
        status = 1
    nothing = suite.idle(injection)
    if nothing:
        print(nothing)
        status = 1
    found = regressions(results["plain"], results["injected"])
    if found:
        print(f"{len(found)} test(s) pass plain and not with callstate injected:")
        for name, outcome in found:
            print(f"  {name}: {outcome}")
        print("injected run's log (end):\n" + logs["injected"][-6000:])
        status = 1
    return status


def main(argv: list[str] | None = None) -> int:
    """Run each suite's two passes and compare them; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=SUITES, action="append", help="run only this suite (repeatable)")
    args = parser.parse_args(argv)
    status = 0
    for name in args.suite or SUITES:
        with tempfile.TemporaryDirectory(prefix=f"callstate-third-party-{name}-") as tmp:
            scratch = Path(tmp)
            try:
                suite = accelerate_suite() if name == "accelerate" else keras_suite(scratch)
            except FetchError as error:
                print(f"third-party tests: {error}", file=sys.stderr)
                return 1
            status |= run_suite(suite, scratch)
    return status


if __name__ == "__main__":
    sys.exit(main())
