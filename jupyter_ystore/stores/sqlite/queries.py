"""Reads and deletions on the shared layout (run in the database thread)."""

from __future__ import annotations

import bisect
import sqlite3
from typing import Any

from jupyter_ystore.stores.base import DocumentInfo
from jupyter_ystore.stores.sqlite import attributes, compat, history, pending
from jupyter_ystore.stores.sqlite.schema import Schema

INSERT = "INSERT INTO yupdates (path, yupdate, metadata, timestamp) VALUES (?, ?, ?, ?)"
_ROWS = "SELECT rowid, yupdate, metadata, timestamp FROM yupdates WHERE path = ? ORDER BY rowid"
# Both tables: the database thread folds before reading, but a read-only file cannot be folded.
_ROWS_AND_PENDING = (
    "SELECT rowid AS r, yupdate, metadata, timestamp FROM yupdates WHERE path = ? "
    f"UNION ALL SELECT rowid, yupdate, metadata, timestamp FROM {pending.TABLE} WHERE path = ? "
    "ORDER BY r"
)

# What a load needs: the updates only (a third of the per-row work of reading records).
_UPDATES = (
    "SELECT rowid, CAST(coalesce(yupdate, X'') AS BLOB), 0 FROM yupdates WHERE path = ? "
    "ORDER BY rowid"
)
_ONE_UPDATE = "SELECT CAST(coalesce(yupdate, X'') AS BLOB) FROM yupdates WHERE rowid = ?"
_UPDATES_EXCEPT = (
    "SELECT rowid, CAST(coalesce(yupdate, X'') AS BLOB), 0 FROM yupdates "
    "WHERE path = ? AND rowid <> ? ORDER BY rowid"
)
_UPDATES_AND_PENDING_EXCEPT = (
    "SELECT rowid AS r, CAST(coalesce(yupdate, X'') AS BLOB), 0 FROM yupdates "
    "WHERE path = ? AND rowid <> ? "
    f"UNION ALL SELECT rowid, CAST(coalesce(yupdate, X'') AS BLOB), 1 FROM {pending.TABLE} "
    "WHERE path = ? ORDER BY r"
)
_UPDATES_AND_PENDING = (
    "SELECT rowid AS r, CAST(coalesce(yupdate, X'') AS BLOB), 0 FROM yupdates WHERE path = ? "
    f"UNION ALL SELECT rowid, CAST(coalesce(yupdate, X'') AS BLOB), 1 FROM {pending.TABLE} "
    "WHERE path = ? ORDER BY r"
)


def read_updates(
    conn: sqlite3.Connection, schema: Schema, path: str
) -> tuple[list[bytes], int, bool, bool]:
    """``read_rows`` without metadata and timestamps: the updates that restore ``path``, the
    newest rowid read, whether the first update is a snapshot a compaction of ours wrote
    (encoded from a document: loading checks only its structs, see ``snapshot_waits``) and
    whether it was recorded as clean (loading checks nothing of it)."""
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN")  # the snapshot and the rows after it, as of one moment
    try:
        checkpoint = compat.read_checkpoint(conn, schema.layout, path)
        head = schema.snapshot_head(conn, path) if checkpoint is None else None
        if head is None:
            rows = (
                conn.execute(_UPDATES_AND_PENDING, (path, path))
                if schema.has_pending
                else conn.execute(_UPDATES, (path,))
            ).fetchall()
            updates = [update for _rowid, update, _pending in rows]
            if checkpoint is not None:
                updates.insert(0, checkpoint[0])
            return updates, rows[-1][0] if rows else 0, False, False
        # The snapshot (the one big row) apart: sorting the rows into rowid order copies each
        # of them, and copying ~400 KB took as long as reading a thousand updates after it.
        snapshot_row, clean = head
        (snapshot,) = conn.execute(_ONE_UPDATE, (snapshot_row,)).fetchone()
        rows = (
            conn.execute(_UPDATES_AND_PENDING_EXCEPT, (path, snapshot_row, path))
            if schema.has_pending
            else conn.execute(_UPDATES_EXCEPT, (path, snapshot_row))
        ).fetchall()
    finally:
        if own and conn.in_transaction:
            conn.execute("COMMIT")
    position = bisect.bisect_left([row[0] for row in rows], snapshot_row)
    updates = [update for _rowid, update, _pending in rows]
    updates.insert(position, snapshot)
    last_row = max(snapshot_row, rows[-1][0]) if rows else snapshot_row
    return updates, last_row, position == 0, position == 0 and clean


def read_rows(
    conn: sqlite3.Connection, schema: Schema, path: str
) -> tuple[list[tuple[bytes, bytes, float]], int]:
    """Everything stored for ``path``, oldest first: a pycrdt-store checkpoint if any, then
    the rows in insertion (rowid) order, which puts our snapshot first; and the newest
    rowid read (0 if none), where a live-update watcher of this load starts."""
    records: list[tuple[bytes, bytes, float]] = []
    last_row = 0
    checkpoint = compat.read_checkpoint(conn, schema.layout, path)
    if checkpoint is not None:
        records.append((checkpoint[0], b"", checkpoint[1]))
    rows = (
        conn.execute(_ROWS_AND_PENDING, (path, path))
        if schema.has_pending
        else conn.execute(_ROWS, (path,))
    )
    for rowid, update, metadata, timestamp in rows:
        records.append((bytes(update or b""), bytes(metadata or b""), float(timestamp)))
        last_row = rowid
    return records, last_row


def tail_stats(
    conn: sqlite3.Connection, schema: Schema, path: str
) -> tuple[int, int, float | None]:
    """Rows and bytes after ``path``'s snapshot (all rows without one), newest timestamp."""
    snapshot_row = schema.snapshot_row(conn, path)
    count, nbytes = conn.execute(
        "SELECT count(*), coalesce(sum(length(yupdate)), 0) FROM yupdates "
        "WHERE path = ? AND rowid > ?",
        (path, -1 if snapshot_row is None else snapshot_row),
    ).fetchone()
    (last_ts,) = conn.execute(
        "SELECT max(timestamp) FROM yupdates WHERE path = ?", (path,)
    ).fetchone()
    return count, nbytes, last_ts


def list_documents(conn: sqlite3.Connection, schema: Schema) -> list[DocumentInfo]:
    """Every document of the database; a pycrdt-store checkpoint counts as a record and a
    snapshot."""
    found: dict[str, list[Any]] = {}
    for path, count, nbytes, first, last in conn.execute(
        "SELECT path, count(*), coalesce(sum(length(yupdate)), 0), min(timestamp), "
        "max(timestamp) FROM yupdates GROUP BY path"
    ):
        found[path] = [count, nbytes, first, last, 0]
    if schema.has_snapshots:
        for (path,) in conn.execute(
            "SELECT s.path FROM ystore_snapshots AS s JOIN yupdates AS u "
            "ON u.rowid = s.row AND u.path = s.path"
        ):
            found[path][4] += 1
    if schema.has_checkpoints:
        for path, nbytes, timestamp in conn.execute(
            "SELECT path, length(checkpoint), timestamp FROM ycheckpoints"
        ):
            info = found.setdefault(path, [0, 0, timestamp, timestamp, 0])
            info[0] += 1
            info[1] += nbytes or 0
            info[2] = min(info[2], timestamp)
            info[3] = max(info[3], timestamp)
            info[4] += 1
    return [
        DocumentInfo(path, count, nbytes, first, last, snapshots)
        for path, (count, nbytes, first, last, snapshots) in sorted(found.items())
    ]


def delete_document(conn: sqlite3.Connection, schema: Schema, path: str) -> None:
    """Remove every trace of ``path`` in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("DELETE FROM yupdates WHERE path = ?", (path,))
        if schema.has_pending:
            conn.execute(f"DELETE FROM {pending.TABLE} WHERE path = ?", (path,))
        if schema.has_checkpoints:
            conn.execute("DELETE FROM ycheckpoints WHERE path = ?", (path,))
        if schema.has_snapshots:
            conn.execute("DELETE FROM ystore_snapshots WHERE path = ?", (path,))
        attributes.delete(conn, schema, path)
        history.delete(conn, schema, path)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
