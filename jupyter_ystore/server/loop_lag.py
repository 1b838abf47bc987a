"""How long the server's event loop is kept from running: every room's typing, relaying and
saving waits behind whatever holds the loop (a big document encoded, a squash holding the
GIL), so the longest pause is what a collaborator feels as a stall.

A task asks to wake every ``INTERVAL`` seconds and records how late it woke:
``jupyter_ystore_event_loop_lag_seconds`` (a histogram) and
``jupyter_ystore_event_loop_lag_max_seconds`` (the longest pause since the server started, or
since ``reset_max()``), both on ``/metrics``. Pauses over ``WARN_AFTER`` are logged, at most
once a minute, with what the loop's time went to (``pause_causes``); the time of every
window that ends in a pause over ``SHARE_OVER`` is added up by cause in
``jupyter_ystore_event_loop_paused_window_seconds_total``. At each wake-up it also publishes
the full garbage collections timed since the last (``gc_pauses``).
"""

from __future__ import annotations

import logging
import time

import anyio
from prometheus_client import Counter, Gauge, Histogram

from jupyter_ystore.server import gc_pauses, pause_causes

#: Seconds between two wake-ups (cheap: 20 a second).
INTERVAL = 0.05
#: A pause this long is worth a line in the log.
WARN_AFTER = 0.5
#: A pause this long has its window shared out by cause (the issue's target for the longest).
SHARE_OVER = 0.02

LAG = Histogram(
    "jupyter_ystore_event_loop_lag",
    "How late the event loop ran a task due now (seconds): time it was held by other work.",
    unit="seconds",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
LAG_MAX = Gauge(
    "jupyter_ystore_event_loop_lag_max",
    "The longest event-loop pause seen (seconds).",
    unit="seconds",
)
PAUSED_WINDOWS = Counter(
    "jupyter_ystore_event_loop_paused_window",
    "Time of the event-loop watcher's windows that ended in a pause over 20 ms, by what it "
    "went to: own_work (the loop's CPU), core_wait (the loop waiting for a core), host "
    "(steal time), threads (the process's other threads' CPU), idle (at most the interval "
    "the watcher slept), blocked (the rest: a blocking call or a lock on the loop).",
    ["cause"],
    unit="seconds",
)

_max = 0.0


def longest_pause() -> float:
    """The longest pause seen so far (seconds)."""
    return _max


def reset_max() -> None:
    """Start measuring the longest pause afresh (e.g. at the start of a benchmark step)."""
    global _max
    _max = 0.0
    LAG_MAX.set(0.0)


async def watch_loop(log: logging.Logger) -> None:
    """Measure the event loop's pauses for as long as the server runs."""
    global _max
    warned_at = float("-inf")
    clocks = pause_causes.Clocks()  # here, in the loop's thread: its clocks are the ones read
    before = clocks.read()
    try:
        while True:
            due = time.monotonic() + INTERVAL
            await anyio.sleep(INTERVAL)
            now = clocks.read()
            lag = max(0.0, now.wall - due)
            LAG.observe(lag)
            gc_pauses.publish()
            if lag > _max:
                _max = lag
                LAG_MAX.set(lag)
            if lag > SHARE_OVER:
                parts = pause_causes.share(before, now, idle=INTERVAL)
                for cause, seconds in parts.items():
                    PAUSED_WINDOWS.labels(cause).inc(seconds)
                if lag > WARN_AFTER and now.wall - warned_at > 60:
                    warned_at = now.wall
                    log.warning(
                        "jupyter_ystore: the event loop was held for %.0f ms (collaborators saw "
                        "a stall); over the last %.0f ms: %s",
                        lag * 1000,
                        (now.wall - before.wall) * 1000,
                        pause_causes.describe(parts),
                    )
            before = now
    finally:
        clocks.close()
