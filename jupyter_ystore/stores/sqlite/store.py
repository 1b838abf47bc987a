"""SQLiteYStore: every document of a server in one SQLite database file.

Storage layout (and why)
------------------------
We keep ypy-websocket's table unchanged: ``yupdates(path, yupdate, metadata, timestamp)``,
its index, ``user_version = 2``. A document's stored form is its newest **snapshot** (the
squashed state, ``jupyter_ystore.ydoc.squash``) as an ordinary ``yupdates`` row, followed by
the updates written after it. Compaction deletes the rows a snapshot covers and gives the
snapshot the rowid of the newest of them, so insertion (rowid) order is still oldest first
and the snapshot comes first. Which row is a snapshot is recorded in a side table,
``ystore_snapshots(path, row, timestamp, covered)``, used only for listings and counters.
A document's attributes (``set_attributes``) are rows of another table of ours,
``ystore_attributes(path, name, value)``, see ``_sqlite_attributes``.

Chosen so that ypy-websocket 0.12.4 and pycrdt-store 0.1.5 can still open, read and even
write a database we wrote (a user can downgrade without losing documents): both read every
``yupdates`` row of a path and apply them all, which restores the same document (checked
by hand against both). New files also get an empty ``ycheckpoints`` table: pycrdt-store,
finding none, would try to create the whole schema again and fail.
Databases written by those libraries are opened in place (see ``compat``), never renamed.

A write commits first into ``ystore_pending`` (the same columns, no secondary index), and
rows are moved into ``yupdates`` in bulk with the rowids they were given: once 2,000 are
pending, 0.25 s after the last write, when the store closes, and before any read of ours.
``yupdates``' index made a commit of 20 documents' updates dirty 20 index pages; see
``_sqlite_pending`` for the figures and for what stays true (durability, rowid order, a
crash before the move). Other libraries reading the file see a row once it is moved.

Compaction
----------
Automatic once ``compact_after_updates`` updates or ``compact_after_bytes`` bytes were
written after the snapshot (so busy documents compact too), after ``document_ttl`` idle
seconds (before the next write, as in the seed), and on ``compact()``. Each replaces the
covered rows by one squashed snapshot in ONE transaction; an update committed meanwhile,
by this process or another, stays after it. Freed pages go back to the file system
(``auto_vacuum = INCREMENTAL``; a legacy file without auto_vacuum is converted in place by
one VACUUM once a quarter of it is free), so the file shrinks: at once after ``compact()``;
after an automatic compaction only once a quarter of the file is free (below that, the next
writes reuse the freed pages, and SQLite's own checkpoint shrinks the WAL). The rows to
squash are read on a second connection in a worker thread, so writers keep committing.

Live updates
------------
``watch()`` yields the updates other writers commit to the document: other processes on the
file (a second server, ``jupyter ystore restore``), other store instances here. The database
thread asks SQLite every ``poll_interval`` seconds whether another connection committed
(``PRAGMA data_version``: one query per database while anyone watches, nothing per
document), reads the new rows of the watched documents by rowid (rowids follow commit order;
a compaction's snapshot keeps the rowid of the newest row it covers, so nothing is skipped),
and wakes this process's watchers at once when another store here commits. A store never
gets its own rows back: the thread records which rows each watching store wrote.
See ``_sqlite_watch``.

Durability
----------
WAL journal. ``synchronous = NORMAL`` (the default): ``await write()`` returns after COMMIT;
the update survives a crash of the process, but a power loss or OS crash may roll back the
last commits (the file stays consistent). ``synchronous = FULL``: every commit is fsynced
before ``write()`` returns, so it also survives power loss; group commit shares that fsync
among concurrent writers.

Under load, a write of another document than the last commit's may wait up to
``commit_interval`` (10 ms) to share the next commit: on a busy server every commit's fixed
cost (waking the database thread, then the event loop) is shared by the writes of many rooms.
It still returns only once committed. A quiet server and a single writer never wait.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any, AsyncIterator, Callable

import anyio
from traitlets import CaselessStrEnum, TraitError, Unicode, validate

from jupyter_ystore.core import threads
from jupyter_ystore.errors import YDocNotFound, YStoreCorruptError
from jupyter_ystore.stores import compaction, squash_helper, upstream_names
from jupyter_ystore.stores.base import BaseYStore, DocumentInfo
from jupyter_ystore.stores.compaction import Policy
from jupyter_ystore.stores.retention import Point, StoredHistory, check_version_name
from jupyter_ystore.stores.filesystems import network_mount
from jupyter_ystore.stores.settings import Count, Seconds, checked
from jupyter_ystore.stores.sqlite import db as _sqlite_db
from jupyter_ystore.stores.sqlite.bridge import Waiter

#: Where a server keeps its documents by default, in its root folder: jupyter-collaboration's
#: file, so that its users' histories are found.
DEFAULT_DB_NAME = ".jupyter_ystore.db"


class SQLiteYStore(BaseYStore):
    """Stores the updates of every document in one SQLite database (``db_path``).

    Configure with traitlets (``c.SQLiteYStore.db_path = "…"``) or, as in ypy-websocket,
    with a subclass that sets ``db_path = "…"``.
    """

    supports_live_updates = True

    db_path = Unicode(
        "ystore.db",
        config=True,
        help="The SQLite database file holding every document's updates. Its folder is "
        "created if needed. Databases written by ypy-websocket 0.12.4, pycrdt-store 0.1.5 "
        "and jupyter-collaboration (.jupyter_ystore.db) are opened in place.",
    )
    document_ttl = Seconds(
        None,
        allow_none=True,
        config=True,
        help="Seconds. A write more than this long after a document's last update first "
        "squashes its history into one snapshot (the seed's meaning). None: never. "
        "Alias: squash_after_inactivity_of.",
    )
    # pycrdt-store 0.1.5's and jupyter-server-ydoc 3.x's names: an alias, and settings
    # refused unless off, each saying what to use instead (see upstream_names).
    squash_after_inactivity_of = upstream_names.ttl_alias()
    squash_history_older_than = upstream_names.unsupported("squash_history_older_than")
    squash_no_more_often_than = upstream_names.unsupported("squash_no_more_often_than")
    checkpoint_interval = upstream_names.unsupported("checkpoint_interval")
    cleanup_when_db_size_above = upstream_names.unsupported("cleanup_when_db_size_above")
    _compress = upstream_names.unsupported("_compress")
    _decompress = upstream_names.unsupported("_decompress")
    register_compression_callbacks = upstream_names.refuse_compression
    compact_after_updates = Count(
        1000,
        allow_none=True,
        config=True,
        help="Compact a document (snapshot replaces history) once this many updates were "
        "written after its last snapshot, so that loading costs the document's size, not "
        "its history. None or 0: never by count.",
    )
    compact_after_bytes = Count(
        1024 * 1024,
        allow_none=True,
        config=True,
        help="Compact a document once the updates written after its last snapshot hold this "
        "many bytes. None or 0: never by size.",
    )
    synchronous = CaselessStrEnum(
        ["NORMAL", "FULL"],
        "NORMAL",
        config=True,
        help="SQLite synchronous mode (WAL journal). NORMAL: a committed update survives a "
        "crash of the process, the last commits may be lost on power loss. FULL: every commit "
        "is on disk before write() returns.",
    )
    journal_mode = CaselessStrEnum(
        ["auto", "WAL", "DELETE"],
        "auto",
        config=True,
        help="SQLite journal. auto: WAL on a local disk; on a network or FUSE file system "
        "(NFS, SMB/CIFS, sshfs...), where WAL's shared-memory index can corrupt the database "
        "silently, DELETE (a rollback journal) with synchronous=FULL, and a warning. DELETE: "
        "always that safe mode. WAL: always WAL (only if every process is on one host and the "
        "file system maps files coherently).",
    )
    busy_timeout = Seconds(
        10.0,
        config=True,
        help="Seconds to wait for another process holding the database's write lock before "
        "a write fails with YStoreLockedError.",
    )
    commit_interval = Seconds(
        0.01,
        config=True,
        help="Under load, at most one commit every this many seconds: writes of other "
        "documents arriving meanwhile wait (at most this long) and share it, which saves "
        "CPU on a busy server. A write never waits when no commit went out in the last "
        "interval, nor behind an earlier write of its own document. 0: every write is "
        "committed at once (group commit still shares the commits of concurrent writes).",
    )
    poll_interval = Seconds(
        0.5,
        positive=True,
        config=True,
        help="Seconds between the checks by which watch() sees updates other processes "
        "committed to the database (one cheap query per database, whatever the number of "
        "documents watched). Other stores of this process are seen at once. Must be > 0, "
        "as on PostgresYStore: a watch always waits between two checks.",
    )

    @validate("db_path")
    def _check_db_path(self, proposal: Any) -> Any:
        value = proposal["value"]
        problem = _db_path_problem(value)
        if problem:
            raise TraitError(f"SQLiteYStore.db_path {value!r}: {problem}")
        return value

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        upstream_names.apply(self)
        self._db: _sqlite_db.SharedDatabase | None = None
        # This store as the database thread knows it: what it loaded and the rows it wrote,
        # so that watch() starts after the load and never hands back our own writes.
        self._owner = _sqlite_db.Owner(self.path)
        self._watches: set[_sqlite_db.Watch] = set()

    # ------------------------------------------------------------------ lifecycle

    def _settings(self) -> tuple[str, _sqlite_db.Options, Policy]:
        """Values of the traits, checked again (a subclass may set plain class attributes),
        and the database's real path. Touches the file system: run in a worker thread."""
        db_path = self.db_path
        problem = _db_path_problem(db_path)
        if problem:
            raise TraitError(f"SQLiteYStore.db_path {db_path!r}: {problem}")
        options = _sqlite_db.Options(
            busy_timeout=float(checked(self, "busy_timeout")),
            synchronous=str(self.synchronous).upper(),
            commit_interval=float(checked(self, "commit_interval")),
        )
        if _safe_journal(self, db_path):  # a network file system: no WAL, fsync each commit
            options = replace(options, journal_mode="DELETE", synchronous="FULL")
        return _sqlite_db.resolve_path(db_path), options, Policy.of(self)

    async def _open(self) -> None:
        db_path, options, self._policy = await threads.run_sync(self._settings)
        db = _sqlite_db.acquire(db_path, options)
        try:
            await db.call(lambda conn, schema: None, "opening the database")
        except BaseException:
            with anyio.CancelScope(shield=True):
                await _sqlite_db.release(db)
            raise
        self._db = db

    async def _compact_once(self) -> None:
        try:
            compactor = self._require_db().compactor
            if await compactor.compact(self.path, policy=self._policy, now=self.clock()):
                compaction.report(type(self).__name__)
        except Exception as exc:  # the updates are intact; the next threshold retries
            self.log.error("automatic compaction of %r failed: %s", self.path, exc, exc_info=True)

    async def _close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            for watch in list(self._watches):  # their generators end
                db.stop_watch(watch)
            await _sqlite_db.release(db)

    def _require_db(self) -> _sqlite_db.SharedDatabase:
        if self._db is None:
            raise RuntimeError(f"YStore not running ({type(self).__name__} {self.path!r})")
        return self._db

    # ------------------------------------------------------------------ the seed's API

    async def write(self, data: bytes, *, metadata: bytes | None = None) -> None:
        """Append one update; returns once it is committed (see the module's Durability).

        A caller cancelled while waiting may still see its update committed.
        """
        if not self._running:
            await self._ensure_running()
        data = self._checked_update(data)
        metadata = await self._metadata_for(metadata)
        db = self._db or self._require_db()
        wanted = await db.write(
            self.path, data, metadata, self.clock(), self._policy, self._owner
        )
        if wanted:
            self._want_compaction()

    def write_soon(
        self, data: bytes, metadata: bytes, done: Callable[[BaseException | None], None]
    ) -> bool:
        """Start committing ``data``, an update a document encoded (so not checked again),
        and call ``done(error)`` on the event loop when the commit is over: what ``write``
        does, without a task that waits. A room's writer hands each keystroke over this way.

        False, and nothing started, where only ``write`` will do: the store is not running,
        its class has a ``write`` of its own, it has a ``metadata_callback``, or no asyncio
        loop runs."""
        db = self._db
        if (
            db is None
            or not self._running
            or type(self).write is not SQLiteYStore.write
            or self.metadata_callback is not None
        ):
            return False

        def committed(wanted: Any, error: BaseException | None) -> None:
            if wanted:
                self._want_compaction()
            done(error)

        try:
            db.write_soon(self.path, data, metadata, self.clock(), self._policy, self._owner, committed)
        except RuntimeError:  # no asyncio loop (trio), or the connection is closing
            return False
        return True

    async def read(self) -> AsyncIterator[tuple[bytes, bytes, float]]:  # type: ignore[override]
        """Every stored ``(update, metadata, timestamp)``, oldest first (snapshot first)."""
        await self._ensure_running()
        records = await self._require_db().read_rows(self.path, self._owner)
        if not records:
            raise YDocNotFound(self.path)
        for record in records:
            yield record

    async def _load(self) -> list[bytes]:
        """Every record, snapshot first; a history long enough to compact (e.g. a legacy
        database's) asks for it."""
        await self._ensure_running()
        updates, self._head_is_snapshot, self._head_is_clean = await self._require_db().read_updates(
            self.path, self._owner
        )
        if not updates:
            raise YDocNotFound(self.path)
        if self._policy.due(len(updates) - 1, 0):
            self._want_compaction()
        return updates

    def _prepare_load(self, updates: list[bytes]) -> list[bytes]:
        """A long history nobody compacted yet (a legacy database) is squashed in the worker
        thread (a big one in the squash helper process) instead: the event loop then applies
        one compact update (still checked: a squash keeps what waits for missing updates)."""
        if len(updates) > _LONG_TAIL + 1:
            return [squash_helper.squash_clean(updates)[0]]
        return super()._prepare_load(updates)

    def _undecodable(self, exc: Exception) -> YStoreCorruptError:
        return compaction.undecodable(self.path, exc, self._require_db().db_path)

    async def watch(self) -> AsyncIterator[bytes]:  # type: ignore[override]
        """Updates committed by other writers (other processes on the file, other stores
        here), in commit order, for as long as the store runs; never this store's own.

        Starts after what this store last loaded (``apply_updates``/``read``), so nothing
        committed between loading and watching is missed; without a load, starts now. A
        compaction's snapshot is yielded when it covers updates not yet yielded (applying
        known content again changes nothing).
        """
        await self._ensure_running()
        db = self._require_db()
        watch = _sqlite_db.Watch(self._owner, float(self.poll_interval))
        self._watches.add(watch)
        try:
            await db.start_watch(watch)
            while self._db is db and not watch.closed:
                waiter = Waiter()
                updates = await db.fetch_watched(watch, waiter)
                for update in updates:
                    yield update
                if not updates:
                    await waiter.wait_for_wake(watch.interval)
        finally:
            self._watches.discard(watch)
            db.stop_watch(watch)

    # ------------------------------------------------------------------ admin API

    @classmethod
    def default_settings(cls, server_root: str) -> dict[str, Any]:
        return {"db_path": os.path.join(server_root, DEFAULT_DB_NAME)}

    def location(self) -> str:
        return f"c.{type(self).__name__}.db_path = {self.db_path!r}"

    def missing_location(self) -> str | None:
        path = self.db_path
        if path == ":memory:" or os.path.exists(os.path.expanduser(path)):
            return None
        return path

    async def list_documents(self) -> list[DocumentInfo]:
        """Every document in the database with its record count, bytes, time span and
        snapshots (a pycrdt-store checkpoint counts as a record and a snapshot)."""
        await self._ensure_running()
        return await self._require_db().list_documents()

    async def compact(self) -> None:
        """Replace this document's history by one snapshot, in one transaction (the
        updates it replaces become history points, ``history_retention``)."""
        await self._ensure_running()
        done = await self._require_db().compactor.compact(
            self.path, retention=self._policy.retention, now=self.clock()
        )
        if not done:
            raise YDocNotFound(self.path)
        compaction.report(type(self).__name__)

    async def read_history(self) -> StoredHistory:
        """Retained points and log records in one read transaction; ``watch()`` is not
        moved."""
        await self._ensure_running()
        stored = await self._require_db().compactor.read_history(self.path)
        if stored.empty:
            raise YDocNotFound(self.path)
        return stored

    async def save_version(self, name: str, saved_by: str | None = None) -> Point:
        """Compact, ending the history with a point named ``name`` (one transaction)."""
        await self._ensure_running()
        name = check_version_name(name)
        done = await self._require_db().compactor.compact(
            self.path,
            retention=self._policy.retention,
            now=self.clock(),
            name=name,
            saved_by=saved_by,
        )
        if not done:
            raise YDocNotFound(self.path)
        compaction.report(type(self).__name__)
        stored = await self.read_history()
        return next(point for point in stored.points if point.name == name)

    async def delete_version(self, name: str) -> None:
        await self._ensure_running()
        await self._require_db().compactor.delete_version(self.path, name)

    async def delete(self) -> None:
        """Forget everything stored for this document (its pycrdt-store checkpoint and its
        attributes too)."""
        await self._ensure_running()
        await self._require_db().delete(self.path, self._owner)

    async def _read_attributes(self) -> dict[str, bytes]:
        return await self._require_db().read_attributes(self.path)

    async def _write_attributes(self, values: dict[str, bytes | None]) -> None:
        await self._require_db().write_attributes(self.path, values)


#: Above this many updates after the snapshot, loading squashes them all in its worker
#: thread (50,000 updates: ~0.2 s) instead of merging them (seconds).
_LONG_TAIL = 2000


def _db_path_problem(value: Any) -> str | None:
    """Why ``value`` cannot be a database path (None when it can), without touching disk."""
    if not isinstance(value, str) or not value:
        return "must be a non-empty file path"
    if value == ":memory:":
        return None
    if "\0" in value:
        return "contains a NUL character"
    path = os.path.abspath(os.path.expanduser(value))
    if os.path.isdir(path):
        return "is a folder; name a database file inside it"
    folder = os.path.dirname(path)
    while not os.path.exists(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    if not os.path.isdir(folder):
        return f"its folder cannot be created: {folder!r} is a file, not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"its folder cannot be created or written: no write access to {folder!r}"
    return None


def _safe_journal(store: SQLiteYStore, db_path: str) -> bool:
    """Whether ``db_path`` gets the network-safe mode (``journal_mode``; auto: when the file
    is on a network or FUSE file system). Reads the mount table: not on the event loop."""
    mode = str(store.journal_mode).upper()
    if mode == "AUTO":
        return db_path != ":memory:" and network_mount(db_path) is not None
    return mode == "DELETE"
