"""``jupyter_ystore.core.threads.run_sync``: worker threads whose cost does not depend on how
many tasks the server runs, with anyio's wait-for-the-thread cancellation kept."""

from __future__ import annotations

import contextvars
import threading
import time

import anyio
import pytest

from jupyter_ystore.core import threads

pytestmark = pytest.mark.anyio

_who = contextvars.ContextVar("who", default="nobody")


async def test_the_call_runs_in_a_worker_thread_with_the_callers_context() -> None:
    _who.set("caller")
    here = threading.get_ident()
    ran_in, seen = await threads.run_sync(lambda: (threading.get_ident(), _who.get()))
    assert ran_in != here
    assert seen == "caller"


async def test_the_calls_exception_reaches_the_caller() -> None:
    def fails() -> None:
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        await threads.run_sync(fails)


async def test_anyio_root_task_search_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """The search walks every task of a jupyter_server (no root task to remember there)."""
    from anyio._backends import _asyncio

    def walked() -> None:
        raise AssertionError("anyio searched for the root task")

    monkeypatch.setattr(_asyncio, "find_root_task", walked)
    with pytest.raises(AssertionError):  # the check itself holds: anyio does search
        await anyio.to_thread.run_sync(time.time)
    assert await threads.run_sync(lambda: 42) == 42


async def test_a_cancelled_caller_waits_for_its_call_to_end() -> None:
    """A half-done append must not overlap the next one: cancellation goes on only once the
    thread's call has returned, as with anyio's default."""
    started, release = threading.Event(), threading.Event()
    done: list[str] = []

    def slow() -> None:
        started.set()
        release.wait(10)
        done.append("finished")

    scope = anyio.CancelScope()

    async def call() -> None:
        with scope:
            await threads.run_sync(slow)
            done.append("caller went on")  # never: it was cancelled
        done.append("cancelled")

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(call)
        await anyio.to_thread.run_sync(started.wait, 10)
        scope.cancel()  # anyio re-delivers the cancellation every turn
        await anyio.sleep(0.05)
        assert done == []  # still waiting for the thread, cancelled or not
        release.set()
    assert done == ["finished", "cancelled"]
