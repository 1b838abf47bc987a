"""A last bound on every test, setup and teardown included.

pytest-timeout interrupts a test once; a fixture's teardown that then blocks again (a thread
pool joining a worker stuck on a database lock) waits for ever: one CI run spent its whole
90 minutes that way. Past twice the test's timeout plus a margin, this prints every thread's
stack and ends the run, so CI fails in minutes and says where.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
from typing import Any, Iterator

import pytest

#: Seconds added to twice a test's timeout (``JUPYTER_YSTORE_TEST_HANG_MARGIN``).
MARGIN = float(os.environ.get("JUPYTER_YSTORE_TEST_HANG_MARGIN", "60"))


def bound(item: pytest.Item) -> float:
    marker = item.get_closest_marker("timeout")
    seconds: Any = None
    if marker is not None:
        seconds = marker.args[0] if marker.args else marker.kwargs.get("timeout")
    if seconds is None:
        seconds = item.config.getini("timeout") or 300
    return 2 * float(seconds) + MARGIN


def _give_up(config: pytest.Config, nodeid: str, seconds: float) -> None:
    """Runs on the timer's thread while the main thread is stuck: undo pytest's capture so
    the stacks reach the real stderr, print them, exit."""
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        try:
            capture.suspend_global_capture(in_=True)
        except Exception:  # noqa: BLE001 - the exit matters more than the capture
            pass
    sys.stderr.write(f"\n{nodeid} still running after {seconds:.0f} s (Timeout): every thread's stack\n")
    sys.stderr.flush()
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    sys.stderr.flush()
    os._exit(3)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: Any) -> Iterator[None]:
    seconds = bound(item)
    timer = threading.Timer(seconds, _give_up, (item.config, item.nodeid, seconds))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
