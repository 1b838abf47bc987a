"""Compaction on the shared layout: a snapshot row replaces the rows it covers.

Split so that the CPU work (squashing) can run outside the database thread: ``read`` the rows
(one read transaction, a consistent view), squash them anywhere, then ``replace`` inside a
write transaction, which first checks that the rows read are all still there (another process
may have compacted meanwhile: then ``Changed`` is raised and the caller starts again). The
snapshot takes the rowid of the newest row it covers, free once that row is deleted and lower
than every row written since, so insertion order still puts it first.

History: the updates a compaction replaces become retained points (``stores/retention.py``,
table ``history.TABLE``). ``read`` also plans them (which stored history rows change under
``history_retention``, read with their deltas only then); the merging runs with the squash;
``replace`` writes them in the same transaction as the snapshot, after checking that the
history rows planned over are still the document's. Every compaction path (automatic,
explicit, a version save, the ``document_ttl`` squash) goes through ``read`` and ``replace``.

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
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, TypeVar

from jupyter_ystore.core import threads
from jupyter_ystore.errors import YStoreError, YStorePermissionError
from jupyter_ystore.stores import retention as _retention
from jupyter_ystore.stores import squash_helper
from jupyter_ystore.stores.compaction import Policy, report, squash
from jupyter_ystore.stores.damaged import is_damaged_copy
from jupyter_ystore.stores.retention import ChainChange, ChainPlan, Retention, StoredHistory
from jupyter_ystore.stores.sqlite import compat, history, pending, queries
from jupyter_ystore.stores.sqlite.queries import INSERT
from jupyter_ystore.stores.sqlite.schema import Schema

if TYPE_CHECKING:
    from jupyter_ystore.stores.sqlite.db import SharedDatabase

log = logging.getLogger("jupyter_ystore.sqlite")

T = TypeVar("T")


class Changed(Exception):
    """Another connection changed the rows a compaction read; try again."""


@dataclass
class CompactionInput:
    """The records a compaction covers, and the plan of the history points they become."""

    updates: list[bytes]
    last_row: int | None  # newest yupdates rowid covered (None: only a legacy checkpoint)
    rowids: list[int]  # of the yupdates rows covered: the last len(rowids) of ``updates``
    count: int  # yupdates rows covered
    timestamp: float  # newest covered: the snapshot's timestamp
    metadata: bytes  # of the newest covered row
    has_snapshot: bool
    history_seqs: list[int] | None = None  # the history rows planned over (None: not read)
    plan: ChainPlan | None = None
    deltas: dict[int, bytes] | None = None  # of the history rows the plan rewrites

    @property
    def worth_it(self) -> bool:
        """False when the document already is a lone snapshot."""
        return len(self.updates) > 1 or not self.has_snapshot

    def prepare(self, path: str, db_path: str) -> tuple[Snapshot, ChainChange | None]:
        """The snapshot and the history change (CPU work: any thread; in the helper process
        when a server runs, ``squash_helper.run``)."""
        return squash_helper.run(_prepare, self, path, db_path)


def _prepare(data: CompactionInput, path: str, db_path: str) -> tuple[Snapshot, ChainChange | None]:
    snapshot = Snapshot(*squash(data.updates, path, db_path))
    change = None if data.plan is None else data.plan.build(data.deltas or {})
    return snapshot, change


@dataclass(frozen=True)
class Snapshot:
    """What a compaction writes: the squashed update, and whether it is clean."""

    update: bytes
    clean: bool


_ROWS = "SELECT rowid, yupdate, metadata, timestamp FROM yupdates WHERE path = ? ORDER BY rowid"
# Both tables: a read-only file cannot be folded (as ``queries.read_rows``).
_ROWS_AND_PENDING = (
    "SELECT rowid AS r, yupdate, metadata, timestamp FROM yupdates WHERE path = ? "
    f"UNION ALL SELECT rowid, yupdate, metadata, timestamp FROM {pending.TABLE} WHERE path = ? "
    "ORDER BY r"
)


def read(
    conn: sqlite3.Connection,
    schema: Schema,
    path: str,
    *,
    retention: Retention | None = None,
    now: float = 0.0,
    name: str | None = None,
    saved_by: str | None = None,
) -> CompactionInput | None:
    """What a compaction of ``path`` would cover (None when nothing is stored), with the
    plan of its history points when ``retention`` is given (``name``: a version save,
    ``VersionExists`` when taken)."""
    updates: list[bytes] = []
    timestamp = 0.0
    checkpoint = compat.read_checkpoint(conn, schema.layout, path)
    if checkpoint is not None:
        updates.append(checkpoint[0])
        timestamp = checkpoint[1]
    rows = conn.execute(_ROWS, (path,)).fetchall()
    if not rows and checkpoint is None:
        return None
    for _rowid, update, _metadata, ts in rows:
        updates.append(bytes(update or b""))
        timestamp = max(timestamp, ts)
    snapshot_row = schema.snapshot_row(conn, path)
    data = CompactionInput(
        updates=updates,
        last_row=rows[-1][0] if rows else None,
        rowids=[row[0] for row in rows],
        count=len(rows),
        timestamp=timestamp,
        metadata=bytes(rows[-1][2] or b"") if rows else b"",
        has_snapshot=snapshot_row is not None and checkpoint is None,
    )
    if retention is not None:
        _plan_history(
            conn, schema, path, data, rows, checkpoint, snapshot_row, retention, now, name, saved_by
        )
    return data


def _plan_history(
    conn: sqlite3.Connection,
    schema: Schema,
    path: str,
    data: CompactionInput,
    rows: list[tuple[int, bytes, bytes, float]],
    checkpoint: tuple[bytes, float] | None,
    snapshot_row: int | None,
    retention: Retention,
    now: float,
    name: str | None,
    saved_by: str | None,
) -> None:
    """The history rows and which of them change: the records the history rows do not
    cover yet become points (a snapshot they do not hold: the base of the chain)."""
    stored = history.read_rows(conn, schema, path)
    data.history_seqs = [row.seq for row in stored]
    if not stored and retention.keeps_nothing and name is None:
        return  # nothing kept, nothing to forget
    upto = history.covered(stored)
    fresh: list[tuple[bytes, bytes, float]] = []
    base = False
    if not stored and checkpoint is not None:
        fresh.append((checkpoint[0], b"", checkpoint[1]))
        base = True
    for rowid, update, metadata, ts in rows:
        if rowid > upto:
            if not fresh:
                base = rowid == snapshot_row
            fresh.append((bytes(update or b""), bytes(metadata or b""), ts))
    plan = _retention.plan_chain(
        stored,
        _retention.new_points(fresh, snapshot_first=base),
        now,
        retention,
        upto=max(upto, data.last_row or 0),
        name=name,
        saved_by=saved_by,
        document=path,
    )
    data.plan = plan
    data.deltas = history.read_deltas(conn, path, plan.needs)


def replace(
    conn: sqlite3.Connection,
    schema: Schema,
    path: str,
    data: CompactionInput,
    snapshot: Snapshot,
    change: ChainChange | None = None,
) -> None:
    """Inside a write transaction: delete the rows ``data`` covers, insert ``snapshot``,
    and apply the history ``change``."""
    if data.history_seqs is not None and history.seqs(conn, schema, path) != data.history_seqs:
        raise Changed
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
            (data.last_row, path, snapshot.update, data.metadata, data.timestamp),
        )
        row = data.last_row
    else:
        row = conn.execute(INSERT, (path, snapshot.update, b"", data.timestamp)).lastrowid
    if schema.has_checkpoints:  # its content is in the snapshot now
        conn.execute("DELETE FROM ycheckpoints WHERE path = ?", (path,))
    schema.ensure_snapshots_table(conn)
    conn.execute(
        "INSERT OR REPLACE INTO ystore_snapshots (path, row, timestamp, covered, clean) "
        "VALUES (?, ?, ?, ?, ?)",
        (path, row, data.timestamp, len(data.updates), int(snapshot.clean)),
    )
    if change is not None:
        history.apply(conn, schema, path, change)


def read_history(conn: sqlite3.Connection, schema: Schema, path: str) -> StoredHistory:
    """Inside a read transaction: ``path``'s retained points and the log records after them
    (pending rows included: a read-only file cannot fold them)."""
    stored = history.read_rows(conn, schema, path, deltas=True)
    upto = history.covered(stored)
    records: list[tuple[bytes, bytes, float]] = []
    snapshots = 0
    if not stored:
        checkpoint = compat.read_checkpoint(conn, schema.layout, path)
        if checkpoint is not None:
            records.append((checkpoint[0], b"", checkpoint[1]))
            snapshots = 1
    snapshot_row = schema.snapshot_row(conn, path)
    query = _ROWS_AND_PENDING if schema.has_pending else _ROWS
    args = (path, path) if schema.has_pending else (path,)
    for rowid, update, metadata, timestamp in conn.execute(query, args):
        if rowid <= upto:
            continue
        if rowid == snapshot_row and not records:
            snapshots = 1
        records.append((bytes(update or b""), bytes(metadata or b""), float(timestamp)))
    return StoredHistory(_retention.points_of(stored), records, snapshots)


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
    ``compact`` runs on an event loop, ``on_reader`` in a worker thread.
    """

    def __init__(self, db: SharedDatabase):
        self.db = db
        self.tails: dict[str, Tail] = {}
        self._running: set[str] = set()  # automatic compactions in progress
        self._running_lock = threading.Lock()
        self._reader: sqlite3.Connection | None = None
        self._reader_lock = threading.Lock()

    # ------------------------------------------------------------------ event-loop side

    async def compact(
        self,
        path: str,
        *,
        policy: Policy | None = None,
        retention: Retention | None = None,
        now: float | None = None,
        name: str | None = None,
        saved_by: str | None = None,
    ) -> bool:
        """Replace ``path``'s history by one snapshot, keeping history points as
        ``retention`` says (default: the policy's) at time ``now``; ``name``: end the history
        with a version of that name. Returns False if there was nothing to do.

        With a ``policy`` (automatic compaction) it is skipped unless the document still
        passes its thresholds and no other compaction of it runs in this process; explicit
        ones always run (both are safe together).
        """
        db, automatic = self.db, policy is not None
        if retention is None:
            retention = policy.retention if policy is not None else Retention(())
        when = time.time() if now is None else now
        if is_damaged_copy(db.db_path):  # read into memory, read-only
            if automatic:
                return False
            raise YStorePermissionError("a damaged copy cannot be compacted", path=db.db_path)
        if automatic:
            with self._running_lock:
                if path in self._running:
                    return False
                self._running.add(path)

        def read_it(conn: sqlite3.Connection, schema: Schema) -> CompactionInput | None:
            return read(
                conn, schema, path, retention=retention, now=when, name=name, saved_by=saved_by
            )

        try:
            for _attempt in range(5):
                # After the usual fold of pending rows, so that the read below sees them. False:
                # a compaction that finished meanwhile already did it.
                wanted = await db.call(
                    lambda conn, schema: policy is None or self.wants(path, policy),
                    f"reading {path!r} to compact it",
                    yields=True,  # writes committed first only count towards the threshold
                )
                if not wanted:
                    data = None
                elif db.db_path == ":memory:":  # no second connection sees that database
                    data = await db.call(read_it, f"reading {path!r} to compact it")
                else:
                    data = await threads.run_sync(
                        self.on_reader, read_it, f"reading {path!r} to compact it"
                    )
                if data is None or (automatic and not data.worth_it):
                    return False
                snapshot, change = await threads.run_sync(
                    data.prepare, path, db.db_path
                )
                replace_it = self._replace_job(path, data, snapshot, change, automatic)
                # Yields: rows committed first are above what it replaces, which it checks.
                if await db.call(replace_it, f"compacting {path!r}", yields=True):
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

    async def read_history(self, path: str) -> StoredHistory:
        """``path``'s retained points and log records, in one read transaction of the reader
        connection (pending rows folded first), so writers keep committing meanwhile."""
        db = self.db

        def read_it(conn: sqlite3.Connection, schema: Schema) -> StoredHistory:
            return read_history(conn, schema, path)

        if db.db_path == ":memory:":
            return await db.call(read_it, f"reading the history of {path!r}")
        await db.call(lambda conn, schema: None, f"reading the history of {path!r}")
        return await threads.run_sync(
            self.on_reader, read_it, f"reading the history of {path!r}"
        )

    async def delete_version(self, path: str, name: str) -> None:
        """Remove the name ``name`` from ``path``'s history (``VersionNotFound``)."""

        def job(conn: sqlite3.Connection, schema: Schema) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                rows = history.read_rows(conn, schema, path, deltas=True)
                seq = max((row.seq for row in rows), default=0) + 1
                history.apply(conn, schema, path, _retention.rename_version(rows, name, None, seq))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        await self.db.call(job, f"removing version {name!r} of {path!r}", fold=False)

    def on_reader(self, fn: Callable[[sqlite3.Connection, Schema], T], action: str) -> T:
        """``fn(connection, schema)`` in a worker thread, on the reader connection, in one
        read transaction. (Rows committed after it come after what it read; ``replace``
        checks the rows a compaction read.)"""
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
                    return fn(conn, schema)
                finally:
                    conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise db.error(exc, action) from exc

    def close(self) -> None:
        """Close the reader connection (the database is closing)."""
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    # ------------------------------------------------------------------ database thread

    def _replace_job(
        self,
        path: str,
        data: CompactionInput,
        snapshot: Snapshot,
        change: ChainChange | None,
        automatic: bool,
    ) -> Callable[[sqlite3.Connection, Schema], bool]:
        def job(conn: sqlite3.Connection, schema: Schema) -> bool:
            conn.execute("BEGIN IMMEDIATE")
            try:
                replace(conn, schema, path, data, snapshot, change)
                conn.execute("COMMIT")
            except Changed:
                conn.execute("ROLLBACK")
                return False
            finally:
                self.tails.pop(path, None)
            if data.last_row is not None and not pending.any_below(conn, schema, data.last_row):
                covered = data.updates[len(data.updates) - len(data.rowids) :]
                self.db.hub.compacted(path, data.rowids, covered, data.last_row)
            reclaim(conn, self.db.db_path, automatic=automatic)
            return True

        return job

    def squash_idle(
        self,
        conn: sqlite3.Connection,
        schema: Schema,
        path: str,
        retention: Retention | None = None,
        now: float = 0.0,
    ) -> BaseException | None:
        """Squash ``path`` inside the current write transaction (the seed's ``document_ttl``
        meaning), keeping history points as ``retention`` says; the error that fails the
        write, or None."""
        conn.execute("SAVEPOINT ttl_squash")
        try:
            self.db.fold_within()
            data = read(conn, schema, path, retention=retention, now=now)
            if data is not None:
                snapshot, change = data.prepare(path, self.db.db_path)
                replace(conn, schema, path, data, snapshot, change)
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
