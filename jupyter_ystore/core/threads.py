"""Blocking calls in worker threads, at a cost that does not grow with the server.

``anyio.to_thread.run_sync`` looks for the event loop's root task on every call (to stop its
workers when that task ends). jupyter_server runs its loop with ``run_forever``: there is no
root task to find and remember, so every call walks every task of the server (one per
websocket, several per room). Measured on this project's 2-core VM: 176 µs of CPU a call
with 100 tasks, 316 µs with 1,000; the loop's executor 49–91 µs. On asyncio, ``run_sync``
here uses an executor of its own; on any other backend (trio) it is anyio's.

Kept from anyio's default: a cancelled caller waits for its call to end before the
cancellation goes on, so a half-done append never overlaps the next one.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

import anyio.to_thread

T = TypeVar("T")

#: Worker threads (file reads and writes, stats, locks; a stuck NFS call holds one).
MAX_WORKERS = 16

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def executor() -> ThreadPoolExecutor:
    """The worker threads of ``run_sync`` (for callers that batch work of their own)."""
    global _executor
    if _executor is None:
        with _executor_lock:
            if _executor is None:
                _executor = ThreadPoolExecutor(MAX_WORKERS, thread_name_prefix="ystore-io")
    return _executor


def _forget_after_fork() -> None:
    global _executor, _executor_lock
    _executor, _executor_lock = None, threading.Lock()  # the parent's threads are not ours


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


async def run_sync(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a worker thread (with the caller's context variables)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not asyncio
        return await anyio.to_thread.run_sync(fn, *args)
    context = contextvars.copy_context()
    future = loop.run_in_executor(executor(), context.run, fn, *args)
    cancelled: BaseException | None = None
    while not future.done():
        try:
            await asyncio.wait((future,))
        except asyncio.CancelledError as exc:  # the thread cannot stop: wait for it
            cancelled = exc
    if cancelled is not None:
        raise cancelled
    return future.result()
