"""Run accelerate's own test files twice, plain and with callstate's adapter injected; fail on any regression.

``python tests/third_party/run.py`` (``.ci/run`` calls it after ``make test``; run it from the
repository with the project's interpreter) fetches accelerate's ``tests/test_state_checkpointing.py``
and ``tests/test_accelerator.py`` at the installed version (``fetch.py``: the sdist from the package
index, its hash pinned, unpacked into a cache outside the repository), then runs them in two pytest
subprocesses at once: once as they are, once with ``-p callstate_inject`` (``callstate_inject.py``:
``callstate.accelerate.register(accelerator, [Tally()])`` on every Accelerator they build). It
prints the counts of each run and exits 1 when a test that passed plain did not pass injected
(failed, errored, skipped or went missing), listing each; or when the injected run registered no
Accelerator or restored no state (the injection did nothing), or the plain run passed nothing.

What is left out, and why:

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
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from fetch import FetchError, fetch  # noqa: E402

TEST_FILES = ("tests/test_state_checkpointing.py", "tests/test_accelerator.py")
DESELECT = "not test_can_unwrap_distributed_compiled_model"
PLUGIN = "callstate_inject"


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


def _start(directory: Path, scratch: Path, mode: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
    junit = scratch / f"{mode}.xml"
    log = scratch / f"{mode}.log"
    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(directory / "pytest.ini"),
        "--rootdir", str(directory), "-k", DESELECT, f"--junitxml={junit}", *TEST_FILES,
    ]
    if mode == "injected":
        command[4:4] = ["-p", PLUGIN]
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH", "")) if p)
        env["CALLSTATE_INJECT_REPORT"] = str(scratch / "inject.json")
    with log.open("wb") as output:
        process = subprocess.Popen(command, cwd=directory, env=env, stdout=output, stderr=subprocess.STDOUT)
    return process, junit, log


def main(argv: list[str] | None = None) -> int:
    """Run both passes and compare them; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    started = time.monotonic()
    try:
        directory = fetch()
    except FetchError as error:
        print(f"third-party tests: {error}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="callstate-third-party-") as name:
        scratch = Path(name)
        runs = {mode: _start(directory, scratch, mode) for mode in ("plain", "injected")}
        results: dict[str, dict[str, str]] = {}
        for mode, (process, junit, log) in runs.items():
            process.wait()
            if not junit.is_file():
                print(f"{mode} run of accelerate's tests wrote no report (exit {process.returncode}):")
                print(log.read_text(errors="replace")[-4000:])
                return 1
            results[mode] = outcomes(junit)
        report_file = scratch / "inject.json"
        injection = json.loads(report_file.read_text()) if report_file.is_file() else {}
        logs = {mode: log.read_text(errors="replace") for mode, (_, _, log) in runs.items()}
    elapsed = time.monotonic() - started
    print(f"accelerate {directory.name.rsplit('-', 1)[-1]}'s own tests ({', '.join(TEST_FILES)}; -k {DESELECT!r}):")
    print(f"  plain:    {counts(results['plain'])}")
    print(f"  injected: {counts(results['injected'])}; callstate registered on {injection.get('registered', 0)} "
          f"Accelerators, saved {injection.get('saved', 0)} states, restored {injection.get('restored', 0)}")
    print(f"  wall time {elapsed:.0f} s")
    status = 0
    if not any(outcome == "passed" for outcome in results["plain"].values()):
        print("the plain run passed no test: see its log\n" + logs["plain"][-4000:])
        status = 1
    if not injection.get("registered") or not injection.get("restored"):
        print("the injected run registered no Accelerator or restored no state: the injection did nothing")
        status = 1
    found = regressions(results["plain"], results["injected"])
    if found:
        print(f"{len(found)} test(s) pass plain and not with callstate injected:")
        for name, outcome in found:
            print(f"  {name}: {outcome}")
        print("injected run's log (end):\n" + logs["injected"][-6000:])
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
