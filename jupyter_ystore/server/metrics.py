"""The store's figures on the server's Prometheus ``/metrics`` endpoint.

jupyter_server serves prometheus_client's default registry at ``/metrics``; the metrics
below register there on import. Recording is a counter increment or a histogram
observation at the places the figures arise (the room writer, a room opening; compactions
are reported by the stores, see ``stores.compaction.observe``), never a lock of ours on the
write path. The bytes stored are not counted per
write (a write can replace older records, compaction drops them): they are read from the
store's ``list_documents()`` at start-up, every ``BYTES_REFRESH`` seconds and whenever a
room closes, off the write path.

Every metric is labelled by the store class (``store="SQLiteYStore"``).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import anyio
from prometheus_client import Counter, Gauge, Histogram

from jupyter_ystore.errors import YDocNotFound
from jupyter_ystore.stores import compaction

UPDATES_WRITTEN = Counter(
    "jupyter_ystore_updates_written",
    "Updates written to the store (one per store write; a write holds consecutive changes "
    "of one author).",
    ["store"],
)
WRITE_SECONDS = Histogram(
    "jupyter_ystore_write_seconds",
    "Time for one store write to be durable.",
    ["store"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
LOAD_SECONDS = Histogram(
    "jupyter_ystore_load_seconds",
    "Time to load a document's stored history when its room opens.",
    ["store"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
COMPACTIONS = Counter(
    "jupyter_ystore_compactions",
    "Documents compacted (their history replaced by one snapshot).",
    ["store"],
)
BYTES_STORED = Gauge(
    "jupyter_ystore_bytes_stored",
    "Bytes of updates and snapshots in the store, all documents (refreshed periodically).",
    ["store"],
)
STORE_WRITE_ERRORS = Counter(
    "jupyter_ystore_store_write_errors",
    "Store writes that failed (an outage: the changes went to a spill file or stayed in "
    "memory, and were retried).",
    ["store"],
)
SPILLED_UPDATES = Counter(
    "jupyter_ystore_spilled_updates",
    "Changes written to a local spill file because the store failed (written back later).",
    ["store"],
)
ROOMS_IN_OUTAGE = Gauge(
    "jupyter_ystore_rooms_in_outage",
    "Open documents whose store currently fails to take their writes.",
)
REFUSED_UPDATES = Counter(
    "jupyter_ystore_refused_updates",
    "Client updates refused before reaching a document (malformed, or not fitting it); the "
    "sender was disconnected.",
)
OPEN_ROOMS = Gauge(
    "jupyter_ystore_open_rooms",
    "Rooms open in this server: documents, forks (timeline, fork API) and awareness rooms.",
    ["kind"],
)

#: Seconds between two readings of the bytes stored.
BYTES_REFRESH = 60.0
#: At least this many seconds between two readings (rooms closing in a burst: one reading).
BYTES_REFRESH_MIN = 2.0


def store_label(store: Any) -> str:
    return type(store).__name__


def _count_compaction(store_class: str) -> None:
    COMPACTIONS.labels(store_class).inc()


# The stores report their compactions (from any thread); they import nothing of ours.
compaction.observe(_count_compaction)


async def stored_bytes(store: Any) -> int | None:
    """The bytes ``store``'s backend holds for every document, or None when it cannot say."""
    try:
        async with store:
            infos = await store.list_documents()
    except (NotImplementedError, YDocNotFound):
        return None
    return sum(info.bytes for info in infos)


_wakeups: set[anyio.Event] = set()


def request_bytes_refresh() -> None:
    """Read the bytes stored now (a room closed: its history is complete in the store)."""
    for event in list(_wakeups):
        event.set()


async def refresh_bytes_stored(
    make_store: Callable[[], Any], log: logging.Logger, interval: float = BYTES_REFRESH
) -> None:
    """Keep ``jupyter_ystore_bytes_stored`` current, for as long as the server runs: at
    start, every ``interval`` seconds and when a room closes."""
    failures = 0
    while True:
        wakeup = anyio.Event()
        _wakeups.add(wakeup)
        store = make_store()
        try:
            total = await stored_bytes(store)
        except Exception as exc:  # the store's own errors are logged by the rooms too
            failures += 1
            if failures == 1:
                log.warning("jupyter_ystore metrics: cannot read the bytes stored: %s", exc)
        else:
            failures = 0
            if total is None:
                return  # this backend has no listing: the gauge stays unset
            BYTES_STORED.labels(store_label(store)).set(total)
        try:
            await anyio.sleep(min(BYTES_REFRESH_MIN, interval))
            with anyio.move_on_after(max(0.0, interval - BYTES_REFRESH_MIN)):
                await wakeup.wait()
        finally:
            _wakeups.discard(wakeup)
