"""The hostile payloads of tests/test_security.py through both decoders of the data codec: the same error, or value.

They run in a child whose address space is capped and whose time is bounded, as test_security's do.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap

import pytest
import torch  # noqa: F401 - test_security's cases need it (where torch is missing, tests/conftest.py skips this module)

HERE = pathlib.Path(__file__).parent
_CHILD = textwrap.dedent(
    """
    import resource, sys
    resource.setrlimit(resource.RLIMIT_CPU, (300, 300))
    sys.path.insert(0, sys.argv[1])
    import test_security
    from cdecode_diff import disagreement
    resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[2]), resource.RLIM_INFINITY))
    cases = [c for c in test_security.CASES if c.codec == "data"]
    for case in cases:
        problem = disagreement(case.parts[0], case.parts[1:])
        if problem:
            print(f"{case.name}: {problem}")
    print(f"compared {len(cases)}")
    """
)


@pytest.mark.slow
def test_hostile_payloads_get_the_same_outcome_from_both_decoders() -> None:
    """Every data-codec payload of the red-team corpus gets the same error (class, message) or value from both."""
    cap = 6 << 30  # address space: the interpreter with torch, and what two decoders may build
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(HERE), str(cap)],
        # The limits are set by the child itself: a preexec_fn forks through os.register_at_fork's hooks,
        # and jax's (imported by an earlier test of the session) warns there, as an unraisable error.
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[-1].startswith("compared ") and int(lines[-1].split()[1]) > 200, proc.stdout[-3000:]
    assert lines[:-1] == [], "\n".join(lines[:-1])[:5000]
