"""Commit pacing: writes of different documents held for a moment so that they share a commit.

Every commit costs the process a fixed amount of CPU whatever it holds: waking the database
thread, ``BEGIN`` and ``COMMIT``, and waking the event loop again to resume the writers. At
a human typing rate the writes of a busy server arrive one at a time (a hundred typists: a
write every 2 ms, each alone in its commit), so group commit never groups them. A
``CommitPacer`` lets at most one batch go to the database thread every ``interval``
seconds: a write that finds the last batch sent less than ``interval`` ago waits for the
next one, with every write that arrives meanwhile. Measured on the benchmark's 100 typists
(``benchmarks/README.md``): a third less CPU an edit for ``interval`` of added latency at
most, and only under load.

What never waits: a write when no batch went out in the last ``interval`` (a quiet server
pays no latency), and a write of a document that was in the last batch (a single writer
awaiting each write in turn, a migration or a test, is not slowed to one write a
``interval``). Anything else the database thread is asked to do (a read, a delete, closing)
first sends what is held, so jobs reach the thread in the order they were asked.

One pacer per event loop (writes carry the loop's futures); only that loop touches it.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable


class CommitPacer:
    """Holds one event loop's writes to a database until their batch's turn."""

    __slots__ = ("interval", "_loop", "_submit", "_held", "_handle", "_next_at", "_last_paths")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        interval: float,
        submit: Callable[[list[Any]], None],
    ) -> None:
        self.interval = interval
        self._loop = loop
        self._submit = submit  # hands a batch of jobs to the database thread
        self._held: list[Any] = []
        self._handle: asyncio.TimerHandle | None = None
        self._next_at = 0.0  # loop.time() from which a write goes out at once
        self._last_paths: frozenset[str] = frozenset()

    def add(self, path: str, job: Any) -> None:
        """Send ``job`` (a write of ``path``) now, or with the next batch."""
        if self._held:
            self._held.append(job)
            return
        now = self._loop.time()
        if now >= self._next_at or path in self._last_paths:
            if now >= self._next_at:
                self._next_at = now + self.interval
                self._last_paths = frozenset((path,))
            self._submit([job])
            return
        self._held.append(job)
        self._handle = self._loop.call_at(self._next_at, self.release)

    def release(self) -> None:
        """Send what is held now (its timer, or a job that must not overtake it)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        held, self._held = self._held, []
        if held:
            self._next_at = self._loop.time() + self.interval
            self._last_paths = frozenset(job.path for job in held)
            self._submit(held)

    @property
    def holding(self) -> int:
        """Writes waiting for their batch."""
        return len(self._held)
