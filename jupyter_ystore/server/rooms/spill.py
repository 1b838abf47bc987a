"""Spill files: where a room keeps the changes its store refused during an outage.

While a store fails (PostgreSQL restarting, a full disk, SQLite locked past its busy
timeout) collaboration goes on: every change is appended, fsynced, to a local log before it
is relayed, so an acknowledged edit survives the outage, the room closing and even a crash
of the server. When the store takes writes again, the spilled records are written to it in
their order with their metadata, and the spill file is deleted. A spill left behind (the
room closed during the outage, the server crashed) is written back when the document's room
next opens, and at start-up.

A spill file is a ``FileYStore`` log (the ypy-websocket VERSION:2 format: torn tails are
recovered) under ``<spill_dir>/<store identity>/``, named by the document's key. The store
identity (class and location: database file, folder or DSN and schema) keeps spills of one
store from ever being written into another.
"""

from __future__ import annotations

import hashlib
import logging
import os

from jupyter_ystore.core import threads
from jupyter_ystore.errors import YDocNotFound
from jupyter_ystore.stores.base import BaseYStore
from jupyter_ystore.stores.file.store import FileYStore

#: Traits that say where a store keeps its data (whichever the store class has).
_LOCATION_TRAITS = ("db_path", "root_dir", "dsn", "schema", "table_name")


def store_identity(store: BaseYStore) -> str:
    """A folder name that differs for stores that keep their data in different places."""
    traits = store.trait_names()
    location = [f"{name}={getattr(store, name)!r}" for name in _LOCATION_TRAITS if name in traits]
    digest = hashlib.sha256("\n".join(location).encode()).hexdigest()[:16]
    return f"{type(store).__name__}-{digest}"


class Spill:
    """The spill files of one store location (one folder of logs named by document key)."""

    def __init__(self, spill_dir: str, store: BaseYStore, log: logging.Logger) -> None:
        self.folder = os.path.join(os.path.abspath(os.path.expanduser(spill_dir)), store_identity(store))
        self.log = log

    def log_for(self, key: str) -> FileYStore:
        """The spill log of one document (not started); ``key`` is a document key, never a
        path (a FileYStore refuses one that would leave the spill folder)."""
        return FileYStore(key, log=self.log, root_dir=self.folder)

    def keys(self) -> list[str]:
        """Documents that have a spill file (blocking: call in a worker thread)."""
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if not n.startswith(".~") and ".torn-" not in n and not n.endswith(".tmp"))

    def has(self, key: str) -> bool:
        if os.path.isabs(key) or os.sep in key:
            raise ValueError(f"a spill is named by a document key, not a path: {key!r}")
        return os.path.exists(os.path.join(self.folder, key))

    async def replay(self, key: str, store: BaseYStore) -> int:
        """Write ``key``'s spilled records into ``store`` (running), each with its metadata,
        then delete the spill file; returns how many were written. A failure leaves the
        spill file as it was, to be replayed again (an update written twice changes
        nothing)."""
        if not await threads.run_sync(self.has, key):
            return 0
        spill = self.log_for(key)
        async with spill:
            try:
                records = [record async for record in spill.read()]
            except YDocNotFound:
                records = []
            for update, metadata, _timestamp in records:
                await store.write(update, metadata=metadata)
            await spill.delete()
        return len(records)
