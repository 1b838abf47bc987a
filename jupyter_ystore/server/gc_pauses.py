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
"""

from __future__ import annotations

import gc
import logging
import time

_done = False


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
