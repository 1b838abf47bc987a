"""What held the event loop: the shares of a window, from real clocks and from the watcher."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable

import anyio
import pytest
from prometheus_client import REGISTRY

from jupyter_ystore.server import loop_lag, pause_causes
from jupyter_ystore.server.pause_causes import Clocks, Reading, share


def reading(wall: float, loop_cpu: float = 0, process_cpu: float = 0, core_wait: float = 0, host: float = 0) -> Reading:
    return Reading(wall, loop_cpu, process_cpu, core_wait, host)


def test_a_window_is_shared_out_in_order_each_part_at_most_its_clock() -> None:
    before = reading(10.0, 1.0, 2.0, 0.5, 3.0)
    after = reading(10.5, 1.2, 2.3, 0.55, 3.01)  # loop 200 ms, others 100, core 50, host 10
    parts = share(before, after, idle=0.05)
    assert parts == pytest.approx(
        {"own_work": 0.2, "core_wait": 0.05, "host": 0.01, "threads": 0.1, "idle": 0.05, "blocked": 0.09}
    )
    assert sum(parts.values()) == pytest.approx(0.5)


def test_parts_never_add_up_to_more_than_the_window_nor_go_negative() -> None:
    # clocks of different resolution can claim more than the window, or run backwards
    parts = share(reading(0.0, 0, 0, 0, 5.0), reading(0.1, 0.08, 0.30, 0.05, 4.9), idle=0.05)
    assert parts["own_work"] == pytest.approx(0.08)
    assert parts["core_wait"] == pytest.approx(0.02)  # what was left of the window
    assert parts["host"] == 0.0
    assert parts["threads"] == parts["idle"] == parts["blocked"] == 0.0
    assert sum(parts.values()) == pytest.approx(0.1)


def shares_during(work: Callable[[], None]) -> dict[str, float]:
    """The split of the time ``work`` took on this thread, read from real clocks."""
    clocks = Clocks()
    try:
        before = clocks.read()
        work()
        return share(before, clocks.read(), idle=0.05)
    finally:
        clocks.close()


def test_the_loops_own_work_is_named() -> None:
    def spin() -> None:
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            pass

    parts = shares_during(spin)
    assert parts["own_work"] >= 0.15, parts
    assert parts["blocked"] < 0.1, parts


def test_a_blocking_call_is_named() -> None:
    parts = shares_during(lambda: time.sleep(0.5))
    # (the host's steal and other threads' CPU meanwhile are taken first: a margin for them)
    assert parts["blocked"] >= 0.25, parts
    assert parts["own_work"] < 0.05, parts


def test_another_thread_holding_the_gil_is_named() -> None:
    """A C call that never gives up the GIL (``sum`` over a range) in another thread: the loop's
    thread waits, off the CPU, while the process's CPU goes on."""
    started = threading.Event()

    def hold_the_gil() -> None:
        started.set()
        sum(range(30_000_000))

    def wait_for_it() -> None:
        worker = threading.Thread(target=hold_the_gil)
        worker.start()
        started.wait()
        time.sleep(0.001)  # gives the GIL away; getting it back waits for the sum
        worker.join()

    parts = shares_during(wait_for_it)
    assert parts["threads"] >= 0.1, parts
    assert parts["threads"] > parts["own_work"], parts


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the wait for a core is read from Linux's /proc")
def test_the_wait_for_a_core_and_the_hosts_time_are_read_on_linux() -> None:
    clocks = Clocks()
    try:
        first = clocks.read()
        assert clocks._schedstat is not None and clocks._stat is not None
        assert first.core_wait > 0  # every thread has waited for a core at some point
        assert first.host >= 0
    finally:
        clocks.close()


@pytest.mark.anyio
async def test_the_watcher_logs_what_held_the_loop_and_counts_it(caplog) -> None:
    def blocked_total() -> float:
        name = "jupyter_ystore_event_loop_paused_window_seconds_total"
        return REGISTRY.get_sample_value(name, {"cause": "blocked"}) or 0.0

    log = logging.getLogger("test_pause_causes")
    caplog.set_level(logging.WARNING, logger=log.name)
    counted = blocked_total()
    async with anyio.create_task_group() as tg:
        tg.start_soon(loop_lag.watch_loop, log)
        await anyio.sleep(0.2)
        time.sleep(1.0)  # a blocking call on the event loop
        await anyio.sleep(0.2)
        tg.cancel_scope.cancel()
    loop_lag.reset_max()
    lines = [r.getMessage() for r in caplog.records if "event loop was held" in r.getMessage()]
    assert len(lines) == 1, lines
    assert pause_causes.DESCRIPTIONS["blocked"] in lines[0], lines
    assert blocked_total() - counted >= 0.5
