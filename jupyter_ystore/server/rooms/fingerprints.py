"""The open rooms' file polls, stat(2) by stat(2) but a worker thread call per batch.

Every open room stats its file every second (``FileSync.poller``). A thread call costs the
process ~280 µs of CPU on a 2-core VM (waking a worker, then the loop), far more than the
stat: measured at rest with 50 open rooms, it was 0.28 of the 0.7 ms of CPU a room costs
each second. Stats asked within ``WINDOW`` seconds of each other share one call.

What the thread call leaves is the wake-ups: a poll woke the loop three times (its timer,
the batch, the answer), for every room every second. Polls are due at slot boundaries of the
loop's clock (``poll_delay``), a quarter of the interval apart, so the rooms of one slot
share all three. Measured at rest, 50 rooms: without polls a room cost 0.1 ms of CPU a
second, with them 0.5. Not one slot for all: a thousand rooms polled in one turn of the loop
would be a pause; a quarter of them is a few milliseconds.
"""

from __future__ import annotations

import asyncio
import math
import os

from jupyter_ystore.core import threads
from jupyter_ystore.core.per_loop import PerLoop

#: Seconds a stat waits for others to share its thread call (a poll is due every second).
WINDOW = 0.05

#: A poll interval is cut into this many slots; every poll is due at the start of one.
SLOTS = 4


def poll_delay(interval: float, now: float) -> float:
    """Seconds from ``now`` (the event loop's clock) to a room's next poll: ``interval``,
    then on to the next slot boundary, where the polls of other rooms are due too."""
    slot = interval / SLOTS
    return math.ceil((now + interval) / slot) * slot - now

Fingerprint = tuple[int, int, int, int]


def fingerprint(os_path: str) -> Fingerprint | None:
    """The file's inode, size, modification and change times; None when it cannot be
    read (gone, permissions): the caller then asks the contents manager, which says why."""
    try:
        info = os.stat(os_path)
    except OSError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def _fingerprints(os_paths: list[str]) -> list[Fingerprint | None]:
    return [fingerprint(os_path) for os_path in os_paths]


class _Batch:
    """The stats asked on one event loop and not yet sent to a thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.waiting: list[tuple[str, asyncio.Future[Fingerprint | None]]] = []

    def ask(self, os_path: str) -> asyncio.Future[Fingerprint | None]:
        future: asyncio.Future[Fingerprint | None] = self.loop.create_future()
        self.waiting.append((os_path, future))
        if len(self.waiting) == 1:
            self.loop.call_later(WINDOW, self._send)
        return future

    def _send(self) -> None:
        batch, self.waiting = self.waiting, []
        done = self.loop.run_in_executor(
            threads.executor(), _fingerprints, [os_path for os_path, _ in batch]
        )
        done.add_done_callback(lambda outcome: _answer(batch, outcome))


def _answer(
    batch: list[tuple[str, asyncio.Future[Fingerprint | None]]],
    outcome: asyncio.Future[list[Fingerprint | None]],
) -> None:
    error = None if outcome.cancelled() else outcome.exception()
    results = [None] * len(batch) if outcome.cancelled() or error else outcome.result()
    for (_, future), result in zip(batch, results):
        if future.done():  # its poller was cancelled
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


_batches: PerLoop[_Batch] = PerLoop(_Batch)


async def of(os_path: str) -> Fingerprint | None:
    """``fingerprint(os_path)``, in a worker thread shared with the stats asked around it."""
    return await _batches.get(asyncio.get_running_loop()).ask(os_path)
