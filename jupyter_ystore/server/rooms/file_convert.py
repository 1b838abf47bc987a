"""A file's content read into a document, away from the event loop.

A room reads its file into a jupyter_ydoc document (``file_document``) when it first opens a
file its store does not hold, and reads the document back (``get``) to compare with the
store when it opens a file that changed while it was closed. Both are Python code over
pycrdt, one call per cell and key: 7.8 ms of the event loop for a 41-cell notebook, 81 ms
for 410 cells, during which no room relays a keystroke (a class opening its assignment is
one such read per student). Here they run in the helper process while the server offloads
its compactions and the helper is free (``squash_helper.run_if_idle``: an open must not wait
there behind a compaction's squash of a big history), else in a worker thread; the loop
only applies the finished update (0.4 and 4.9 ms).

An open room that finds its file changed reads it on the loop still: an await between the
file's read and the merge let another server's import of the same change come in through the
store, and both imported it (``test_an_edit_on_disk_is_imported_once``).

While the helper is busy, conversions run in worker threads, where they hold the GIL against
the loop (up to the switch interval after each of its system calls) and take threads the
file reads, stats and locks of every room need: a class opening fifty notebooks at once
converts ``AT_ONCE`` at a time.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, TypeVar

import anyio

from jupyter_ystore.core import threads
from jupyter_ystore.core.content import file_document
from jupyter_ystore.core.per_loop import PerLoop
from jupyter_ystore.stores import squash_helper

T = TypeVar("T")

#: Conversions of one event loop in worker threads at the same time.
AT_ONCE = 2

_slots: PerLoop[anyio.CapacityLimiter] = PerLoop(lambda loop: anyio.CapacityLimiter(AT_ONCE))


def load_update(file_type: str, content: Any) -> tuple[bytes, Any]:
    """The update that loads ``content`` (``file_document``'s, so the same for every server)
    and the content as that document gives it back."""
    document = file_document(file_type, content)
    return document.ydoc.get_update(), document.get()


def as_document_has_it(file_type: str, content: Any) -> Any:
    """``content`` as a document of ``file_type`` gives it back (what a save would write)."""
    return file_document(file_type, content).get()


async def load(file_type: str, content: Any) -> tuple[bytes, Any]:
    """``load_update``, off the event loop."""
    return await _off_the_loop(load_update, file_type, content)


async def as_document(file_type: str, content: Any) -> Any:
    """``as_document_has_it``, off the event loop."""
    return await _off_the_loop(as_document_has_it, file_type, content)


async def _off_the_loop(func: Callable[..., T], *args: Any) -> T:
    async with _slots.get(asyncio.get_running_loop()):
        return await threads.run_sync(squash_helper.run_if_idle, func, *args)
