"""Compaction on the shared layout: a snapshot row replaces the rows it covers.

Split so that the CPU work (squashing) can run outside the database thread: ``read`` the rows
(one statement, a consistent view), squash them anywhere, then ``replace`` inside a write
transaction, which first checks that the rows read are all still there (another process may
have compacted meanwhile: then ``Changed`` is raised and the caller starts again). The
snapshot takes the rowid of the newest row it covers, free once that row is deleted and lower
than every row written since, so insertion order still puts it first.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass

from jupyter_ystore.stores.compaction import squash  # noqa: F401 (called as compact.squash)
from jupyter_ystore.stores.sqlite import compat
from jupyter_ystore.stores.sqlite.queries import INSERT
from jupyter_ystore.stores.sqlite.schema import Schema

log = logging.getLogger("jupyter_ystore.sqlite")


class Changed(Exception):
    """Another connection changed the rows a compaction read; try again."""


@dataclass
class CompactionInput:
    """The records a compaction covers."""

    updates: list[bytes]
    last_row: int | None  # newest yupdates rowid covered (None: only a legacy checkpoint)
    count: int  # yupdates rows covered
    timestamp: float  # newest covered: the snapshot's timestamp
    metadata: bytes  # of the newest covered row
    has_snapshot: bool

    @property
    def worth_it(self) -> bool:
        """False when the document already is a lone snapshot."""
        return len(self.updates) > 1 or not self.has_snapshot


def read(conn: sqlite3.Connection, schema: Schema, path: str) -> CompactionInput | None:
    """What a compaction of ``path`` would cover (None when nothing is stored)."""
    updates: list[bytes] = []
    timestamp = 0.0
    checkpoint = compat.read_checkpoint(conn, schema.layout, path)
    if checkpoint is not None:
        updates.append(checkpoint[0])
        timestamp = checkpoint[1]
    rows = conn.execute(
        "SELECT rowid, yupdate, metadata, timestamp FROM yupdates WHERE path = ? ORDER BY rowid",
        (path,),
    ).fetchall()
    if not rows and checkpoint is None:
        return None
    for _rowid, update, _metadata, ts in rows:
        updates.append(bytes(update or b""))
        timestamp = max(timestamp, ts)
    snapshot_row = schema.snapshot_row(conn, path)
    return CompactionInput(
        updates=updates,
        last_row=rows[-1][0] if rows else None,
        count=len(rows),
        timestamp=timestamp,
        metadata=bytes(rows[-1][2] or b"") if rows else b"",
        has_snapshot=snapshot_row is not None and checkpoint is None,
    )


def replace(
    conn: sqlite3.Connection, schema: Schema, path: str, data: CompactionInput, snapshot: bytes
) -> None:
    """Inside a write transaction: delete the rows ``data`` covers, insert ``snapshot``."""
    if data.last_row is not None:
        (still,) = conn.execute(
            "SELECT count(*) FROM yupdates WHERE path = ? AND rowid <= ?", (path, data.last_row)
        ).fetchone()
        if still != data.count:
            raise Changed
        conn.execute("DELETE FROM yupdates WHERE path = ? AND rowid <= ?", (path, data.last_row))
        conn.execute(
            "INSERT INTO yupdates (rowid, path, yupdate, metadata, timestamp) "
            "VALUES (?, ?, ?, ?, ?)",
            (data.last_row, path, snapshot, data.metadata, data.timestamp),
        )
        row = data.last_row
    else:
        row = conn.execute(INSERT, (path, snapshot, b"", data.timestamp)).lastrowid
    if schema.has_checkpoints:  # its content is in the snapshot now
        conn.execute("DELETE FROM ycheckpoints WHERE path = ?", (path,))
    schema.ensure_snapshots_table(conn)
    conn.execute(
        "INSERT OR REPLACE INTO ystore_snapshots (path, row, timestamp, covered) "
        "VALUES (?, ?, ?, ?)",
        (path, row, data.timestamp, len(data.updates)),
    )


#: An automatic compaction gives pages back to the file system only once this share of the
#: file is free: below it the freed pages are reused by the next writes anyway, and moving
#: them plus an immediate WAL checkpoint (a copy of every changed page and two fsyncs) cost
#: more than the writes they follow. Measured, 20 documents written at once, a compaction
#: every 1,000 updates of each: 17,400 updates/s reclaiming every time, 25,800 with no
#: compaction at all.
AUTOMATIC_RECLAIM_SHARE = 0.25


def reclaim(conn: sqlite3.Connection, db_path: str, *, automatic: bool = False) -> None:
    """Give freed pages back to the file system so that the file shrinks.

    New databases use auto_vacuum=INCREMENTAL. A legacy one without auto_vacuum is converted
    by one VACUUM once a quarter of it is free (it stays readable by the libraries that wrote
    it). After an ``automatic`` compaction only a large free share is given back, and the WAL
    is left to SQLite's own checkpoint. Failing here loses nothing, so it is only logged.
    """
    try:
        (free,) = conn.execute("PRAGMA freelist_count").fetchone()
        if not free:
            return
        if automatic:
            (pages,) = conn.execute("PRAGMA page_count").fetchone()
            if free < pages * AUTOMATIC_RECLAIM_SHARE:
                return
        (mode,) = conn.execute("PRAGMA auto_vacuum").fetchone()
        if mode == 2:
            # executescript steps the pragma to the end; execute() would free one page.
            conn.executescript("PRAGMA incremental_vacuum;")
        elif mode == 0:
            (pages,) = conn.execute("PRAGMA page_count").fetchone()
            if free * 4 < pages:
                return
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            conn.execute("VACUUM")
        # The file itself shrinks when the WAL is copied back: now, if no reader holds it.
        if not automatic:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    except sqlite3.Error as exc:
        log.warning("could not shrink %s after compaction: %s", db_path, exc)
