"""One sqlite3 connection per database file per process, driven by a dedicated thread.

Why a thread of its own: sqlite3 calls block, and the event loop must not. Every document of
the process that uses the same file shares this object (a refcounted registry keyed by the
file's real path); its thread owns the connection and works through a queue:

* **Group commit.** Writes queue up while a commit is in flight; the thread takes every
  queued write and commits them in ONE transaction (``BEGIN IMMEDIATE`` … ``COMMIT``), then
  wakes all their writers. A write's coroutine returns only after its commit.
* **No loop-bound state.** The registry is process-global but each anyio test runs its own
  event loop, so nothing here belongs to a loop: jobs carry a ``Waiter`` made by the waiting
  task (see ``_sqlite_bridge``).
* **Checkpoints off the commit path.** Every read and write goes through that one
  connection; a second, private connection in its own thread only copies the WAL back into
  the database file (``_Checkpointer``), so no commit pays for SQLite's periodic checkpoint.
* **Other processes.** ``BEGIN IMMEDIATE`` takes the write lock up front and the busy timeout
  makes a second process wait for it; past the timeout the writer gets ``YStoreLockedError``
  and nothing is half-written.

Compaction is split in three so that squashing (CPU work) neither blocks other documents'
commits nor races with them: read the rows (this thread), squash (a worker thread), then in one
transaction check that the rows read are still there, delete them and insert the snapshot
under the rowid of the newest row it covers, so that it sorts before every update written
meanwhile. A ttl squash is done inline in the write's transaction, as the seed did.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import anyio

from .. import ydoc as _ydoc
from ..errors import YStoreCorruptError, YStoreError, YStorePermissionError
from . import compat
from ._sqlite_bridge import Waiter, deliver
from ._sqlite_errors import map_error
from .base import DocumentInfo

log = logging.getLogger("jupyter_ystore.sqlite")

_INSERT = "INSERT INTO yupdates (path, yupdate, metadata, timestamp) VALUES (?, ?, ?, ?)"


@dataclass(frozen=True)
class Options:
    """Connection settings, fixed by the first store that opens the file."""

    busy_timeout: float = 10.0
    synchronous: str = "NORMAL"


@dataclass(frozen=True)
class Policy:
    """What a store wants done around its writes (from its traits)."""

    ttl: float | None = None
    max_updates: int | None = None
    max_bytes: int | None = None


class _Stats:
    """A document's history after its snapshot, as this process has seen it."""

    __slots__ = ("count", "nbytes", "last_ts")

    def __init__(self, count: int, nbytes: int, last_ts: float | None):
        self.count = count
        self.nbytes = nbytes
        self.last_ts = last_ts


@dataclass
class CompactionInput:
    """The rows a compaction covers, read in one statement."""

    updates: list[bytes]
    last_row: int | None  # newest yupdates rowid covered (None: only a legacy checkpoint)
    count: int  # yupdates rows covered
    timestamp: float
    metadata: bytes
    has_snapshot: bool

    @property
    def worth_it(self) -> bool:
        return len(self.updates) > 1 or (len(self.updates) == 1 and not self.has_snapshot)


class _Changed(Exception):
    """Another connection changed the rows a compaction read; try again."""


class _Write:
    __slots__ = ("waiter", "path", "update", "metadata", "timestamp", "policy")

    def __init__(self, waiter, path, update, metadata, timestamp, policy):
        self.waiter = waiter
        self.path = path
        self.update = update
        self.metadata = metadata
        self.timestamp = timestamp
        self.policy = policy


class _Call:
    __slots__ = ("waiter", "fn", "action")

    def __init__(self, waiter: Waiter, fn: Callable[[sqlite3.Connection], Any], action: str):
        self.waiter = waiter
        self.fn = fn
        self.action = action


class _Close:
    __slots__ = ("waiter",)

    def __init__(self, waiter: Waiter):
        self.waiter = waiter


class _Checkpointer:
    """Copies the WAL back into the database file from a thread (and connection) of its own.

    SQLite's automatic checkpoint runs inside the COMMIT that crosses the threshold, with
    two fsyncs even at ``synchronous = NORMAL``; here commits only count, and every
    ``every`` commits this thread runs a PASSIVE checkpoint, which never blocks writers.
    """

    def __init__(self, db_path: str, busy_timeout: float, every: int = 500):
        self._db_path = db_path
        self._busy_timeout = busy_timeout
        self._every = every
        self._commits = 0
        self._wanted = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(
            target=self._main, name="ystore-sqlite-checkpoint", daemon=True
        )
        self._thread.start()

    def committed(self, count: int = 1) -> None:
        self._commits += count
        if self._commits >= self._every:
            self._commits = 0
            self._wanted.set()

    def stop(self) -> None:
        self._stopping = True
        self._wanted.set()
        self._thread.join()

    def _main(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(
                self._db_path, timeout=self._busy_timeout, isolation_level=None
            )
            while True:
                self._wanted.wait()
                self._wanted.clear()
                if self._stopping:
                    return
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # the WAL only grows until the next try
                    log.debug("checkpoint of %s: %s", self._db_path, exc)
        except sqlite3.Error as exc:
            log.warning("no background checkpoints for %s: %s", self._db_path, exc)
        finally:
            if conn is not None:
                conn.close()


class SharedDatabase:
    """The connection, thread and per-document counters of one database file."""

    def __init__(self, key: str, db_path: str, options: Options):
        self.key = key
        self.db_path = db_path
        self.options = options
        self.refs = 0
        self.closing = False
        self.failed: BaseException | None = None
        self._conn: sqlite3.Connection | None = None
        self._checkpointer: _Checkpointer | None = None
        self._layout: compat.DatabaseLayout | None = None
        self._has_snapshots = False
        self._stats: dict[str, _Stats] = {}
        self._compacting: set[str] = set()
        self._compacting_lock = threading.Lock()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        name = "ystore-sqlite:" + os.path.basename(db_path)
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ event-loop side

    async def call(self, fn: Callable[[sqlite3.Connection], Any], action: str) -> Any:
        """Run ``fn(connection)`` on the database thread; its exception is raised here."""
        if self.closing:
            raise RuntimeError(f"the SQLite connection to {self.db_path} is closed")
        waiter = Waiter()
        self._queue.put(_Call(waiter, fn, action))
        return await waiter.wait()

    async def write(
        self, path: str, update: bytes, metadata: bytes, timestamp: float, policy: Policy
    ) -> bool:
        """Commit one update (sharing the commit with concurrent writes).

        Returns True when the document's history after its snapshot passed a compaction
        threshold of ``policy``.
        """
        if self.closing:
            raise RuntimeError(f"the SQLite connection to {self.db_path} is closed")
        waiter = Waiter()
        self._queue.put(_Write(waiter, path, update, metadata, timestamp, policy))
        return await waiter.wait()

    async def close(self) -> None:
        """Finish every queued job, close the connection and end the thread."""
        waiter = Waiter()
        self._queue.put(_Close(waiter))
        await waiter.wait()

    async def compact(self, path: str, *, policy: Policy | None = None) -> bool:
        """Replace ``path``'s history by one snapshot. Returns False if there was nothing to do.

        With a ``policy`` (automatic compaction) it is skipped unless the document still
        passes its thresholds and no other compaction of it runs in this process; explicit
        ones always run (both are safe together).
        """
        automatic = policy is not None
        if automatic:
            with self._compacting_lock:
                if path in self._compacting:
                    return False
                self._compacting.add(path)
        try:
            for _attempt in range(5):
                data = await self.call(
                    lambda conn: self._read_for_compaction(conn, path, policy),
                    f"reading {path!r} to compact it",
                )
                if data is None or (automatic and not data.worth_it):
                    return False
                snapshot = await anyio.to_thread.run_sync(self._squash, path, data.updates)
                done = await self.call(
                    partial(self._apply_compaction, path, data, snapshot), f"compacting {path!r}"
                )
                if done:
                    return True
            raise YStoreError(
                f"document {path!r} kept changing under compaction (5 attempts)",
                path=self.db_path,
                hint="another process is rewriting it; nothing was lost, try again later",
            )
        finally:
            if automatic:
                with self._compacting_lock:
                    self._compacting.discard(path)

    # ------------------------------------------------------------------ database thread

    def _main(self) -> None:
        try:
            self._conn = self._connect()
            if self.db_path != ":memory:":
                self._conn.execute("PRAGMA wal_autocheckpoint = 0")
                self._checkpointer = _Checkpointer(self.db_path, self.options.busy_timeout)
        except BaseException as exc:  # reported to every job
            self.failed = map_error(
                exc, self.db_path, "opening the database", self.options.busy_timeout
            )
        while True:
            jobs = [self._queue.get()]
            while True:
                try:
                    jobs.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            i = 0
            while i < len(jobs):
                job = jobs[i]
                if isinstance(job, _Write):
                    j = i + 1
                    while j < len(jobs) and isinstance(jobs[j], _Write):
                        j += 1
                    deliver(self._commit_writes(jobs[i:j]))
                    i = j
                elif isinstance(job, _Close):
                    self._shutdown()
                    gone = RuntimeError(f"the SQLite connection to {self.db_path} is closed")
                    deliver(
                        [(job.waiter, None, None)]
                        + [(other.waiter, None, gone) for other in jobs[i + 1 :]]
                    )
                    return
                else:
                    deliver([self._run_call(job)])
                    i += 1

    def _error(self, exc: BaseException, action: str) -> BaseException:
        return map_error(exc, self.db_path, action, self.options.busy_timeout)

    def _run_call(self, job: _Call) -> tuple[Waiter, Any, BaseException | None]:
        if self.failed is not None:
            return job.waiter, None, self.failed
        assert self._conn is not None
        try:
            return job.waiter, job.fn(self._conn), None
        except Exception as exc:
            self._rollback()
            return job.waiter, None, self._error(exc, job.action)

    def _rollback(self) -> None:
        conn = self._conn
        if conn is not None and conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def _shutdown(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()  # first: closing the last connection checkpoints
            self._checkpointer = None
        if self._conn is not None:
            self._rollback()
            try:
                self._conn.close()
            except sqlite3.Error as exc:  # nothing pending: every write was committed
                log.warning("closing %s: %s", self.db_path, exc)
            self._conn = None

    # ------------------------------------------------------------------ opening

    def _connect(self) -> sqlite3.Connection:
        path = self.db_path
        if path != ":memory:":
            folder = os.path.dirname(path)
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as exc:
                raise YStorePermissionError(
                    f"cannot create the folder of SQLiteYStore.db_path: {exc}",
                    path=path,
                    hint="set SQLiteYStore.db_path to a file in a folder this process can create "
                    "and write",
                ) from exc
        conn = sqlite3.connect(
            path,
            timeout=self.options.busy_timeout,
            isolation_level=None,  # we say BEGIN/COMMIT ourselves
            check_same_thread=False,  # made here, used only by this thread
            cached_statements=64,
        )
        try:
            layout = compat.inspect_layout(conn)  # reads only: a refused file stays as it was
            compat.check_layout(layout, path)
            if layout.empty:
                layout = self._create_schema(conn)
            else:
                self._prepare_existing(conn, layout)
                layout = compat.inspect_layout(conn)
            conn.execute(f"PRAGMA synchronous = {self.options.synchronous}")
        except BaseException:
            conn.close()
            raise
        self._layout = layout
        self._has_snapshots = layout.has_snapshots
        return conn

    def _create_schema(self, conn: sqlite3.Connection) -> compat.DatabaseLayout:
        # auto_vacuum must be chosen before the first table; INCREMENTAL lets compaction give
        # pages back to the file system (the file shrinks) without a full VACUUM.
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("PRAGMA journal_mode = WAL").fetchall()
        conn.execute("BEGIN IMMEDIATE")
        try:
            layout = compat.inspect_layout(conn)  # another process may have been first
            compat.check_layout(layout, self.db_path)
            for statement in (
                compat.CREATE_UPDATES,
                compat.CREATE_UPDATES_INDEX,
                compat.CREATE_CHECKPOINTS,
                compat.CREATE_SNAPSHOTS,
            ):
                conn.execute(statement)
            if layout.empty:
                conn.execute(f"PRAGMA user_version = {compat.LEGACY_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            self._rollback_conn(conn)
            raise
        return compat.inspect_layout(conn)

    def _prepare_existing(self, conn: sqlite3.Connection, layout: compat.DatabaseLayout) -> None:
        """WAL and our snapshots table on a database we accept (ours or a legacy one)."""
        try:
            conn.execute("PRAGMA journal_mode = WAL").fetchall()
            if not layout.has_snapshots:
                conn.execute(compat.CREATE_SNAPSHOTS)
        except sqlite3.OperationalError as exc:
            if "readonly" not in str(exc).lower():
                raise
            # Reads still work; the first write will raise YStorePermissionError.
            log.warning("%s is read-only: documents can be read, not written", self.db_path)

    @staticmethod
    def _rollback_conn(conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    # ------------------------------------------------------------------ writes

    def _commit_writes(self, batch: list[_Write]) -> list[tuple[Waiter, Any, Any]]:
        if self.failed is not None:
            return [(job.waiter, None, self.failed) for job in batch]
        conn = self._conn
        assert conn is not None
        outcomes: list[tuple[Waiter, Any, Any]] = []
        written: list[_Write] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            rows: list[tuple[str, bytes, bytes, float]] = []
            for job in batch:
                stats = self._stats_for(job.path)
                ttl = job.policy.ttl
                if (
                    ttl is not None
                    and stats.last_ts is not None
                    and stats.count > 0
                    and job.timestamp - stats.last_ts > ttl
                ):
                    if rows:
                        conn.executemany(_INSERT, rows)
                        rows.clear()
                    error = self._ttl_squash(job.path)
                    if error is not None:
                        outcomes.append((job.waiter, None, error))
                        continue
                    stats = self._stats_for(job.path)
                rows.append((job.path, job.update, job.metadata, job.timestamp))
                stats.count += 1
                stats.nbytes += len(job.update)
                if stats.last_ts is None or job.timestamp > stats.last_ts:
                    stats.last_ts = job.timestamp
                written.append(job)
            if rows:
                conn.executemany(_INSERT, rows)
            conn.execute("COMMIT")
            if self._checkpointer is not None:
                self._checkpointer.committed()
        except Exception as exc:
            self._rollback()
            for job in batch:
                self._stats.pop(job.path, None)
            error = self._error(exc, "committing updates")
            failed = {id(waiter) for waiter, _, _ in outcomes}
            return outcomes + [
                (job.waiter, None, error) for job in batch if id(job.waiter) not in failed
            ]
        for job in written:
            outcomes.append((job.waiter, self._wants_compaction(job.path, job.policy), None))
        return outcomes

    def _ttl_squash(self, path: str) -> BaseException | None:
        """Squash ``path`` inside the current transaction (seed ``document_ttl`` meaning)."""
        conn = self._conn
        assert conn is not None
        conn.execute("SAVEPOINT ttl_squash")
        try:
            data = self._read_for_compaction(conn, path)
            if data is not None:
                snapshot = self._squash(path, data.updates)
                self._replace_by_snapshot(conn, path, data, snapshot)
            conn.execute("RELEASE ttl_squash")
        except Exception as exc:
            conn.execute("ROLLBACK TO ttl_squash")
            conn.execute("RELEASE ttl_squash")
            return self._error(exc, f"squashing {path!r} after document_ttl")
        finally:
            self._stats.pop(path, None)
        return None

    def _wants_compaction(self, path: str, policy: Policy) -> bool:
        if not (policy.max_updates or policy.max_bytes):
            return False
        stats = self._stats_for(path)
        if policy.max_updates and stats.count >= policy.max_updates:
            return True
        return bool(policy.max_bytes and stats.nbytes >= policy.max_bytes)

    def _snapshot_row(self, conn: sqlite3.Connection, path: str) -> int | None:
        """The rowid of ``path``'s snapshot, if it is still there."""
        if not self._has_snapshots:
            return None
        row = conn.execute(
            "SELECT s.row FROM ystore_snapshots AS s JOIN yupdates AS u "
            "ON u.rowid = s.row AND u.path = s.path WHERE s.path = ?",
            (path,),
        ).fetchone()
        return None if row is None else int(row[0])

    def _stats_for(self, path: str) -> _Stats:
        stats = self._stats.get(path)
        if stats is None:
            conn = self._conn
            assert conn is not None
            snapshot_row = self._snapshot_row(conn, path)
            count, nbytes = conn.execute(
                "SELECT count(*), coalesce(sum(length(yupdate)), 0) FROM yupdates "
                "WHERE path = ? AND rowid > ?",
                (path, -1 if snapshot_row is None else snapshot_row),
            ).fetchone()
            (last_ts,) = conn.execute(
                "SELECT max(timestamp) FROM yupdates WHERE path = ?", (path,)
            ).fetchone()
            stats = self._stats[path] = _Stats(count, nbytes, last_ts)
        return stats

    # ------------------------------------------------------------------ reads

    def read_rows(self, conn: sqlite3.Connection, path: str) -> list[tuple[bytes, bytes, float]]:
        """Everything stored for ``path``, oldest first: a pycrdt-store checkpoint if any,
        then the rows in insertion order (our snapshot is the first row)."""
        assert self._layout is not None
        records: list[tuple[bytes, bytes, float]] = []
        checkpoint = compat.read_checkpoint(conn, self._layout, path)
        if checkpoint is not None:
            records.append((checkpoint[0], b"", checkpoint[1]))
        for update, metadata, timestamp in conn.execute(
            "SELECT yupdate, metadata, timestamp FROM yupdates WHERE path = ? ORDER BY rowid",
            (path,),
        ):
            records.append((bytes(update or b""), bytes(metadata or b""), float(timestamp)))
        return records

    def list_documents(self, conn: sqlite3.Connection) -> list[DocumentInfo]:
        assert self._layout is not None
        found: dict[str, list[Any]] = {}
        for path, count, nbytes, first, last in conn.execute(
            "SELECT path, count(*), coalesce(sum(length(yupdate)), 0), min(timestamp), "
            "max(timestamp) FROM yupdates GROUP BY path"
        ):
            found[path] = [count, nbytes, first, last, 0]
        if self._has_snapshots:
            for (path,) in conn.execute(
                "SELECT s.path FROM ystore_snapshots AS s JOIN yupdates AS u "
                "ON u.rowid = s.row AND u.path = s.path"
            ):
                found[path][4] += 1
        if self._layout.has_checkpoints:
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

    # ------------------------------------------------------------------ compaction

    @staticmethod
    def _squash(path: str, updates: list[bytes]) -> bytes:
        try:
            return _ydoc.squash(updates)
        except Exception as exc:
            raise YStoreCorruptError(
                f"document {path!r} holds an update that is not valid Yjs ({exc})",
                hint="the rows were left as they are; export or delete the document",
            ) from exc

    def _read_for_compaction(
        self, conn: sqlite3.Connection, path: str, policy: Policy | None = None
    ) -> CompactionInput | None:
        assert self._layout is not None
        if policy is not None and not self._wants_compaction(path, policy):
            return None  # a compaction that finished meanwhile already did it
        updates: list[bytes] = []
        timestamp = 0.0
        checkpoint = compat.read_checkpoint(conn, self._layout, path)
        if checkpoint is not None:
            updates.append(checkpoint[0])
            timestamp = checkpoint[1]
        rows = conn.execute(
            "SELECT rowid, yupdate, metadata, timestamp FROM yupdates WHERE path = ? "
            "ORDER BY rowid",
            (path,),
        ).fetchall()
        if not rows and checkpoint is None:
            return None
        for _rowid, update, _metadata, ts in rows:
            updates.append(bytes(update or b""))
            timestamp = max(timestamp, ts)
        snapshot_row = self._snapshot_row(conn, path)
        return CompactionInput(
            updates=updates,
            last_row=rows[-1][0] if rows else None,
            count=len(rows),
            timestamp=timestamp,
            metadata=bytes(rows[-1][2] or b"") if rows else b"",
            has_snapshot=snapshot_row is not None and checkpoint is None,
        )

    def _replace_by_snapshot(
        self, conn: sqlite3.Connection, path: str, data: CompactionInput, snapshot: bytes
    ) -> None:
        """Inside a transaction: delete the rows ``data`` covers, insert ``snapshot``."""
        if data.last_row is not None:
            (still,) = conn.execute(
                "SELECT count(*) FROM yupdates WHERE path = ? AND rowid <= ?",
                (path, data.last_row),
            ).fetchone()
            if still != data.count:
                raise _Changed
            conn.execute(
                "DELETE FROM yupdates WHERE path = ? AND rowid <= ?", (path, data.last_row)
            )
            # The rowid of the newest covered row is free now and below every row written
            # since: the snapshot stays first in insertion order.
            conn.execute(
                "INSERT INTO yupdates (rowid, path, yupdate, metadata, timestamp) "
                "VALUES (?, ?, ?, ?, ?)",
                (data.last_row, path, snapshot, data.metadata, data.timestamp),
            )
            row = data.last_row
        else:
            row = conn.execute(_INSERT, (path, snapshot, b"", data.timestamp)).lastrowid
        assert self._layout is not None
        if self._layout.has_checkpoints:
            # Its content is in the snapshot now.
            conn.execute("DELETE FROM ycheckpoints WHERE path = ?", (path,))
        if not self._has_snapshots:
            conn.execute(compat.CREATE_SNAPSHOTS)
            self._has_snapshots = True
        conn.execute(
            "INSERT OR REPLACE INTO ystore_snapshots (path, row, timestamp, covered) "
            "VALUES (?, ?, ?, ?)",
            (path, row, data.timestamp, len(data.updates)),
        )

    def _apply_compaction(
        self, path: str, data: CompactionInput, snapshot: bytes, conn: sqlite3.Connection
    ) -> bool:
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._replace_by_snapshot(conn, path, data, snapshot)
            conn.execute("COMMIT")
        except _Changed:
            conn.execute("ROLLBACK")
            return False
        finally:
            self._stats.pop(path, None)
        self._reclaim(conn)
        return True

    def delete(self, path: str, conn: sqlite3.Connection) -> None:
        assert self._layout is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("DELETE FROM yupdates WHERE path = ?", (path,))
            if self._layout.has_checkpoints:
                conn.execute("DELETE FROM ycheckpoints WHERE path = ?", (path,))
            if self._has_snapshots:
                conn.execute("DELETE FROM ystore_snapshots WHERE path = ?", (path,))
            conn.execute("COMMIT")
        finally:
            self._stats.pop(path, None)
        self._reclaim(conn)

    def _reclaim(self, conn: sqlite3.Connection) -> None:
        """Give freed pages back to the file system so that the file shrinks.

        New databases use auto_vacuum=INCREMENTAL. A legacy one without auto_vacuum is
        converted by one VACUUM once a quarter of it is free (it stays readable by the
        libraries that wrote it). Failing here loses nothing, so it is only logged.
        """
        try:
            (free,) = conn.execute("PRAGMA freelist_count").fetchone()
            if not free:
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
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            log.warning("could not shrink %s after compaction: %s", self.db_path, exc)


# ---------------------------------------------------------------------- registry

_REGISTRY: dict[str, SharedDatabase] = {}
_REGISTRY_LOCK = threading.Lock()


def _forget_after_fork() -> None:
    """A forked child has none of the parent's threads: it opens its own connections."""
    global _REGISTRY_LOCK
    _REGISTRY.clear()
    _REGISTRY_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def resolve_path(db_path: str) -> str:
    """The key of a database file: its real absolute path (``:memory:`` stays itself)."""
    if db_path == ":memory:":
        return db_path
    return os.path.realpath(os.path.abspath(os.path.expanduser(db_path)))


def acquire(db_path: str, options: Options) -> SharedDatabase:
    """The process's connection to ``db_path`` (opened on first use); pair with ``release``."""
    key = resolve_path(db_path)
    with _REGISTRY_LOCK:
        db = _REGISTRY.get(key)
        if db is None or db.failed is not None or db.closing:
            db = SharedDatabase(key, key, options)
            _REGISTRY[key] = db
        elif db.options != options:
            log.warning(
                "%s is already open with %s; a store asking for %s shares that connection",
                key,
                db.options,
                options,
            )
        db.refs += 1
    return db


async def release(db: SharedDatabase) -> None:
    """Drop one reference; the last one closes the connection (after its queued jobs)."""
    with _REGISTRY_LOCK:
        db.refs -= 1
        last = db.refs <= 0
        if last:
            db.closing = True
            if _REGISTRY.get(db.key) is db:
                del _REGISTRY[db.key]
    if last:
        await db.close()


def open_connections() -> int:
    """How many database files this process holds open (for tests)."""
    with _REGISTRY_LOCK:
        return len(_REGISTRY)
