"""The benchmark suite still runs: ``benchmarks/run.py --quick`` measures every workload."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

import callstate

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
    files = results["codec_files"]  # issue 25: each implementation in its own process
    expected_impls = {"python"} if callstate.codec_implementation() == "python" else {"c", "python"}
    assert set(files) == expected_impls, sorted(files)
    for impl, run in files.items():
        assert run["implementation"] == impl, run
        assert set(run["files"]) >= {"floats_1m", "metric_records_20k", "int_float_dict_100k"}, sorted(run["files"])
        for row in run["files"].values():
            assert row["save_vs_pickle"] > 0 and row["load_vs_pickle"] > 0, row
        assert run["small"]["10"]["speedup_vs_lightning"] > 0, run["small"]
    assert "| c: save / load" in proc.stdout or expected_impls == {"python"}, proc.stdout
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
    assert results["remote"]["mb"] == 4 and results["remote"]["ratio_vs_s3fs"] > 0, results["remote"]
    assert results["machine"]["nproc"] >= 1 and results["machine"]["python"], results["machine"]
    labels = {g["goal"] for g in results["goals"]}
    assert "import callstate under 50 ms" in labels, labels
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "scaling.png").stat().st_size > 0, "matplotlib is installed but no plot was drawn"


@pytest.mark.slow
def test_scaling_registry_quick_run_measures_every_operation(tmp_path: Path) -> None:
    """A quick scaling run writes JSON with every operation timed at both sizes, and the goals of issue 12."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "scaling_registry.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"benchmarks/scaling_registry.py --quick failed:\n{proc.stderr[-3000:]}"
    assert "| operation | N=100 | N=1,000 |" in proc.stdout, proc.stdout
    results = json.loads((tmp_path / "scaling_registry.json").read_text())
    assert results["quick"] is True and results["sizes"] == [100, 1000], results["sizes"]
    operations = results["operations"]
    expected = {"register", "construct", "state_dict", "dumps", "loads", "getitem", "contains",
                "dist_save", "dist_load", "round_trip"}
    assert set(operations) == expected, sorted(operations)
    for name, op in operations.items():
        assert set(op["sizes"]) == {"100", "1000"}, (name, op["sizes"])
        for n, row in op["sizes"].items():
            assert row["status"] == "measured", (name, n, row)
            assert row["median_s"] > 0 and row["repeats"] == 1, (name, n, row)
        assert op["ratios"]["1000/100"]["value"] > 0, (name, op["ratios"])
    for name in ("getitem", "contains"):
        assert all(row["per_item_us"] > 0 for row in operations[name]["sizes"].values()), operations[name]
    goals = {g["operation"]: g for g in results["goals"]}
    assert set(goals) == expected, sorted(goals)
    for g in results["goals"]:
        assert g["sizes"] == [100, 1000] and g["bound"] == pytest.approx(12.0), g
        assert isinstance(g["met"], bool) and g["value"] > 0 and g["skipped"] is False, g
    assert results["machine"]["nproc"] >= 1, results["machine"]
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "scaling_registry.png").stat().st_size > 0, "matplotlib is installed but no plot was drawn"


@pytest.mark.slow
def test_scaling_registry_skips_what_would_exceed_the_budget(tmp_path: Path) -> None:
    """An operation predicted to exceed --budget is skipped with its prediction, and its goal is missed."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "scaling_registry.py"), "--sizes", "100,100000",
         "--budget", "0.5", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"benchmarks/scaling_registry.py failed:\n{proc.stderr[-3000:]}"
    results = json.loads((tmp_path / "scaling_registry.json").read_text())
    row = results["operations"]["register"]["sizes"]["100000"]
    assert row["status"] == "skipped" and row["predicted_s"] > 0.5, row
    assert results["operations"]["register"]["sizes"]["100"]["status"] == "measured"
    goal = next(g for g in results["goals"] if g["operation"] == "register")
    assert goal["skipped"] is True and goal["met"] is False and goal["bound"] == pytest.approx(1200.0), goal
    for name, op in results["operations"].items():
        big = op["sizes"]["100000"]
        assert big["status"] in ("measured", "skipped") and (big["status"] == "measured" or big["reason"]), (name, big)
