"""Compaction of one document: the stored rows replaced by one snapshot, atomically.

Several servers may compact the same document: ``pg_try_advisory_xact_lock`` on the
document's compaction key lets one do it and the others skip (it is being done). Writers do
not take that lock, so they are never blocked by a compaction; an update committed while the
snapshot is being computed has a higher id than every row the snapshot covers (see
``_pg_commit``), and the delete takes only ``id <= the newest id read``, in the same
transaction that inserts the snapshot. The snapshot reuses that id, so "order by id" still
reads: snapshot, then the updates after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio

from jupyter_ystore.stores.compaction import Policy, squash
from jupyter_ystore.stores.postgres.names import Names


@dataclass(frozen=True)
class CompactResult:
    """What a compaction attempt found and did."""

    done: bool  # a snapshot was written
    busy: bool = False  # another transaction holds the document's compaction lock
    covered_id: int = 0  # the newest id the snapshot covers
    tail_updates: int = 0  # updates after the snapshot when the decision was taken
    tail_bytes: int = 0


async def compact_document(
    pool: Any,
    names: Names,
    path: str,
    *,
    policy: Policy | None = None,
    wait: bool = False,
) -> CompactResult:
    """Snapshot ``path`` if its updates after the last snapshot make ``policy`` due (None:
    whenever there is anything to merge).

    ``wait=False`` (automatic compaction) skips a document another transaction is
    compacting; ``wait=True`` (an explicit request) waits for it, then merges what is left.
    """
    async with pool.acquire() as conn:
        async with conn.transaction():
            if wait:
                await conn.execute("SELECT pg_advisory_xact_lock($1)", names.compact_key(path))
            elif not await conn.fetchval(
                "SELECT pg_try_advisory_xact_lock($1)", names.compact_key(path)
            ):
                return CompactResult(done=False, busy=True)
            rows = await conn.fetch(names.select_document, path)
            tail = [row for row in rows if not row["snapshot"]]
            tail_updates = len(tail)
            tail_bytes = sum(len(row["yupdate"]) for row in tail)
            wanted = tail_updates > 0 and (policy is None or policy.due(tail_updates, tail_bytes))
            if not wanted:
                return CompactResult(
                    done=False, tail_updates=tail_updates, tail_bytes=tail_bytes
                )
            covered = rows[-1]["id"]
            updates = [row["yupdate"] for row in rows]
            snapshot = await anyio.to_thread.run_sync(squash, updates, path)
            await conn.execute(names.delete_upto, path, covered)
            await conn.execute(
                names.insert_snapshot, covered, path, snapshot, b"", rows[-1]["timestamp"]
            )
            return CompactResult(
                done=True, covered_id=covered, tail_updates=tail_updates, tail_bytes=tail_bytes
            )
