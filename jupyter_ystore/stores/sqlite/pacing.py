"""Commit pacing: writes of different documents held for a moment so that they share a commit.

Every commit costs the process a fixed amount of CPU whatever it holds: waking the database
thread, ``BEGIN`` and ``COMMIT``, and waking the event loop again to resume the writers. At
a human typing rate the writes of a busy server arrive one at a time (a hundred typists: a
write every 2 ms, each alone in its commit), so group commit never groups them. A
``CommitPacer`` lets at most one batch go to the database thread every ``interval``
seconds: a write that finds the last batch sent less than ``interval`` ago waits for the
next one, with every write that arrives meanwhile. Measured on the benchmark's 100 typists
(``benchmarks/README.md``): a quarter less CPU an edit for ``interval`` of added latency at
most, and only under load.

What never waits: the first write of an interval (a quiet server pays no latency), and a
write of a document written in this interval or the one before (a writer awaiting each
write in turn, a migration or a test, is never slowed to one write an ``interval``, nor are
twenty of them writing side by side). Anything else the database thread is asked to do (a
read, a delete, closing) first sends what is held, so jobs reach the thread in the order
they were asked.

One pacer per event loop (writes carry the loop's futures); only that loop touches it.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable


class CommitPacer:
    """Holds one event loop's writes to a database until their batch's turn."""

    __slots__ = ("interval", "_loop", "_submit", "_held", "_handle", "_ends", "_current", "_previous")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        interval: float,
        submit: Callable[[Any], None],
    ) -> None:
        self.interval = interval
        self._loop = loop
        self._submit = submit  # hands a job, or a list of them, to the database thread
        self._held: list[Any] = []
        self._handle: asyncio.TimerHandle | None = None
        self._ends = 0.0  # loop.time() when the current interval ends
        self._current: set[str] = set()  # documents written in the current interval
        self._previous: set[str] = set()  # and in the one before

    def add(self, path: str, job: Any) -> None:
        """Send ``job`` (a write of ``path``) now, or with the next batch."""
        if self._held:
            self._held.append(job)
            return
        now = self._loop.time()
        if now >= self._ends:
            self._next_interval(now)
        elif path not in self._current and path not in self._previous:
            self._held.append(job)
            self._handle = self._loop.call_at(self._ends, self.release)
            return
        self._current.add(path)
        self._submit(job)

    def release(self) -> None:
        """Send what is held now (its timer, or a job that must not overtake it)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        held, self._held = self._held, []
        if held:
            self._next_interval(self._loop.time())
            self._current.update(job.path for job in held)
            self._submit(held)

    def _next_interval(self, now: float) -> None:
        self._previous = self._current if now < self._ends + self.interval else set()
        self._current = set()
        self._ends = now + self.interval

    @property
    def holding(self) -> int:
        """Writes waiting for their batch."""
        return len(self._held)
