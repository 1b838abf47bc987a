"""When a document's history is squashed into one snapshot, for every store that compacts.

``Policy`` holds ``compact_after_updates``, ``compact_after_bytes`` (the updates after the
snapshot, counted by the store) and ``document_ttl`` (a write after that many idle seconds
squashes first) and answers "is it due?"; each backend counts and does the work its own way.
A stored update that is not valid Yjs makes the store corrupt, never empty (``undecodable``).
Stores ``report`` each compaction they commit; the server's metrics ``observe`` them, so
that stores import nothing of the server. Automatic compactions take turns (``turn``): one at
a time per event loop, with a rest after each.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Sequence

import anyio
from anyio.lowlevel import RunVar

from jupyter_ystore.errors import YStoreCorruptError
from jupyter_ystore.stores import squash_helper
from jupyter_ystore.stores.retention import Retention
from jupyter_ystore.stores.settings import checked

log = logging.getLogger("jupyter_ystore")


@dataclass(frozen=True)
class Policy:
    """A store's compaction settings, fixed when it opens (0 and None: never), and which
    history points compaction keeps (``retention``: none unless the store says)."""

    ttl: float | None = None
    max_updates: int | None = None
    max_bytes: int | None = None
    retention: Retention = Retention(())

    @classmethod
    def of(cls, store: Any) -> Policy:
        """From ``store``'s traits, checked again (a subclass may set plain attributes)."""
        ttl, max_updates, max_bytes = (
            checked(store, name) if hasattr(store, name) else None
            for name in ("document_ttl", "compact_after_updates", "compact_after_bytes")
        )
        retention = (
            Retention.parse(checked(store, "history_retention"))
            if hasattr(store, "history_retention")
            else Retention(())
        )
        policy = cls(
            None if ttl is None else float(ttl), max_updates or None, max_bytes or None, retention
        )
        if len(_POLICIES) >= 256:  # (settings that change all the time: no cache to speak of)
            _POLICIES.clear()
        return _POLICIES.setdefault(policy, policy)

    @property
    def automatic(self) -> bool:
        """Whether a threshold is set at all."""
        return bool(self.max_updates or self.max_bytes)

    def due(self, updates: int, nbytes: int) -> bool:
        """Whether ``updates`` updates of ``nbytes`` bytes after the snapshot call for one."""
        return bool(
            (self.max_updates and updates >= self.max_updates)
            or (self.max_bytes and nbytes >= self.max_bytes)
        )

    def idle(self, last: float | None, now: float) -> bool:
        """Whether a write at ``now`` squashes first, the last update being at ``last``."""
        return self.ttl is not None and last is not None and now - last > self.ttl


#: One object for each distinct policy (frozen, so shared): every open store keeps its policy,
#: and equal ones (nearly always all of a server's) were seven objects a store, its retention
#: tiers included, for every full garbage collection to walk.
_POLICIES: dict[Policy, Policy] = {}


def undecodable(document: str, exc: BaseException, where: str | None = None) -> YStoreCorruptError:
    """The error for a stored update of ``document`` that is not valid Yjs (found loading
    or squashing it); ``where`` names the file or database (default: the document)."""
    return YStoreCorruptError(
        f"a stored update of document {document!r} is not a valid Yjs update ({exc})",
        path=where or document,
        hint="the store was left untouched; restore it from a backup, or delete this "
        "document's history to rebuild it from its file",
    )


def squash(updates: Sequence[bytes], document: str, where: str | None = None) -> tuple[bytes, bool]:
    """The snapshot of ``updates`` and whether it is clean (``ydoc.squash_clean``: a backend
    that records it lets loads skip checking the snapshot); any thread. An update that does
    not decode raises ``undecodable``."""
    try:
        return squash_helper.squash_clean(updates)
    except Exception as exc:
        raise undecodable(document, exc, where) from exc


# ---------------------------------------------------------------------- turns

_turn: RunVar[anyio.Lock] = RunVar("jupyter_ystore_compaction_turn")

#: After an automatic compaction, the next one of the event loop waits this many times as
#: long as it took (at most ``LONGEST_REST`` seconds): compaction gets a quarter of the time.
REST = 3.0
LONGEST_REST = 0.5


@asynccontextmanager
async def turn() -> AsyncIterator[None]:
    """Around an automatic compaction: the others of this event loop wait until it is over,
    and then for a rest proportional to it (``REST``).

    Rooms typed at the same pace pass their threshold in the same second (48 rooms of ten
    typists: 1,000 updates each after 20 s). Compacting them side by side put as many worker
    threads on reading, planning and squashing at once. A thread busy in Python keeps the GIL
    for up to the switch interval (5 ms) each time the event loop gives it up for a system
    call, so the loop, which makes thousands a second, crawls while any such thread runs:
    measured, 50-100 ms pauses and keystrokes relayed 0.36 s late in every room for about
    10 ms of work a compaction. One at a time, with rests between, the loop catches up in
    the rests. Nothing waits for an automatic compaction (writes go on, and a store's
    threshold is passed again until it runs), so a queue of them costs only their delay.
    """
    try:
        lock = _turn.get()
    except LookupError:
        lock = anyio.Lock()
        _turn.set(lock)
    async with lock:
        started = time.monotonic()
        yield
        await anyio.sleep(min(LONGEST_REST, REST * (time.monotonic() - started)))


# ---------------------------------------------------------------------- figures

_observers: list[Callable[[str], None]] = []


def observe(callback: Callable[[str], None]) -> None:
    """Call ``callback(store class name)`` after every compaction a store commits (any
    thread: the database thread of SQLite, a worker thread of a file store)."""
    _observers.append(callback)


def report(store_class: str) -> None:
    """A compaction of a ``store_class`` document committed."""
    for callback in tuple(_observers):
        try:
            callback(store_class)
        except Exception:  # a figure lost, never a compaction
            log.exception("reporting a compaction of a %s document", store_class)
