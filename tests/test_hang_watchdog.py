"""A teardown that hangs after pytest-timeout fired ends the run with every stack printed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HANGING = '''
import concurrent.futures, time
import pytest

@pytest.fixture
def stuck_pool():
    yield
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # joins its worker on exit
        pool.submit(time.sleep, 600).result()

@pytest.mark.timeout(1)
def test_hangs_in_teardown(stuck_pool):
    pass
'''


def test_a_teardown_hanging_past_the_timeout_ends_the_run(tmp_path: Path) -> None:
    (tmp_path / "test_hanging.py").write_text(HANGING)
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).parent),
        "JUPYTER_YSTORE_TEST_HANG_MARGIN": "2",
    }
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "hang_watchdog", "-p", "no:cacheprovider", "-q", "test_hanging.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=120,
    )
    took = time.monotonic() - started
    output = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode != 0, output
    assert "Timeout" in output and "test_hanging.py" in output, output  # the stacks, with the culprit
    assert took < 60, took
