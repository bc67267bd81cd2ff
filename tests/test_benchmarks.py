"""The benchmark suite still runs: ``benchmarks/run.py --quick`` measures every workload."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_run_writes_every_workload(tmp_path: Path) -> None:
    """A quick run prints the table and writes JSON with all five workloads and the machine."""
    pytest.importorskip("lightning.pytorch")  # the baseline of two workloads
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"benchmarks/run.py --quick failed:\n{proc.stderr[-3000:]}"
    assert "| workload | callstate | baseline | ratio |" in proc.stdout, proc.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["quick"] is True
    assert {"small", "keys", "large", "lazy", "import", "codec", "machine", "goals"} <= set(results), sorted(results)
    assert results["codec"]["early_stopping"]["callstate_us"] > 0 and results["codec"]["early_stopping"]["ratio_vs_pickle"] > 0
    assert set(results["small"]) == {"10", "100"}, results["small"]
    for row in results["small"].values():
        assert {"callstate_s", "lightning_s", "pickle_s", "speedup_vs_lightning", "ratio_vs_pickle"} <= set(row)
        assert all(row[k] > 0 for k in ("callstate_s", "lightning_s", "pickle_s")), row
    assert results["keys"]["callstate_us"] > 0 and results["keys"]["lightning_us"] > 0, results["keys"]
    for kind in ("numpy", "torch"):
        row = results["large"][kind]["1"]
        assert {"callstate", "torch", "copy"} <= set(row), row
        assert row["callstate"]["state_bytes"] == 1024 * 1024, row["callstate"]
        assert row["load_peak_x_state"] >= 0 and row["ratio_vs_torch"] > 0, row
    assert results["lazy"]["entries"] == 50 and results["lazy"]["speedup"] > 0, results["lazy"]
    assert results["import"]["callstate_ms"] > 0 and results["import"]["lightning_ms"] > 0, results["import"]
    assert results["machine"]["nproc"] >= 1 and results["machine"]["python"], results["machine"]
    labels = {g["goal"] for g in results["goals"]}
    assert "import callstate under 50 ms" in labels, labels
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "scaling.png").stat().st_size > 0, "matplotlib is installed but no plot was drawn"
