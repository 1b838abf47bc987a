"""Keep Python's full garbage collections short while rooms are open.

A full (generation 2) collection walks every object the collector tracks. A Jupyter server has
about 200,000 of them once it has started (modules, configuration, handlers), nearly all of
which live as long as the process. Walking them took 50-120 ms on a 2-core VM: one event-loop
freeze every few seconds under 80 typing clients, every client waiting. ``gc.freeze`` moves
the objects that exist once the server has started into a permanent generation that
collections skip; a full collection then walks only what was made since (a few thousand
objects: under 10 ms in the same run). Measured with ``benchmarks/bench_server.py`` (longest
event-loop pause at 8x10: 50-100 ms before, 5-10 ms after).

Objects frozen are still freed by reference counting; only a reference cycle among them that
becomes garbage later is never collected, which costs little for start-up objects.

What is left is timed: ``jupyter_ystore_gc_full_collection_seconds`` on ``/metrics`` (a
histogram of every full collection after start-up). A full collection stops every thread,
the event loop's included, so an operator can tell these pauses from the others that
``jupyter_ystore_event_loop_lag_seconds`` counts.
"""

from __future__ import annotations

import collections
import gc
import logging
import time
from typing import Any

from prometheus_client import Histogram

FULL_COLLECTIONS = Histogram(
    "jupyter_ystore_gc_full_collection",
    "How long each full (generation 2) garbage collection held the process (seconds).",
    unit="seconds",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
)

_done = False
#: Durations the collector's callback recorded, not yet in the histogram. The callback runs in
#: whichever thread allocated, possibly inside the metric's own lock: it only appends here.
_timed: collections.deque[float] = collections.deque(maxlen=10_000)
_began = 0.0


def freeze_startup_objects(log: logging.Logger) -> bool:
    """Collect once, then freeze what is left; once per process (False after the first)."""
    global _done
    if _done:
        return False
    _done = True
    start = time.perf_counter()
    gc.collect()
    gc.freeze()
    log.debug(
        "jupyter_ystore: %d objects made at start-up left out of garbage collections (%.0f ms)",
        gc.get_freeze_count(),
        (time.perf_counter() - start) * 1000,
    )
    return True


def _on_collection(phase: str, info: dict[str, Any]) -> None:
    global _began
    if info["generation"] != 2:
        return
    if phase == "start":
        _began = time.perf_counter()
    else:
        _timed.append(time.perf_counter() - _began)


def time_full_collections() -> None:
    """Time every full collection from now on (once per process)."""
    if _on_collection not in gc.callbacks:
        gc.callbacks.append(_on_collection)


def publish() -> None:
    """Move the durations recorded since the last call into the histogram (the loop-lag
    watcher calls it at each wake-up)."""
    while _timed:
        FULL_COLLECTIONS.observe(_timed.popleft())
