"""One sqlite3 connection per database file per process, driven by a dedicated thread.

Why a thread of its own: sqlite3 calls block, and the event loop must not. Every document of
the process that uses the same file shares this object (a refcounted registry keyed by the
file's real path); its thread owns the connection and works through a queue:

* **Pending rows.** A commit inserts into ``ystore_pending`` (no secondary index), folded
  into ``yupdates`` in bulk; reads fold first (``pending`` says why and what holds).
* **Group commit.** Writes queue up while a commit is in flight; the thread takes every
  queued write and commits them in ONE transaction (``BEGIN IMMEDIATE`` … ``COMMIT``), then
  wakes all their writers. A write's coroutine returns only after its commit.
* **Commits first.** A room relays a keystroke once its commit is done, so a commit goes
  ahead of queued work whose result does not depend on it (a watch catching up, a
  compaction's check and replace: ``writes_first``); any other call keeps its place.
* **Commit pacing.** Under load, writes of other documents are held on the event loop for
  at most ``Options.commit_interval`` so that they share a commit (``pacing``).
* **No loop-bound state.** The registry is process-global but each anyio test runs its own
  event loop, so nothing here belongs to a loop: jobs carry a ``Waiter`` made by the waiting
  task (see ``bridge``).
* **Checkpoints beside it, bounded by its own.** A thread of its own copies the WAL back
  into the file every half second while commits come (``checkpointer``), so a commit rarely
  pays for a whole checkpoint. That thread cannot restart the WAL while writes keep
  coming, so SQLite's automatic checkpoint (at ``WAL_AUTOCHECKPOINT`` pages, see ``schema``)
  still runs in this thread between commits, when no write of ours is in flight: it
  completes, the WAL restarts, and it finds nearly every page already copied.
* **Other processes.** ``BEGIN IMMEDIATE`` takes the write lock up front and the busy timeout
  makes a second process wait for it; past the timeout the writer gets ``YStoreLockedError``
  and nothing is half-written.

* **Live updates.** While a store watches, the loop also polls other processes' commits
  every ``poll_interval`` and wakes watchers after our own commits (``watch``).

Compaction is ``compact.Compactor``'s job (``self.compactor``): it keeps the counts that
decide it, which every commit updates, and squashes an idle document (``document_ttl``)
inside the commit of the write that finds it idle.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sqlite3
import threading
import time
from typing import Any, Awaitable, Callable

from jupyter_ystore.core.per_loop import PerLoop
from jupyter_ystore.errors import YStoreError
from jupyter_ystore.stores.base import DocumentInfo
from jupyter_ystore.stores.compaction import Policy
from jupyter_ystore.stores.shared import SharedMap
from jupyter_ystore.stores.sqlite import attributes, pending, queries
from jupyter_ystore.stores.sqlite.bridge import CallbackWaiter, Waiter, deliver
from jupyter_ystore.stores.sqlite.checkpointer import Checkpointer
from jupyter_ystore.stores.sqlite.compact import Compactor, reclaim
from jupyter_ystore.stores.sqlite.errors import map_error
from jupyter_ystore.stores.sqlite.pacing import CommitPacer
from jupyter_ystore.stores.sqlite.recover import note_damage, open_database
from jupyter_ystore.stores.sqlite.schema import Options, Schema
from jupyter_ystore.stores.sqlite.watch import Hub, Owner, Watch

__all__ = [
    "Options",
    "Owner",
    "SharedDatabase",
    "Watch",
    "acquire",
    "release",
    "open_connections",
]

log = logging.getLogger("jupyter_ystore.sqlite")

Outcome = tuple[Waiter, Any, Any]

#: Milliseconds a read waits for the write lock to fold pending rows first (see
#: ``SharedDatabase.fold_for_read``).
_READ_FOLD_WAIT_MS = 50


class _Write:
    __slots__ = ("waiter", "path", "update", "metadata", "timestamp", "policy", "owner")

    def __init__(
        self,
        waiter: Waiter,
        path: str,
        update: bytes,
        metadata: bytes,
        timestamp: float,
        policy: Policy,
        owner: Owner | None,
    ):
        self.waiter = waiter
        self.path = path
        self.update = update
        self.metadata = metadata
        self.timestamp = timestamp
        self.policy = policy
        self.owner = owner


class _Call:
    __slots__ = ("waiter", "fn", "action", "fold", "yields")

    def __init__(
        self,
        waiter: Waiter,
        fn: Callable[..., Any],
        action: str,
        fold: bool = True,
        yields: bool = False,
    ):
        self.waiter = waiter
        self.fn = fn  # fn(connection, schema)
        self.action = action
        self.fold = fold  # move pending rows into yupdates first
        self.yields = yields  # writes queued after it may be committed before it


def writes_first(jobs: list[Any]) -> list[Any]:
    """``jobs`` with every write moved ahead of the yielding calls queued before it, order
    otherwise kept. A write's commit is what its room waits for before relaying a keystroke
    ("store, then relay"); a yielding call (a watch catching up, a compaction's check or its
    replace) gives the same result a few milliseconds later. Any other call, or a close, is
    a barrier that nothing crosses."""
    ordered: list[Any] = []
    waiting: list[Any] = []
    for job in jobs:
        if type(job) is _Write:
            ordered.append(job)
        elif type(job) is _Call and job.yields:
            waiting.append(job)
        else:
            ordered += waiting
            waiting = []
            ordered.append(job)
    return ordered + waiting


class _Close:
    __slots__ = ("waiter",)

    def __init__(self, waiter: Waiter):
        self.waiter = waiter


class SharedDatabase:
    """The connection and thread of one database file: its queue of jobs, group commit
    and folds."""

    def __init__(self, key: str, db_path: str, options: Options):
        self.key = key
        self.db_path = db_path
        self.options = options
        self.closing = False
        self.failed: BaseException | None = None
        self.conn: sqlite3.Connection | None = None  # the database thread's
        self.schema: Schema | None = None
        self.compactor = Compactor(self)
        # Set by the database thread once the file is open in WAL mode.
        self.checkpointer: Checkpointer | None = None
        self._changes = 0  # the connection's total_changes when the checkpointer last heard
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()  # jobs, or lists of writes
        self._pacers: PerLoop[CommitPacer] = PerLoop(
            lambda loop: CommitPacer(loop, self.options.commit_interval, self._queue.put)
        )
        # Live updates: touched by the database thread only (its jobs, the compactor's too).
        self.hub = Hub(db_path)
        self._pending = 0  # rows this process committed into ystore_pending since its fold
        self._fold_at = 0.0  # time.monotonic() when those rows are folded if no write comes
        self._fold_failing = False
        self._fold_retry_at = 0.0  # after a failed fold, not before this time.monotonic()
        name = "ystore-sqlite:" + os.path.basename(db_path)
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ event-loop side

    async def call(
        self,
        fn: Callable[[sqlite3.Connection, Schema], Any],
        action: str,
        *,
        fold: bool = True,
        yields: bool = False,
    ) -> Any:
        """Run ``fn(connection, schema)`` on the database thread; its exception is raised
        here (sqlite3 errors as ``YStoreError``s naming ``action``). ``fold=False``: for
        work that reads no updates, so pending rows are left as they are. ``yields=True``:
        for work whose outcome does not depend on whether writes queued after it are
        committed first (``writes_first``); writes queued before it always are."""
        if self.closing:
            raise RuntimeError(f"the SQLite connection to {self.db_path} is closed")
        waiter = Waiter()
        self._send_held()
        self._queue.put(_Call(waiter, fn, action, fold, yields))
        return await waiter.wait()

    def write(
        self,
        path: str,
        update: bytes,
        metadata: bytes,
        timestamp: float,
        policy: Policy,
        owner: Owner | None = None,
    ) -> Awaitable[bool]:
        """Commit one update (sharing the commit with concurrent writes); ``owner`` is the
        writing store (its watch() must not see this row). Await the result.

        It resolves to True when the document's history after its snapshot passed a
        compaction threshold of ``policy``. (A plain function returning the waiter's future:
        one coroutine less per write on the hot path.)
        """
        waiter = Waiter()
        self._add_write(_Write(waiter, path, update, metadata, timestamp, policy, owner))
        return waiter.wait()

    def write_soon(
        self,
        path: str,
        update: bytes,
        metadata: bytes,
        timestamp: float,
        policy: Policy,
        owner: Owner | None,
        done: Callable[[Any, BaseException | None], None],
    ) -> None:
        """``write`` without a task waiting: ``done(wanted, error)`` is called on this event
        loop once the commit is done (or failed)."""
        self._add_write(_Write(CallbackWaiter(done), path, update, metadata, timestamp, policy, owner))

    def _add_write(self, job: _Write) -> None:
        if self.closing:
            raise RuntimeError(f"the SQLite connection to {self.db_path} is closed")
        loop = job.waiter._loop
        if loop is None or self.options.commit_interval <= 0:
            self._queue.put(job)
        else:
            self._pacers.get(loop).add(job.path, job)

    def _send_held(self) -> None:
        """Writes this event loop holds for their commit go first (jobs keep their order)."""
        if self._pacers:
            try:
                pacer = self._pacers.peek(asyncio.get_running_loop())
            except RuntimeError:
                return
            if pacer is not None and pacer.holding:
                pacer.release()

    def post(self, fn: Callable[[sqlite3.Connection, Schema], Any], action: str) -> None:
        """Queue ``fn`` without waiting for it (cleanup from a ``finally`` being cancelled)."""
        if not self.closing:
            self._send_held()
            self._queue.put(_Call(Waiter(), fn, action))

    async def close(self) -> None:
        """Finish every queued job, close the connection and end the thread."""
        waiter = Waiter()
        self._queue.put(_Close(waiter))  # (``release`` sent this loop's held writes first)
        await waiter.wait()

    async def read_rows(
        self, path: str, owner: Owner | None = None
    ) -> list[tuple[bytes, bytes, float]]:
        """Every record of ``path``; ``owner``'s later watch() starts after them."""

        def job(conn: sqlite3.Connection, schema: Schema) -> list[tuple[bytes, bytes, float]]:
            records, last_row = queries.read_rows(conn, schema, path)
            if owner is not None:
                owner.loaded(last_row)
            return records

        return await self.call(job, f"reading {path!r}")

    async def read_updates(
        self, path: str, owner: Owner | None = None
    ) -> tuple[list[bytes], bool, bool]:
        """The updates of ``path`` alone (what a load needs), whether the first is our
        snapshot and whether that is clean (``queries.read_updates``); as ``read_rows``
        otherwise."""

        def job(conn: sqlite3.Connection, schema: Schema) -> tuple[list[bytes], bool, bool]:
            updates, last_row, is_snapshot, is_clean = queries.read_updates(conn, schema, path)
            if owner is not None:
                owner.loaded(last_row)
            return updates, is_snapshot, is_clean

        return await self.call(job, f"reading {path!r}")

    # ------------------------------------------------------------------ live updates

    async def start_watch(self, watch: Watch) -> None:
        await self.call(lambda conn, schema: self.hub.start(conn, watch), "starting to watch")

    async def fetch_watched(self, watch: Watch, waiter: Waiter) -> list[bytes]:
        """Updates for ``watch`` from other writers; none: ``waiter`` is armed."""
        return await self.call(
            lambda conn, schema: self.hub.fetch(conn, watch, waiter),
            f"reading new updates of {watch.owner.path!r}",
            yields=True,  # rows committed first are read now, or skipped as its own
        )

    def stop_watch(self, watch: Watch) -> None:
        """Unregister ``watch`` (from anywhere, without waiting) and release its waiter."""

        def job(conn: sqlite3.Connection, schema: Schema) -> None:
            deliver(self.hub.stop(watch))

        self.post(job, "stopping a watch")

    async def list_documents(self) -> list[DocumentInfo]:
        return await self.call(queries.list_documents, "listing documents")

    async def read_attributes(self, path: str) -> dict[str, bytes]:
        """``path``'s attributes; touches no update (no fold, no watch cursor)."""
        return await self.call(
            lambda conn, schema: attributes.read(conn, schema, path),
            f"reading the attributes of {path!r}",
            fold=False,
        )

    async def write_attributes(self, path: str, values: dict[str, bytes | None]) -> None:
        """Set or remove ``path``'s attributes in one transaction of their own."""
        await self.call(
            lambda conn, schema: attributes.write(conn, schema, self.db_path, path, values),
            f"storing the attributes of {path!r}",
            fold=False,
        )

    async def delete(self, path: str, owner: Owner | None = None) -> None:
        await self.call(self._delete_job(path, owner), f"deleting {path!r}")

    # ------------------------------------------------------------------ jobs (database thread)

    def _delete_job(self, path: str, owner: Owner | None) -> Callable[..., None]:
        def job(conn: sqlite3.Connection, schema: Schema) -> None:
            try:
                queries.delete_document(conn, schema, path)
            finally:
                self.compactor.tails.pop(path, None)
                deliver(self.hub.deleted(path, owner))
            reclaim(conn, self.db_path)

        return job

    # ------------------------------------------------------------------ database thread

    def _main(self) -> None:
        try:
            self.conn, self.schema = open_database(self.db_path, self.options)
        except BaseException as exc:  # reported to every job
            self.failed = self.error(exc, "opening the database")
        else:
            self.checkpointer = self._checkpointer()
        hub = self.hub
        while True:
            timeout = hub.timeout()  # None unless someone watches: then poll other processes
            if self._pending:  # fold once writes pause for FOLD_IDLE
                idle = max(0.0, self._fold_at - time.monotonic())
                timeout = idle if timeout is None else min(timeout, idle)
            try:
                first = [self._queue.get(timeout=timeout)]
            except queue.Empty:
                first = []
            jobs = writes_first(self._take(first))
            i = 0
            while i < len(jobs):
                job = jobs[i]
                if isinstance(job, _Write):
                    j = i + 1
                    while j < len(jobs) and isinstance(jobs[j], _Write):
                        j += 1
                    self._guarded(self._commit_writes, jobs[i:j])
                    i = j
                elif isinstance(job, _Close):
                    try:
                        self._shutdown()
                    except BaseException:  # a bug: the closing store must still be released
                        log.exception("closing the SQLite connection to %s", self.db_path)
                    gone = RuntimeError(f"the SQLite connection to {self.db_path} is closed")
                    deliver(
                        [(job.waiter, None, None)]
                        + [(other.waiter, None, gone) for other in jobs[i + 1 :]]
                    )
                    return
                else:
                    self._guarded(lambda calls: [self._run_call(call) for call in calls], [job])
                    i += 1
                    if not self._queue.empty():  # writes that came meanwhile go first
                        jobs = writes_first(jobs[i:] + self._take([]))
                        i = 0
            try:
                if self._pending and (
                    self._pending >= pending.FOLD_ROWS or time.monotonic() >= self._fold_at
                ) and time.monotonic() >= self._fold_retry_at:
                    self._fold_quietly()
                if hub.active and self.conn is not None:
                    deliver(hub.poll(self.conn, self.fold_for_read))
                if self.checkpointer is not None and self.conn is not None:
                    changes = self.conn.total_changes
                    if changes != self._changes:  # something was committed (or rolled back)
                        self._changes = changes
                        self.checkpointer.committed()
            except Exception:  # a bug: log it and keep serving (nothing was lost)
                log.exception("SQLite thread for %s, between jobs", self.db_path)
                self._rollback()
                self._fold_retry_at = self._fold_at = time.monotonic() + pending.FOLD_RETRY

    def _checkpointer(self) -> Checkpointer | None:
        """A checkpoint thread for a file in WAL mode (none for ``:memory:``, a rollback
        journal, or if the mode cannot be read: SQLite's own checkpoint then does it all)."""
        assert self.conn is not None
        if self.db_path == ":memory:":
            return None
        try:
            (mode,) = self.conn.execute("PRAGMA journal_mode").fetchone()
        except sqlite3.Error as exc:
            log.debug("%s: journal mode not read (%s): no checkpoint thread", self.db_path, exc)
            return None
        return Checkpointer(self.db_path) if str(mode).lower() == "wal" else None

    def _take(self, taken: list[Any]) -> list[Any]:
        """``taken`` and every job queued now, the held batches of writes unpacked."""
        while not self._queue.empty():
            taken.append(self._queue.get())
        jobs: list[Any] = []
        for job in taken:  # a list: a batch of writes the commit pacer held
            if type(job) is list:
                jobs.extend(job)
            else:
                jobs.append(job)
        return jobs

    def _guarded(self, work: Callable[[list[Any]], list[Outcome]], jobs: list[Any]) -> None:
        """Run ``work`` and deliver its outcomes; an unexpected error fails these jobs
        instead of killing the thread (which would leave every later writer waiting)."""
        try:
            outcomes = work(jobs)
        except BaseException as exc:  # a bug: report it, keep serving
            log.exception("SQLite thread for %s", self.db_path)
            self._rollback()
            error = YStoreError(f"internal error: {exc!r}", path=self.db_path)
            outcomes = [(job.waiter, None, error) for job in jobs]
        deliver(outcomes)

    def error(self, exc: BaseException, action: str) -> BaseException:
        note_damage(self.db_path, exc, action)  # set aside at the file's next open
        return map_error(exc, self.db_path, action, self.options.busy_timeout)

    def _run_call(self, job: _Call) -> Outcome:
        if self.failed is not None:
            return job.waiter, None, self.failed
        assert self.conn is not None and self.schema is not None
        try:
            if job.fold:
                self.fold_for_read()
            return job.waiter, job.fn(self.conn, self.schema), None
        except Exception as exc:
            self._rollback()
            return job.waiter, None, self.error(exc, job.action)

    def _rollback(self) -> None:
        conn = self.conn
        if conn is not None and conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def _shutdown(self) -> None:
        self.compactor.close()
        if self.checkpointer is not None:
            self.checkpointer.close()  # our connection closes last: it removes the WAL
        if self.conn is not None:
            self._rollback()
            self._fold_quietly()  # so that other libraries reading the file see every row
            try:
                self.conn.close()
            except sqlite3.Error as exc:  # nothing pending: every write was committed
                log.warning("closing %s: %s", self.db_path, exc)
            self.conn = None

    # ------------------------------------------------------------------ pending rows

    def _may_have_pending(self) -> bool:
        """Whether ``ystore_pending`` may hold rows (ours, counted; or another process's)."""
        conn, schema = self.conn, self.schema
        assert conn is not None and schema is not None
        return schema.has_pending and (self._pending > 0 or pending.any_pending(conn))

    def fold_within(self) -> None:
        """Inside a write transaction: fold pending rows (ours or another process's)."""
        if self._may_have_pending():
            if not pending.fold(self.conn):  # type: ignore[arg-type]
                log.info(
                    "%s: pending rows renumbered (a legacy writer took their rowids)",
                    self.db_path,
                )
            self._pending = 0

    def _fold_now(self) -> None:
        """Fold in a transaction of its own; a sqlite3 error is raised, rolled back."""
        conn = self.conn
        assert conn is not None
        try:
            conn.execute("BEGIN IMMEDIATE")
            self.fold_within()
            conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def fold_for_read(self) -> None:
        """Before a read: every committed row in ``yupdates``.

        A read must not wait for another process's write lock (WAL readers never do), so the
        fold waits at most ``_READ_FOLD_WAIT_MS``; if it cannot run (locked, or a read-only
        file), the read goes ahead: loading a document reads both tables (see
        ``queries.read_rows``), and every other read sees the rows once they are folded
        (their rowids are above what it reads now, so nothing is skipped).
        """
        if not self._may_have_pending():
            return
        conn = self.conn
        assert conn is not None
        conn.execute(f"PRAGMA busy_timeout = {_READ_FOLD_WAIT_MS}")
        try:
            self._fold_now()
        except sqlite3.OperationalError as exc:  # locked, busy, read-only
            log.debug("%s: pending rows not folded before a read: %s", self.db_path, exc)
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(self.options.busy_timeout * 1000)}")

    def _fold_quietly(self) -> None:
        """Fold when nobody waits on it (idle, threshold, close): a failure loses nothing,
        the rows stay pending and the next read or fold retries; it is logged once."""
        if not self._may_have_pending():
            return
        try:
            self._fold_now()
        except sqlite3.Error as exc:
            note_damage(self.db_path, exc, "moving pending rows into yupdates")
            if not self._fold_failing:
                log.warning(
                    "moving pending rows of %s into yupdates: %s (they are safe; retried in "
                    "%g s)",
                    self.db_path,
                    exc,
                    pending.FOLD_RETRY,
                )
                self._fold_failing = True
            self._fold_retry_at = self._fold_at = time.monotonic() + pending.FOLD_RETRY
            return
        if self._fold_failing:
            log.info("moving pending rows of %s into yupdates works again", self.db_path)
            self._fold_failing = False

    # ------------------------------------------------------------------ writes

    def _commit_writes(self, batch: list[_Write]) -> list[Outcome]:
        """One transaction for the whole batch (the hot path: kept to plain loops)."""
        if self.failed is not None:
            return [(job.waiter, None, self.failed) for job in batch]
        conn, schema = self.conn, self.schema
        assert conn is not None and schema is not None
        compactor = self.compactor
        tails = compactor.tails
        outcomes: list[Outcome] = []
        written: list[_Write] = []
        owned: list[tuple[Owner, int, bytes]] = []  # rows of stores that may watch
        try:
            conn.execute("BEGIN IMMEDIATE")
            chunk: list[_Write] = []
            for job in batch:
                path = job.path
                tail = tails.get(path) or compactor.tail(path)
                policy = job.policy
                if (
                    policy.ttl is not None
                    and tail.count > 0
                    and policy.idle(tail.last_ts, job.timestamp)
                ):
                    if chunk:
                        self._insert(conn, chunk, owned)
                        chunk = []
                    error = compactor.squash_idle(
                        conn, schema, path, policy.retention, job.timestamp
                    )
                    if error is not None:
                        outcomes.append((job.waiter, None, error))
                        continue
                    tail = compactor.tail(path)
                chunk.append(job)
                tail.count += 1
                tail.nbytes += len(job.update)
                if tail.last_ts is None or job.timestamp > tail.last_ts:
                    tail.last_ts = job.timestamp
                written.append(job)
            if chunk:
                self._insert(conn, chunk, owned)
            conn.execute("COMMIT")
            if schema.has_pending:
                self._pending += len(written)
                self._fold_at = time.monotonic() + pending.FOLD_IDLE
        except Exception as exc:
            self._rollback()
            for job in batch:
                tails.pop(job.path, None)
            error = self.error(exc, "committing updates")
            failed = {id(waiter) for waiter, _, _ in outcomes}
            return outcomes + [
                (job.waiter, None, error) for job in batch if id(job.waiter) not in failed
            ]
        for owner, rowid, update in owned:
            owner.wrote(rowid, update)
        for job in written:
            tail = tails.get(job.path)
            wanted = tail is not None and job.policy.due(tail.count, tail.nbytes)
            outcomes.append((job.waiter, wanted, None))
        if self.hub.active:
            outcomes += self.hub.committed((job.path, job.owner) for job in written)
        return outcomes

    def _insert(
        self, conn: sqlite3.Connection, chunk: list[_Write], owned: list[tuple[Owner, int, bytes]]
    ) -> None:
        """Insert ``chunk``'s rows (pending, with the rowids they keep); note the rowids of
        those whose store may watch."""
        schema = self.schema
        assert schema is not None
        if schema.has_pending:
            first = pending.newest_row(conn) + 1
            conn.executemany(
                pending.INSERT,
                [
                    (first + i, job.path, job.update, job.metadata, job.timestamp)
                    for i, job in enumerate(chunk)
                ],
            )
        else:  # a legacy file we could not add the table to
            conn.executemany(
                queries.INSERT,
                [(job.path, job.update, job.metadata, job.timestamp) for job in chunk],
            )
        tracked = [
            (i, job) for i, job in enumerate(chunk) if job.owner is not None and job.owner.mark is not None
        ]
        if tracked:
            if not schema.has_pending:
                # consecutive rowids (max(rowid) + 1 each, under the write lock)
                (last,) = conn.execute("SELECT last_insert_rowid()").fetchone()
                first = last - len(chunk) + 1
            owned.extend((job.owner, first + i, job.update) for i, job in tracked)  # type: ignore[misc]

# ---------------------------------------------------------------------- registry

#: The process's open database files, by ``resolve_path`` key.
_DATABASES: SharedMap[str, SharedDatabase] = SharedMap(forget_after_fork=True)


def resolve_path(db_path: str) -> str:
    """The key of a database file: its real absolute path (``:memory:`` stays itself)."""
    if db_path == ":memory:":
        return db_path
    return os.path.realpath(os.path.abspath(os.path.expanduser(db_path)))


def acquire(key: str, options: Options) -> SharedDatabase:
    """The process's connection to the file ``key`` (a ``resolve_path`` result), opened on
    first use; pair with ``release``. No file system access here: safe on the event loop."""
    db = _DATABASES.acquire(
        key,
        lambda: SharedDatabase(key, key, options),
        lambda db: db.failed is None and not db.closing,
    )
    if db.options != options:
        log.warning(
            "%s is already open with %s; a store asking for %s shares that connection",
            key,
            db.options,
            options,
        )
    return db


async def release(db: SharedDatabase) -> None:
    """Drop one reference; the last one closes the connection (after its queued jobs)."""
    db._send_held()  # this loop's held writes go now: the last release may come from another loop
    if _DATABASES.release(db.key, db):
        db.closing = True
        await db.close()


def open_connections() -> int:
    """How many database files this process holds open (for tests)."""
    return len(_DATABASES)
