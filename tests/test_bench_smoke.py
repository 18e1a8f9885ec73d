"""The benchmark's quick variant runs to the end (timings are not asserted here)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "run.py"


@pytest.mark.slow
def test_quick_benchmark_completes_every_case(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--reps", "1",
                           "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cases = [r["case"] for r in json.loads(out.read_text())["results"]]
    for number in ("1 ", "2 ", "3 ", "4 ", "5 ", "6 ", "6b ", "7a ", "7b "):
        assert any(c.startswith(number) for c in cases), (number, cases)
    assert "ratio" in proc.stdout
