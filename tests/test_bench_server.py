"""The server load generator keeps working: ``benchmarks/bench_server.py --tiny`` (a real
``jupyter server`` with our extension, one room, two clients typing for a few seconds) exits 0
and prints its result line. The benchmark itself is run by hand (benchmarks/README.md)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def _load_bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_server_under_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (its dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


def test_the_report_says_the_longest_pause_at_the_largest_load_held() -> None:
    """Point 4's figure comes out of the summary line: the longest pause over every run of
    the largest step held (not of a step past it), and whether it is within 20 ms."""
    bench = _load_bench()

    def run(rooms: int, p99: float, pause: list[float], ok: bool = True) -> Any:
        data = {"p50_ms": 5.0, "p99_ms": p99, "loop_pause_max_ms": pause}
        return bench.StepResult("ours-sqlite", rooms, 10, 1, ok=ok, data=data)

    results = [
        run(24, 40.0, [5.0, 10.0]),
        run(24, 50.0, [10.0, 20.0]),
        run(32, 300.0, [50.0, 100.0], ok=False),
    ]
    line = [x for x in bench.report(results, ["ours-sqlite"], {}).splitlines() if x.startswith("Largest")]
    assert line == [
        "Largest R×C held (p99 ≤ 100 ms, nothing lost, every round): ours-sqlite 24×10 = 240 "
        "clients (longest event-loop pause there 10–20 ms in 2 run(s): within the 20 ms target)"
    ]
    results[0].data["loop_pause_max_ms"] = [20.0, 50.0]
    line = [x for x in bench.report(results, ["ours-sqlite"], {}).splitlines() if x.startswith("Largest")]
    assert line[0].endswith("(longest event-loop pause there 20–50 ms in 2 run(s): over the 20 ms target)")


def test_the_report_shares_out_the_pauses_while_typing() -> None:
    """The server's counter of paused windows, read before and after typing, becomes the
    shares of each cause in the step's line; no paused window, no shares."""
    bench = _load_bench()
    before = {"own_work": 1.0, "blocked": 0.5}
    after = {"own_work": 1.3, "blocked": 0.6, "host": 0.0}
    assert bench.pause_shares(before, after) == {"own_work": 75.0, "blocked": 25.0, "host": 0.0}
    assert bench.pause_shares(after, after) is None
    assert bench.pause_shares({}, {}) is None


def test_the_load_client_records_its_own_stalls() -> None:
    """A late delivery can be the client's (its loop busy, a full collection): it says so."""
    import asyncio
    import gc
    import time

    spec = importlib.util.spec_from_file_location(
        "loadclient_under_test", SCRIPT.parent / "_loadclient.py"
    )
    assert spec is not None and spec.loader is not None
    loadclient = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = loadclient  # (its dataclasses look their module up)
    spec.loader.exec_module(loadclient)

    async def stall() -> Any:
        check = loadclient.SelfCheck(time.monotonic())
        check.start()
        await asyncio.sleep(0.05)
        time.sleep(0.08)  # the loop held: the sampler wakes late
        gc.collect()
        await asyncio.sleep(0.05)
        check.stop()
        return check

    check = asyncio.run(stall())
    assert check.late and max(ms for _, ms in check.late) >= 50, check.late
    assert len(check.full_gcs) == 1, check.full_gcs
    assert gc.callbacks.count(check._on_gc) == 0
