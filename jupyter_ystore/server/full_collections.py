"""Run Python's full garbage collections when they find something, not while typing.

CPython starts a full (generation 2) collection once the objects promoted to the oldest
generation since the last one reach a quarter of what that one left. Under steady typing the
promoted objects are short-lived (an update waiting for its write, a message waiting for its
socket) and die by reference counting, so the counters still come due: at 48 rooms x 10
clients, one full collection a minute, walking every connection's and room's objects (about
30,000: 10-30 ms on a 2-core VM, every client waiting), and collecting nothing (measured:
``collected 0`` in every one while typing). The garbage a full collection does find here is a
closed room's reference cycles (its cancelled tasks with their tracebacks, its document and
store): a few hundred objects a room, with the document's memory.

So the collector's own counters never start one (the oldest generation's threshold is set
out of reach while this runs) and ``FullCollections`` runs them instead:

- when the last open room closes (nobody is typing);
- after ``after_closed_rooms`` rooms have closed since the last one (their garbage, bounded);
- when the oldest generation has grown by half, plus ``slack`` objects, since the last one
  (checked every ``check_every`` seconds: garbage from anything else in the process).

Young collections (generations 0 and 1, a few milliseconds at most) go on as before, and
still collect the cycles that die young. The collections this runs are timed like the others
(``jupyter_ystore_gc_full_collection_seconds``).
"""

from __future__ import annotations

import gc
import logging
import time

import anyio

#: A generation-2 threshold the collector's counters never reach.
NEVER = 1 << 30


class FullCollections:
    """Chooses the moments of the process's full garbage collections (see the module)."""

    def __init__(
        self,
        log: logging.Logger,
        *,
        after_closed_rooms: int = 16,
        growth: float = 0.5,
        slack: int = 10_000,
        check_every: float = 30.0,
    ) -> None:
        if after_closed_rooms < 1:
            raise ValueError(f"after_closed_rooms must be at least 1, not {after_closed_rooms}")
        self.log = log
        self.after_closed_rooms = after_closed_rooms
        self.growth = growth
        self.slack = slack
        self.check_every = check_every
        #: How many full collections this has run (tests and the log read it).
        self.runs = 0
        self._closed = 0
        #: Objects in the oldest generation after the last full collection (None: not yet
        #: counted; the first check counts, after start-up objects are frozen).
        self._left: int | None = None
        self._due: anyio.Event | None = None

    def room_closed(self, rooms_open: int) -> None:
        """A room closed (called on the event loop): collect now if it was the last one,
        or if enough have closed since the last collection."""
        self._closed += 1
        if rooms_open == 0 or self._closed >= self.after_closed_rooms:
            if self._due is not None:
                self._due.set()

    def _grown(self) -> bool:
        oldest = len(gc.get_objects(2))
        if self._left is None:
            self._left = oldest
        return oldest > self._left * (1 + self.growth) + self.slack

    def collect(self, why: str) -> None:
        """One full collection now, on the calling thread (the event loop waits for it)."""
        start = time.perf_counter()
        found = gc.collect()
        self._left = len(gc.get_objects(2))
        self._closed = 0
        self.runs += 1
        self.log.debug(
            "jupyter_ystore: full garbage collection (%s): %d objects freed, %d long-lived left, %.1f ms",
            why,
            found,
            self._left,
            (time.perf_counter() - start) * 1000,
        )

    async def run(self) -> None:
        """Hold back the collector's own full collections and run them at the moments above,
        for as long as this runs; the previous thresholds come back when it ends."""
        previous = gc.get_threshold()
        restore = previous[2] if previous[2] != NEVER else 10  # 10: CPython's default
        gc.set_threshold(previous[0], previous[1], NEVER)
        self.log.debug(
            "jupyter_ystore: full garbage collections wait for rooms to close "
            "(or for the oldest generation to grow by %.0f%%)",
            self.growth * 100,
        )
        try:
            while True:
                self._due = anyio.Event()
                with anyio.move_on_after(self.check_every):
                    await self._due.wait()
                if not gc.isenabled():  # someone else turned the collector off: theirs to run
                    self._closed = 0
                elif self._due.is_set():
                    self.collect(f"{self._closed} room(s) closed")
                elif self._grown():
                    self.collect("the oldest generation grew")
        finally:
            self._due = None
            if gc.get_threshold()[2] == NEVER:
                gc.set_threshold(*gc.get_threshold()[:2], restore)
