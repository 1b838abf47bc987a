"""Group commit: concurrent writes of a process share one transaction.

``write()`` must return only once its update is committed, and a commit costs a WAL flush.
Writers queue their update; whoever finds no commit in progress becomes the leader and
commits everything queued (its own update and the others') in one transaction, again and
again until its own update is in; then it hands the lead to the next queued writer. No
background task is needed, so the committer outlives no store and needs no task group.

Each batch is one statement, hence its own transaction: it takes the per-document advisory
locks (sorted, so two processes never deadlock) before any id is drawn from the table's
identity, and holds them until its commit is visible. For one document, ids are thus handed
out in commit order, which is what lets a reader fetch "id > last seen" without ever missing
a row that commits late.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anyio

from jupyter_ystore.errors import YStoreError
from jupyter_ystore.stores.postgres.names import Names, describe_dsn
from jupyter_ystore.stores.postgres.pool import connection_error, is_connection_failure

# A batch bigger than this is split; keeps one statement's arrays and the lock list sane.
MAX_BATCH_ITEMS = 2000
MAX_BATCH_BYTES = 8 * 1024 * 1024


@dataclass(eq=False)
class Pending:
    """One queued update and the outcome its writer waits for."""

    path: str
    update: bytes
    metadata: bytes
    timestamp: float
    origin: int
    finished: bool = False
    error: BaseException | None = None
    wake: anyio.Event = field(default_factory=anyio.Event)


class GroupCommitter:
    """Commits the queued updates of one table, many per transaction."""

    def __init__(self, pool: Any, names: Names, dsn: str):
        self._pool = pool
        self._names = names
        self._dsn = dsn
        self._queue: list[Pending] = []
        self._leading = False

    async def submit(self, item: Pending) -> None:
        """Queue ``item`` and return once it is committed (or raise why it was not)."""
        self._queue.append(item)
        try:
            while not item.finished:
                if self._leading:
                    await item.wake.wait()
                    item.wake = anyio.Event()
                    continue
                self._leading = True
                try:
                    await self._lead(item)
                finally:
                    self._leading = False
                    if self._queue:
                        self._queue[0].wake.set()
        except BaseException:
            # Cancelled while queued: the update was never sent, so it is simply dropped.
            if not item.finished and item in self._queue:
                self._queue.remove(item)
                if not self._leading and self._queue:
                    self._queue[0].wake.set()
            raise
        if item.error is not None:
            raise item.error

    async def _lead(self, own: Pending) -> None:
        while not own.finished and self._queue:
            batch = self._take_batch()
            error: BaseException | None = None
            # A batch that reached the server is finished whatever happens to the leader.
            with anyio.CancelScope(shield=True):
                try:
                    await self._commit(batch)
                except Exception as exc:
                    error = self._translate(exc)
            for item in batch:
                item.finished = True
                item.error = error
                item.wake.set()

    def _take_batch(self) -> list[Pending]:
        size = 0
        count = 0
        for item in self._queue:
            if count and (count >= MAX_BATCH_ITEMS or size + len(item.update) > MAX_BATCH_BYTES):
                break
            count += 1
            size += len(item.update)
        batch = self._queue[:count]
        del self._queue[:count]
        return batch

    async def _commit(self, batch: list[Pending]) -> None:
        names = self._names
        keys = sorted({names.write_key(item.path) for item in batch})
        async with self._pool.acquire() as conn:
            # One statement, no BEGIN/COMMIT: locks, inserts and notifies (see insert_batch).
            await conn.execute(
                names.insert_batch,
                [item.path for item in batch],
                [item.update for item in batch],
                [item.metadata for item in batch],
                [item.timestamp for item in batch],
                [item.origin for item in batch],
                names.channel,
                keys,
            )

    def _translate(self, exc: Exception) -> BaseException:
        if isinstance(exc, YStoreError):
            return exc
        if is_connection_failure(exc):
            return connection_error(self._dsn, exc, "lost the connection to")
        return YStoreError(
            f"could not write to {self._names.label} in {describe_dsn(self._dsn)}: "
            f"{type(exc).__name__}: {exc}",
            hint="the update was not stored",
        )
