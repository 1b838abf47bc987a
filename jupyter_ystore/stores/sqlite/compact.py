"""Compaction on the shared layout: a snapshot row replaces the rows it covers.

Split so that the CPU work (squashing) can run outside the database thread: ``read`` the rows
(one statement, a consistent view), squash them anywhere, then ``replace`` inside a write
transaction, which first checks that the rows read are all still there (another process may
have compacted meanwhile: then ``Changed`` is raised and the caller starts again). The
snapshot takes the rowid of the newest row it covers, free once that row is deleted and lower
than every row written since, so insertion order still puts it first.

``Compactor`` drives it for one database (``db.SharedDatabase``): the counts of each
document's updates after its snapshot (for ``compaction.Policy``), automatic and explicit
compaction (read on a second connection in a worker thread, so that writers keep
committing; squash in a worker thread; replace on the database thread), and the
``document_ttl`` squash inside a write's transaction, as the seed did.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import anyio

from jupyter_ystore.errors import YStoreError, YStorePermissionError
from jupyter_ystore.stores.compaction import Policy, report, squash
from jupyter_ystore.stores.damaged import is_damaged_copy
from jupyter_ystore.stores.sqlite import compat, queries
from jupyter_ystore.stores.sqlite.queries import INSERT
from jupyter_ystore.stores.sqlite.schema import Schema

if TYPE_CHECKING:
    from jupyter_ystore.stores.sqlite.db import SharedDatabase

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


class Tail:
    """A document's history after its snapshot, as this process has seen it."""

    __slots__ = ("count", "nbytes", "last_ts")

    def __init__(self, count: int, nbytes: int, last_ts: float | None):
        self.count = count
        self.nbytes = nbytes
        self.last_ts = last_ts


class Compactor:
    """Compaction of the documents of one database, and the counts that decide it.

    ``tails`` and the ``*_job`` and ``squash_idle`` methods belong to the database thread;
    ``compact`` runs on an event loop, ``_read`` in a worker thread.
    """

    def __init__(self, db: SharedDatabase):
        self.db = db
        self.tails: dict[str, Tail] = {}
        self._running: set[str] = set()  # automatic compactions in progress
        self._running_lock = threading.Lock()
        self._reader: sqlite3.Connection | None = None
        self._reader_lock = threading.Lock()

    # ------------------------------------------------------------------ event-loop side

    async def compact(self, path: str, *, policy: Policy | None = None) -> bool:
        """Replace ``path``'s history by one snapshot. Returns False if there was nothing to do.

        With a ``policy`` (automatic compaction) it is skipped unless the document still
        passes its thresholds and no other compaction of it runs in this process; explicit
        ones always run (both are safe together).
        """
        db, automatic = self.db, policy is not None
        if is_damaged_copy(db.db_path):  # read into memory, read-only
            if automatic:
                return False
            raise YStorePermissionError("a damaged copy cannot be compacted", path=db.db_path)
        if automatic:
            with self._running_lock:
                if path in self._running:
                    return False
                self._running.add(path)
        try:
            for _attempt in range(5):
                # After the usual fold of pending rows, so that the read below sees them. False:
                # a compaction that finished meanwhile already did it.
                wanted = await db.call(
                    lambda conn, schema: policy is None or self.wants(path, policy),
                    f"reading {path!r} to compact it",
                )
                if not wanted:
                    data = None
                elif db.db_path == ":memory:":  # no second connection sees that database
                    data = await db.call(
                        lambda conn, schema: read(conn, schema, path),
                        f"reading {path!r} to compact it",
                    )
                else:
                    data = await anyio.to_thread.run_sync(self._read, path)
                if data is None or (automatic and not data.worth_it):
                    return False
                snapshot = await anyio.to_thread.run_sync(
                    squash, data.updates, path, db.db_path
                )
                replace_it = self._replace_job(path, data, snapshot, automatic)
                if await db.call(replace_it, f"compacting {path!r}"):
                    return True
            raise YStoreError(
                f"document {path!r} kept changing under compaction (5 attempts)",
                path=db.db_path,
                hint="another process is rewriting it; nothing was lost, try again later",
            )
        finally:
            if automatic:
                with self._running_lock:
                    self._running.discard(path)

    def _read(self, path: str) -> CompactionInput | None:
        """In a worker thread, on the reader connection, in one read transaction. (Rows
        committed after it come after the snapshot; ``replace`` checks the rows read.)"""
        db = self.db
        with self._reader_lock:
            schema = db.schema
            if db.closing or schema is None:
                raise RuntimeError(f"the SQLite connection to {db.db_path} is closed")
            try:
                if self._reader is None:
                    self._reader = sqlite3.connect(
                        db.db_path,
                        timeout=db.options.busy_timeout,
                        isolation_level=None,
                        check_same_thread=False,
                    )
                conn = self._reader
                conn.execute("BEGIN")
                try:
                    return read(conn, schema, path)
                finally:
                    conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise db.error(exc, f"reading {path!r} to compact it") from exc

    def close(self) -> None:
        """Close the reader connection (the database is closing)."""
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    # ------------------------------------------------------------------ database thread

    def _replace_job(
        self, path: str, data: CompactionInput, snapshot: bytes, automatic: bool
    ) -> Callable[[sqlite3.Connection, Schema], bool]:
        def job(conn: sqlite3.Connection, schema: Schema) -> bool:
            conn.execute("BEGIN IMMEDIATE")
            try:
                replace(conn, schema, path, data, snapshot)
                conn.execute("COMMIT")
            except Changed:
                conn.execute("ROLLBACK")
                return False
            finally:
                self.tails.pop(path, None)
            reclaim(conn, self.db.db_path, automatic=automatic)
            return True

        return job

    def squash_idle(
        self, conn: sqlite3.Connection, schema: Schema, path: str
    ) -> BaseException | None:
        """Squash ``path`` inside the current write transaction (the seed's ``document_ttl``
        meaning); the error that fails the write, or None."""
        conn.execute("SAVEPOINT ttl_squash")
        try:
            self.db.fold_within()
            data = read(conn, schema, path)
            if data is not None:
                replace(conn, schema, path, data, squash(data.updates, path, self.db.db_path))
            conn.execute("RELEASE ttl_squash")
            if data is not None:
                report("SQLiteYStore")
        except Exception as exc:
            conn.execute("ROLLBACK TO ttl_squash")
            conn.execute("RELEASE ttl_squash")
            return self.db.error(exc, f"squashing {path!r} after document_ttl")
        finally:
            self.tails.pop(path, None)
        return None

    def wants(self, path: str, policy: Policy) -> bool:
        """Whether ``path``'s tail passes ``policy``'s thresholds."""
        if not policy.automatic:
            return False
        tail = self.tail(path)
        return policy.due(tail.count, tail.nbytes)

    def tail(self, path: str) -> Tail:
        """``path``'s counts, read from the database the first time (pending rows folded
        first, so that they count)."""
        tail = self.tails.get(path)
        if tail is None:
            db = self.db
            conn, schema = db.conn, db.schema
            assert conn is not None and schema is not None
            if conn.in_transaction:
                db.fold_within()
            else:
                db.fold_for_read()
            tail = self.tails[path] = Tail(*queries.tail_stats(conn, schema, path))
        return tail
