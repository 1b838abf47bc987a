"""The server load generator keeps working: ``benchmarks/bench_server.py --tiny`` (a real
``jupyter server`` with our extension, one room, two clients typing for a few seconds) exits 0
and prints its result line. The benchmark itself is run by hand (benchmarks/README.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(180)

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "bench_server.py"


def test_bench_server_tiny_run_passes_its_invariants() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny"],
        capture_output=True,
        text=True,
        timeout=150,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    result = [line for line in proc.stdout.splitlines() if line.startswith("RESULT tiny: ")]
    assert result and result[-1].startswith("RESULT tiny: ok "), output[-4000:]
    assert "missing=0" in result[-1] and "diverged=0" in result[-1], result[-1]
