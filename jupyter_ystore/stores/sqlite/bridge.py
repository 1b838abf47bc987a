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
from typing import Any, Awaitable, Callable, Iterable

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


class _Callback:
    """Stands where a waiter's future would: calls ``fn(result, error)`` on the loop
    instead of waking a task. A failing callback is reported to the loop and does not stop
    the rest of its batch (other documents' writes)."""

    __slots__ = ("fn", "_called")

    def __init__(self, fn: Callable[[Any, BaseException | None], None]) -> None:
        self.fn = fn
        self._called = False

    def done(self) -> bool:
        return self._called

    def set_result(self, result: Any) -> None:
        self._call(result, None)

    def set_exception(self, error: BaseException) -> None:
        self._call(None, error)

    def _call(self, result: Any, error: BaseException | None) -> None:
        self._called = True
        try:
            self.fn(result, error)
        except Exception as exc:
            asyncio.get_running_loop().call_exception_handler(
                {"message": "a database completion callback failed", "exception": exc}
            )


class CallbackWaiter(Waiter):
    """A ``Waiter`` whose completion calls ``fn(result, error)`` on the running event loop
    (no task waits: a room's writer hands over a keystroke and goes on). asyncio only."""

    __slots__ = ()

    def __init__(self, fn: Callable[[Any, BaseException | None], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._future = _Callback(fn)  # type: ignore[assignment]
        self._event = None
        self._outcome = (None, None)


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
