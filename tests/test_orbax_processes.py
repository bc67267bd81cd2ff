"""callstate.orbax across real processes: two JAX processes on loopback, and machines without orbax or jax.

The two-process test runs ``jax.distributed.initialize`` with a coordinator on 127.0.0.1 and gloo
CPU collectives (jax 0.10 on CPU allows it): orbax's own barriers and primary-host commit run as on
a cluster, each process writes its part of the callstate item into the shared step directory.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import jax  # noqa: F401 - the children need it (the core suite does not collect this module)
import orbax.checkpoint  # noqa: F401
import pytest

import callstate

_WORKER = textwrap.dedent(
    """
    import json, os, sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    mode, index, count, port, root = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    if count > 1:
        jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=count, process_id=index)
    import orbax.checkpoint as ocp
    import callstate, callstate.orbax as co

    @callstate.stateful(identity=("name",), state=("n",))
    class Shared:
        def __init__(self, name): self.name, self.n = name, 0

    @callstate.stateful(identity=("name",), state=("best",), per_rank=True)
    class Local:
        def __init__(self, name): self.name, self.best = name, -1

    shared, local = Shared("g"), Local("l")
    with ocp.CheckpointManager(root) as mngr:  # asynchronous, as by default
        if mode == "save":
            shared.n, local.best = 11, 10 * (jax.process_index() + 1)
            mngr.save(0, args=ocp.args.Composite(callbacks=co.Save([shared, local])))
            mngr.wait_until_finished()
            print(json.dumps({"steps": mngr.all_steps(), "files": sorted(os.listdir(f"{root}/0/callbacks"))}))
        else:
            args = co.Restore([shared, local], on_world_size_change=mode)
            try:
                report = mngr.restore(0, args=ocp.args.Composite(callbacks=args)).callbacks
                print(json.dumps({"n": shared.n, "best": local.best, "restored": list(report.restored)}))
            except Exception as exc:
                while exc is not None and not isinstance(exc, callstate.CallstateError):
                    exc = exc.__cause__ or exc.__context__
                print(json.dumps({"error": type(exc).__name__, "n": shared.n, "best": local.best}))
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(mode: str, count: int, root: Path) -> list[dict[str, Any]]:
    """Run ``count`` worker processes together; return each one's JSON line, by process index."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-W", "ignore", "-c", _WORKER, mode, str(i), str(count), port, str(root)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        for i in range(count)
    ]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    return [json.loads(out.splitlines()[-1]) for out, _err in outs]


@pytest.mark.slow
def test_two_jax_processes_save_a_step_and_restore_it_at_two_and_at_one(tmp_path: Path) -> None:
    """Two processes save one step (global file by process 0, a rank file each); two restore their own; one follows the policy."""
    saved = _run("save", 2, tmp_path)
    files = ["callbacks.callstate", "callbacks.rank0.callstate", "callbacks.rank1.callstate", "commit_success.txt"]
    assert saved == [{"steps": [0], "files": files}] * 2
    assert _run("error", 2, tmp_path) == [
        {"n": 11, "best": 10 * (i + 1), "restored": ["Shared{'name': 'g'}", "Local{'name': 'l'}"]} for i in range(2)
    ]
    assert _run("error", 1, tmp_path) == [{"error": "RankMismatchError", "n": 0, "best": -1}]
    assert _run("broadcast", 1, tmp_path) == [
        {"n": 11, "best": 10, "restored": ["Shared{'name': 'g'}", "Local{'name': 'l'}"]}
    ]


def _blocked(module: str, code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a child where ``import module`` fails as if it were not installed."""
    child = f"import sys\nsys.modules[{module!r}] = None\n" + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120, check=False)


def test_callstate_orbax_without_orbax_names_the_extra() -> None:
    """import callstate.orbax where orbax is missing raises MissingDependencyError with pip install 'callstate[orbax]'."""
    proc = _blocked(
        "orbax.checkpoint",
        """
        import callstate
        try:
            import callstate.orbax
        except callstate.errors.MissingDependencyError as exc:
            print(exc.name, exc.extra, "|", exc)
        """,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("orbax orbax | ") and "pip install 'callstate[orbax]'" in proc.stdout


def test_a_jax_array_read_without_jax_names_the_entry_and_the_extra(tmp_path: Path) -> None:
    """A file with a jax array read where jax is missing: MissingDependencyError naming the file, the entry and callstate[jax]."""
    import jax.numpy as jnp

    path = tmp_path / "ema.callstate"
    callstate.save({"EMA{'decay': 0.9}": {"n": 3, "w": jnp.ones(2)}}, path)
    proc = _blocked(
        "jax",
        f"""
        import callstate
        try:
            callstate.read({str(path)!r})
        except callstate.errors.MissingDependencyError as exc:
            print(exc.name, exc.extra, "|", exc)
        """,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("jax jax | ") and "pip install 'callstate[jax]'" in proc.stdout
    assert "EMA{'decay': 0.9}" in proc.stdout and "ema.callstate" in proc.stdout
