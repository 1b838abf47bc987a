"""Compaction of one document: the stored rows replaced by one snapshot, atomically.

Several servers may compact the same document: ``pg_try_advisory_xact_lock`` on the
document's compaction key lets one do it and the others skip (it is being done). Writers do
not take that lock, so they are never blocked by a compaction; an update committed while the
snapshot is being computed has a higher id than every row the snapshot covers (see
``_pg_commit``), and the delete takes only ``id <= the newest id read``, in the same
transaction that inserts the snapshot. The snapshot reuses that id, so "order by id" still
reads: snapshot, then the updates after it.

History: in the same transaction, the updates the snapshot replaces become retained points
(``stores/retention.py``) in ``<table>_history``: rows whose ``upto`` is the newest id they
cover, so the updates with a higher id are the history's raw tail. Only compactions (and
version renames) change that table, all under the document's compaction lock, so the rows
read are the rows replaced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jupyter_ystore.core import threads
from jupyter_ystore.stores import retention as _retention
from jupyter_ystore.stores import squash_helper
from jupyter_ystore.stores.compaction import Policy, squash
from jupyter_ystore.stores.postgres.names import CLEAN_SNAPSHOT_ORIGIN, Names
from jupyter_ystore.stores.retention import ChainChange, Retention, Row, StoredHistory


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
    retention: Retention | None = None,
    now: float = 0.0,
    name: str | None = None,
    saved_by: str | None = None,
) -> CompactResult:
    """Snapshot ``path`` if its updates after the last snapshot make ``policy`` due (None:
    whenever there is anything to merge, or a version ``name`` to save), keeping history
    points as ``retention`` says (None: none, and the stored ones untouched).

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
            if not (wanted or (name is not None and rows)):
                if policy is None and retention is not None and rows:
                    # Nothing to merge, but the points are thinned for ``now``: the last
                    # compaction may have planned them with an earlier time.
                    change = await _history_change(
                        conn, names, path, rows, retention, now, None, None
                    )
                    if change is not None and not change.empty:
                        await apply_history(conn, names, path, change)
                return CompactResult(
                    done=False, tail_updates=tail_updates, tail_bytes=tail_bytes
                )
            covered = rows[-1]["id"]
            updates = [row["yupdate"] for row in rows]
            change = None
            if retention is not None:
                change = await _history_change(
                    conn, names, path, rows, retention, now, name, saved_by
                )
            snapshot, clean = await threads.run_sync(squash_helper.run, squash, updates, path)
            await conn.execute(names.delete_upto, path, covered)
            await conn.execute(
                names.insert_snapshot,
                covered,
                path,
                snapshot,
                b"",
                rows[-1]["timestamp"],
                CLEAN_SNAPSHOT_ORIGIN if clean else 0,
            )
            if change is not None:
                await apply_history(conn, names, path, change)
            return CompactResult(
                done=True, covered_id=covered, tail_updates=tail_updates, tail_bytes=tail_bytes
            )


def _row(record: Any, *, deltas: bool = False) -> Row:
    return Row(
        record["seq"],
        record["first_ts"],
        record["last_ts"],
        record["upto"],
        bytes(record["points"]),
        bytes(record["deltas"]) if deltas else None,
    )


async def _history_change(
    conn: Any,
    names: Names,
    path: str,
    rows: list[Any],
    retention: Retention,
    now: float,
    name: str | None,
    saved_by: str | None,
) -> ChainChange | None:
    """The history points of a compaction of ``rows``: the rows the stored points do not
    cover become points (a snapshot they do not hold: the chain's base)."""
    stored = [_row(r) for r in await conn.fetch(names.select_history_headers, path)]
    if not stored and retention.keeps_nothing and name is None:
        return None
    upto = max((row.upto for row in stored), default=0)
    fresh = [r for r in rows if r["id"] > upto]
    records = [(bytes(r["yupdate"]), bytes(r["metadata"]), r["timestamp"]) for r in fresh]
    base = bool(fresh) and fresh[0]["snapshot"]
    plan = await threads.run_sync(
        lambda: _retention.plan_chain(
            stored,
            _retention.new_points(records, snapshot_first=base),
            now,
            retention,
            upto=rows[-1]["id"],
            name=name,
            saved_by=saved_by,
            document=path,
        )
    )
    deltas = {}
    if plan.needs:
        for record in await conn.fetch(names.select_history_deltas, path, sorted(plan.needs)):
            deltas[record["seq"]] = bytes(record["deltas"])
    return await threads.run_sync(squash_helper.run, plan.build, deltas)


async def apply_history(conn: Any, names: Names, path: str, change: ChainChange) -> None:
    """Inside the compaction's transaction: delete and insert ``change``'s rows."""
    if change.delete:
        await conn.execute(names.delete_history_rows, path, change.delete)
    if change.insert:
        rows = change.insert
        await conn.execute(
            names.insert_history_rows,
            path,
            [row.seq for row in rows],
            [row.first_ts for row in rows],
            [row.last_ts for row in rows],
            [row.upto for row in rows],
            [row.meta for row in rows],
            [row.deltas for row in rows],
        )


async def read_history(conn: Any, names: Names, path: str, with_points: bool) -> StoredHistory:
    """``path``'s retained points and log records, in the caller's (repeatable read)
    transaction."""
    stored = (
        [_row(r, deltas=True) for r in await conn.fetch(names.select_history, path)]
        if with_points
        else []
    )
    upto = max((row.upto for row in stored), default=0)
    records = []
    snapshots = 0
    for r in await conn.fetch(names.select_document, path):
        if r["id"] <= upto:
            continue
        if r["snapshot"] and not records:
            snapshots = 1
        records.append((bytes(r["yupdate"]), bytes(r["metadata"]), r["timestamp"]))
    return StoredHistory(_retention.points_of(stored), records, snapshots)


async def delete_version(conn: Any, names: Names, path: str, name: str) -> None:
    """Remove a version's name, under the document's compaction lock, in one transaction."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", names.compact_key(path))
        stored = [_row(r, deltas=True) for r in await conn.fetch(names.select_history, path)]
        seq = max((row.seq for row in stored), default=0) + 1
        await apply_history(conn, names, path, _retention.rename_version(stored, name, None, seq))
