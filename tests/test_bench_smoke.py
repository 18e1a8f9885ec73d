"""The benchmarks' quick variants run to the end (timings are not asserted here)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import import_or_skip, skip_unless_ci
from pgcluster import ClusterError, find_bindir

BENCH = Path(__file__).resolve().parent.parent / "bench" / "run.py"
FLEET = BENCH.with_name("fleet.py")
SCALE = BENCH.with_name("fleet_scale.py")


@pytest.mark.slow
def test_quick_benchmark_completes_every_case(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--reps", "1",
                           "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cases = [r["case"] for r in json.loads(out.read_text())["results"]]
    for number in ("1 ", "1b ", "2 ", "3 ", "4 ", "5 ", "6 ", "6b ", "7a ", "7b ", "8 "):
        assert any(c.startswith(number) for c in cases), (number, cases)
    assert "ratio" in proc.stdout


def quick_ledger_bench(script: Path, out: Path) -> dict:
    """Run a ledger benchmark's quick variant (it starts its own PostgreSQL server) and
    return its JSON report."""
    import_or_skip("psycopg")
    try:
        find_bindir()
    except ClusterError as exc:
        skip_unless_ci(f"no PostgreSQL server: {exc}")
    proc = subprocess.run([sys.executable, str(script), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_quick_fleet_benchmark_holds_nothing_twice_and_loses_no_lease(tmp_path):
    report = quick_ledger_bench(FLEET, tmp_path / "fleet.json")
    assert report["violations"] == []
    for name in ("steady", "chaos", "restart"):
        phase = report["phases"][name]
        assert phase["cycles"] > 0, name
        assert phase["double_holds"] == 0 and phase["lost"] == 0, (name, phase)
        assert phase["audit"]["states"] == {"available": report["setup"]["slots"]}, name
    chaos, restart = report["phases"]["chaos"], report["phases"]["restart"]
    assert chaos["killed"] and chaos["recover_exit_codes"] == [0]
    assert 75 in restart["exit_codes"]  # clients saw the ledger go away, and retried
    assert restart["ledger_grants"] == restart["claims_journaled"]
    assert report["phases"]["floor"]["tps"] > 0


@pytest.mark.slow
def test_quick_fleet_scale_benchmark_measures_every_layout(tmp_path):
    report = quick_ledger_bench(SCALE, tmp_path / "scale.json")
    assert list(report["layouts"]) == ["1h x 20", "2h x 20", "1h x 40", "2h x 40"]
    for layout in report["layouts"].values():
        assert layout["cli"]["allocate"]["n"] == 2 and layout["pgbench_hosts"]["tps"] > 0
        assert any("slots_claim" in scan for scan in layout["explain"]["scans"]), layout
    link = report["link"]
    assert link["store_claim_open_connection"]["p50_ms"] >= 4 * report["config"]["delay_ms"]
