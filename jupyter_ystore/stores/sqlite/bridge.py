"""Hand results from the database thread back to whichever event loop is waiting.

The database thread outlives event loops (each anyio test runs its own), so it holds no
loop-bound object of its own: every job carries a ``Waiter`` made in the waiting task's loop.
On asyncio a waiter is a future resolved with ``call_soon_threadsafe`` (one call per loop per
batch, which is what makes group commit cheap); elsewhere (trio) it is a ``threading.Event``
waited on in a worker thread.
"""

from __future__ import annotations

import asyncio
import copy
import threading
from typing import Any, Awaitable, Iterable

import anyio


class Waiter:
    """The completion of one job: a result or an exception."""

    __slots__ = ("_loop", "_future", "_event", "_outcome")

    def __init__(self) -> None:
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        if self._loop is not None:
            self._future: asyncio.Future[Any] | None = self._loop.create_future()
            self._event: threading.Event | None = None
        else:
            self._future = None
            self._event = threading.Event()
        self._outcome: tuple[Any, BaseException | None] = (None, None)

    def wait(self) -> Awaitable[Any]:
        """The job's result; its exception is raised here. (On asyncio the future itself:
        one coroutine frame less on the write path.)"""
        if self._future is not None:
            return self._future
        return self._wait_event()

    async def wait_for_wake(self, poll: float) -> None:
        """Wait for a wake-up that may never come (a watch); cancellable. Without an asyncio
        loop the thread waiting for it returns every ``poll`` seconds, so that cancelling
        costs at most that."""
        if self._future is not None:
            await self._future
            return
        assert self._event is not None
        while not await anyio.to_thread.run_sync(self._event.wait, poll):
            pass

    async def _wait_event(self) -> Any:
        assert self._event is not None
        await anyio.to_thread.run_sync(self._event.wait)
        result, error = self._outcome
        if error is not None:
            raise error
        return result


def _resolve(items: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, error in items:
        if future.done():  # the waiting task was cancelled
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def deliver(outcomes: Iterable[tuple[Waiter, Any, BaseException | None]]) -> None:
    """Complete waiters from the database thread: one wake-up per event loop per batch."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, Any]]] = {}
    errors_seen: set[int] = set()
    for waiter, result, error in outcomes:
        if error is not None:
            # One failed commit fails every write of its batch: give each its own instance
            # so tracebacks do not pile onto one shared object.
            if id(error) in errors_seen:
                error = copy.copy(error)
            else:
                errors_seen.add(id(error))
        loop = waiter._loop
        if loop is None:
            waiter._outcome = (result, error)
            assert waiter._event is not None
            waiter._event.set()
            continue
        items = by_loop.get(loop)
        if items is None:
            items = by_loop[loop] = []
        items.append((waiter._future, result, error))
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve, items)
        except RuntimeError:  # that loop is closed: nobody is waiting any more
            pass
