"""How many rooms of one event loop save their file at the same time.

When typing stops in many rooms together (a class told to stop), their autosave delays end in
the same turn of the event loop. Each save converts the shared document on the loop
(``YNotebook.get``, then the contents manager's ``from_dict`` and signing: a few milliseconds
for a small notebook) before it first waits, then serializes and writes in a worker thread.
Measured with ``bench_server.py`` at 200x2 (200 rooms stop typing at once): the first
autosaves held the event loop for 867 ms, every collaborator's edits waiting behind them.
Saves now take one of ``AT_ONCE`` slots first; the others wait for theirs, so a turn of the
loop converts at most that many documents and at most that many worker threads serialize
notebooks against the loop for the GIL. Saves are bound by the GIL, not by their number: at
48x10, the 48 autosaves took 0.9 s with 1, 2 or 4 slots, while the loop's longest pause
among them (sampled every 50 ms, garbage collections aside) was 31-34 ms with 4, 22-25 with 2
and 15-19 with 1 (2 runs each; those pauses included a second burst of conversions that found
nothing new, which ``FileSync.saver`` no longer makes). Two keep a slow disk's waits (a network
home directory) from queueing every save behind one.

A slot is a bound on bursts, not a queue to wait in forever: a save that has waited
``LONGEST_WAIT`` seconds goes ahead without one (four saves stuck on a hung network file
system must not keep every other room from saving).
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import AsyncIterator

import anyio

from jupyter_ystore.core.per_loop import PerLoop

#: Saves in progress at once, per event loop.
AT_ONCE = 2

#: Seconds a save waits for a slot before it goes ahead without one.
LONGEST_WAIT = 5.0

_slots: PerLoop[anyio.CapacityLimiter] = PerLoop(lambda loop: anyio.CapacityLimiter(AT_ONCE))


@asynccontextmanager
async def save_slot() -> AsyncIterator[None]:
    """Around a save: one of this event loop's slots, or none after ``LONGEST_WAIT``."""
    limiter = _slots.get(asyncio.get_running_loop())
    taken = False
    with anyio.move_on_after(LONGEST_WAIT):
        await limiter.acquire()
        taken = True
    try:
        yield
    finally:
        if taken:
            limiter.release()
