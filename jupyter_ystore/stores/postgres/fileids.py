"""File ids in PostgreSQL: the table, and a local copy of it kept current.

jupyter-server-fileid's interface is synchronous and called on the server's event loop (every
session, every room's file poll), while asyncpg is asynchronous. So ``FileIdTable`` runs its
own asyncio loop in a daemon thread, holding the connections, and keeps a full copy of the
table in memory (``FileIdCache``): reads (``get_id``, ``get_path``) are dictionary look-ups
and never wait for the database. Writes (a new path indexed, a rename, a delete) are one
round trip, awaited by the caller, so they are durable and every server sees them when the
call returns; the writer's cache is updated from the rows the statement returned.

Other servers learn of a change through NOTIFY (the payload is only a version number) and
read every row changed since the last version they saw; they also poll every
``poll_interval`` seconds, for notifications lost while a connection was down, and reload
the whole table every ``FULL_RELOAD`` seconds. Each change draws its ``version`` from a
sequence while holding a table-wide advisory lock until it commits, so versions follow
commit order and "changed since N" never skips a row. A deleted file keeps its row with
``path NULL`` (a tombstone, so the others see the delete), removed a week later.

Layout: ``<schema>.<table>(id text PRIMARY KEY, path text UNIQUE, ino bigint, version
bigint, changed timestamptz)`` and the sequence ``<table>_version_seq``. ``path`` is relative
to the server root with ``/`` separators (``""`` is the root), so that servers whose roots
are different paths to the same folder agree; the unique constraint makes two servers that
index one new path at once get one id (``INSERT … ON CONFLICT DO NOTHING``, then the
winner's row).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, Sequence, TypeVar

from jupyter_ystore.errors import YStoreError
from jupyter_ystore.stores.postgres.cancelled_connects import quiet_cancelled_connects
from jupyter_ystore.stores.postgres.names import _key, check_identifier, describe_dsn

log = logging.getLogger("jupyter_ystore.fileids")

T = TypeVar("T")

#: Seconds between two reloads of the whole table (tombstones older than a week are gone by
#: then, so a server that slept through them still forgets those ids).
FULL_RELOAD = 600.0
#: Tombstones are kept this long (days) for servers that missed the delete.
TOMBSTONE_DAYS = 7


@dataclass(frozen=True)
class FileRecord:
    """One row: a file id, its path relative to the root (None: deleted), its inode when
    last seen (finds a file renamed outside Jupyter), and the version of its last change."""

    id: str
    path: str | None
    ino: int | None
    version: int


class FileIdNames:
    """SQL text for one (schema, table) pair; names validated once."""

    def __init__(self, schema: str, table: str):
        self.schema = check_identifier(schema, "the PostgreSQL schema name")
        self.table = check_identifier(table, "the file-id table name", 50)
        self.qualified = f'"{schema}"."{table}"'
        self.sequence = f'"{schema}"."{table}_version_seq"'
        self.label = f"{schema}.{table}"
        self.lock_key = _key("file-ids", schema, table)
        self.channel = "jupyter_ystore_ids_" + format(_key("channel", schema, table) & (2**64 - 1), "016x")
        t, seq = self.qualified, self.sequence
        next_version = f"nextval('{seq}')"
        cols = "id, path, ino, version"
        # Every writing statement takes the lock first (``locked``), then draws versions.
        self.create = [
            f'CREATE SCHEMA IF NOT EXISTS "{schema}"',
            f"CREATE SEQUENCE IF NOT EXISTS {seq}",
            f"""CREATE TABLE IF NOT EXISTS {t} (
                id text PRIMARY KEY,
                path text COLLATE "C" UNIQUE,
                ino bigint,
                version bigint NOT NULL,
                changed timestamptz NOT NULL DEFAULT now()
            )""",
            f'CREATE INDEX IF NOT EXISTS "{table}_version_idx" ON {t} (version)',
        ]
        self.select_all = f"SELECT {cols} FROM {t} WHERE path IS NOT NULL"
        self.select_since = f"SELECT {cols} FROM {t} WHERE version > $1 ORDER BY version"
        self.select_max = f"SELECT coalesce(max(version), 0) FROM {t}"
        self.count = f"SELECT count(*) FROM {t} WHERE path IS NOT NULL"
        self.lock = "SELECT pg_advisory_xact_lock($1)"
        self.notify = "SELECT pg_notify($1, $2::text)"
        # One round trip: the lock, the insert unless the path has an id, the notification,
        # and the row (ours or the winner's). A winner that committed after this statement's
        # snapshot is not seen by the last SELECT: the caller runs it again.
        self.index = f"""
            WITH locked AS MATERIALIZED (SELECT count(pg_advisory_xact_lock($4)) AS held),
            ins AS (
                INSERT INTO {t} (id, path, ino, version)
                SELECT $1, $2, $3, {next_version} FROM locked WHERE held >= 0
                ON CONFLICT DO NOTHING
                RETURNING {cols}
            ),
            noted AS (SELECT pg_notify($5, max(version)::text || ':' || $6) FROM ins)
            SELECT {cols} FROM ins, noted
            UNION ALL
            SELECT {cols} FROM {t} WHERE path = $2 AND NOT EXISTS (SELECT 1 FROM ins)
        """
        # ``path`` is $1 or below it: ``$1/…`` (C collation: '0' follows '/').
        self.under = "(path = $1 OR (path >= $1 || '/' AND path < $1 || '0'))"
        self.select_by_path = f"SELECT id FROM {t} WHERE path = $1 FOR UPDATE"
        self.tombstone_tree = f"""
            UPDATE {t} SET path = NULL, version = {next_version}, changed = now()
            WHERE {self.under} AND id <> $2 RETURNING {cols}
        """
        self.move_tree = f"""
            UPDATE {t} SET path = $2 || substr(path, length($1) + 1), version = {next_version},
                changed = now(), ino = CASE WHEN path = $1 AND $3::bigint IS NOT NULL THEN $3 ELSE ino END
            WHERE {self.under} RETURNING {cols}
        """
        self.insert = f"""
            INSERT INTO {t} (id, path, ino, version) VALUES ($1, $2, $3, {next_version})
            ON CONFLICT DO NOTHING RETURNING {cols}
        """
        self.set_ino = f"""
            UPDATE {t} SET ino = $3, version = {next_version}, changed = now()
            WHERE id = $1 AND path = $2 AND ino IS DISTINCT FROM $3 RETURNING {cols}
        """
        self.purge = (
            f"DELETE FROM {t} WHERE path IS NULL AND changed < now() - interval '{TOMBSTONE_DAYS} days'"
        )


def _record(row: Any) -> FileRecord:
    return FileRecord(row["id"], row["path"], row["ino"], row["version"])


class FileIdCache:
    """The table in memory. Written by the database thread and by writers after their
    statement; read from any thread without a lock (each read is one dictionary look-up of
    an immutable record)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_id: dict[str, FileRecord] = {}
        self.by_path: dict[str, str] = {}
        self.by_ino: dict[int, set[str]] = {}
        self.deleted: dict[str, int] = {}  # id -> version of its tombstone
        self.version = 0

    def __len__(self) -> int:
        return len(self.by_id)

    def apply(self, records: Iterable[FileRecord], *, read_upto: int | None = None) -> None:
        """Apply rows in any order: an older version of a row never replaces a newer one.
        ``read_upto``: every change up to that version was read (a catch-up), the next one
        reads from there. Rows a writer applies do not move it: a change of another server
        with a lower version may still be on its way."""
        with self._lock:
            for record in records:
                self._apply(record)
            if read_upto is not None:
                self.version = max(self.version, read_upto)

    def replace(self, records: Sequence[FileRecord], version: int) -> None:
        """The whole table as read at ``version``; what this cache learnt of later versions
        meanwhile (a write of ours, a notification) is kept."""
        with self._lock:
            newer = [r for r in self.by_id.values() if r.version > version]
            newer += [FileRecord(i, None, None, v) for i, v in self.deleted.items() if v > version]
            self.by_id, self.by_path, self.by_ino, self.deleted = {}, {}, {}, {}
            for record in records:
                self._apply(record)
            for record in newer:
                self._apply(record)
            self.version = max(self.version, version)

    def _apply(self, record: FileRecord) -> None:
        old = self.by_id.get(record.id)
        if (old is not None and old.version >= record.version) or self.deleted.get(
            record.id, -1
        ) >= record.version:
            return
        self._forget(record.id)
        if record.path is None:
            self.deleted[record.id] = record.version
        else:
            holder = self.by_path.get(record.path)
            if holder is not None:
                if self.by_id[holder].version > record.version:
                    return  # the path changed hands after this version
                self._forget(holder)
            self.by_id[record.id] = record
            self.by_path[record.path] = record.id
            if record.ino is not None:
                self.by_ino.setdefault(record.ino, set()).add(record.id)

    def _forget(self, ident: str) -> None:
        old = self.by_id.pop(ident, None)
        if old is None:
            return
        if self.by_path.get(old.path or "") == ident:
            del self.by_path[old.path or ""]
        if old.ino is not None:
            ids = self.by_ino.get(old.ino)
            if ids is not None:
                ids.discard(ident)
                if not ids:
                    del self.by_ino[old.ino]

    def under(self, path: str) -> list[FileRecord]:
        """Live records at ``path`` or below it."""
        prefix = path + "/"
        return [r for r in list(self.by_id.values()) if r.path == path or (r.path or "").startswith(prefix)]


def _asyncpg() -> Any:
    try:
        import asyncpg
    except ImportError:  # pragma: no cover - depends on the installation
        raise YStoreError(
            "PostgresFileIdManager needs the asyncpg driver",
            hint="install it with `pip install 'jupyter_ystore[postgres]'`",
        ) from None
    return asyncpg


class FileIdTable:
    """The file-id table of one database, its cache, and the thread that keeps it current.

    ``start()`` blocks until the table exists and is loaded; the ``*_sync`` methods block
    until their statement committed (one round trip); ``submit`` runs a job in the thread
    without waiting.
    """

    def __init__(
        self,
        dsn: str,
        schema: str,
        table: str,
        *,
        connect_timeout: float = 10.0,
        command_timeout: float = 10.0,
        poll_interval: float = 5.0,
    ) -> None:
        self.dsn = dsn
        self.names = FileIdNames(schema, table)
        self.cache = FileIdCache()
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.poll_interval = poll_interval
        self.where = f"{self.names.label} in {describe_dsn(dsn)}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ystore-file-ids", daemon=True)
        self._pool: Any = None
        self._listener: Any = None
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._warned = False
        self._token = uuid.uuid4().hex[:12]  # marks our notifications
        self.closed = False

    # ------------------------------------------------------------------ thread plumbing

    def start(self, on_empty: Callable[[], Sequence[FileRecord]] | None = None) -> int:
        """Connect, create the table if needed, copy ``on_empty()``'s records into it if it
        has none, load it; returns how many records were copied."""
        self._thread.start()
        try:
            copied = self.run(self._start(on_empty), timeout=self.connect_timeout + 60)
        except BaseException:
            self.close()
            raise
        return copied

    def run(self, coro: Awaitable[T], timeout: float | None = None) -> T:
        """Run ``coro`` in the database thread and wait for its result (blocking)."""
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]
        try:
            return future.result(self.command_timeout + 1 if timeout is None else timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise YStoreError(f"no answer from {self.where} within {self.command_timeout} s") from None

    def submit(self, job: Callable[[], Awaitable[None]]) -> None:
        """Run ``job()`` in the database thread; failures are logged, not raised."""
        if self.closed:
            return

        async def guarded() -> None:
            try:
                await job()
            except Exception as exc:
                log.warning("file ids: %s failed: %s", getattr(job, "__name__", "a job"), exc)

        asyncio.run_coroutine_threadsafe(guarded(), self._loop)

    def every(self, interval: float, job: Callable[[], Awaitable[None]]) -> None:
        """Run ``job()`` in the database thread every ``interval`` seconds (checking files)."""

        async def repeat() -> None:
            while True:
                await asyncio.sleep(interval)
                try:
                    await job()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("file ids: %s failed: %s", getattr(job, "__name__", "a check"), exc)

        async def schedule() -> None:
            self._tasks.append(asyncio.ensure_future(repeat()))

        if not self.closed:
            asyncio.run_coroutine_threadsafe(schedule(), self._loop).result(5)

    def close(self) -> None:
        """Close the connections and stop the thread (bounded: 5 s)."""
        if self.closed:
            return
        self.closed = True
        if not self._thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(5)
        except Exception:
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._listener is not None and not self._listener.is_closed():
            try:
                await asyncio.wait_for(self._listener.close(), 2)
            except Exception:
                self._listener.terminate()
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), 2)
            except Exception:
                self._pool.terminate()

    # ------------------------------------------------------------------ start-up and sync

    async def _start(self, on_empty: Callable[[], Sequence[FileRecord]] | None) -> int:
        asyncpg = _asyncpg()
        quiet_cancelled_connects()
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=1,
                max_size=4,
                timeout=self.connect_timeout,
                command_timeout=self.command_timeout,
            )
        except Exception as exc:
            raise YStoreError(f"cannot connect to {self.where}: {exc}") from None
        copied = 0
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute(self.names.lock, self.names.lock_key)
                for statement in self.names.create:
                    await conn.execute(statement)
                await conn.execute(self.names.purge)
                if on_empty is not None and not await conn.fetchval(self.names.count):
                    records = await asyncio.get_running_loop().run_in_executor(None, on_empty)
                    copied = await self._copy_in(conn, records)
        await self._reload()
        self._wake = asyncio.Event()
        await self._listen()
        self._tasks.append(asyncio.ensure_future(self._keep_current()))
        return copied

    async def _copy_in(self, conn: Any, records: Sequence[FileRecord]) -> int:
        """Insert ``records`` (id, path, ino), skipping ids or paths the table has: the caller
        holds the lock in a transaction."""
        copied = 0
        for record in records:
            row = await conn.fetchrow(self.names.insert, record.id, record.path, record.ino)
            copied += row is not None
        if copied:
            await conn.execute(self.names.notify, self.names.channel, "import:" + self._token)
        return copied

    async def import_records(self, records: Sequence[FileRecord]) -> int:
        """Copy ``records`` into the table (ids and paths it has are skipped); how many."""
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute(self.names.lock, self.names.lock_key)
                copied = await self._copy_in(conn, records)
        await self._catch_up()
        return copied

    async def _reload(self) -> None:
        async with self._pool.acquire() as conn:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                version = await conn.fetchval(self.names.select_max)
                rows = await conn.fetch(self.names.select_all)
        self.cache.replace([_record(r) for r in rows], version)

    async def _catch_up(self) -> None:
        rows = await self._pool.fetch(self.names.select_since, self.cache.version)
        if rows:
            records = [_record(r) for r in rows]
            self.cache.apply(records, read_upto=max(r.version for r in records))

    async def _listen(self) -> bool:
        if self._listener is not None and not self._listener.is_closed():
            return True
        asyncpg = _asyncpg()
        try:
            conn = await asyncpg.connect(self.dsn, timeout=self.connect_timeout)
            await conn.add_listener(self.names.channel, self._on_notify)
            conn.add_termination_listener(lambda _conn: self._wake and self._wake.set())
        except Exception as exc:
            if not self._warned:
                self._warned = True
                log.warning("file ids: cannot LISTEN on %s (%s); polling until it works", self.where, exc)
            return False
        self._listener = conn
        if self._warned:
            self._warned = False
            log.info("file ids: listening on %s again", self.where)
        return True

    def _on_notify(self, *args: Any) -> None:
        payload = args[3] if len(args) > 3 else ""
        if isinstance(payload, str) and payload.endswith(":" + self._token):
            return  # our own change: the cache has it already
        if self._wake is not None:
            self._wake.set()

    async def _keep_current(self) -> None:
        """Catch up at each notification, and at least every ``poll_interval``."""
        assert self._wake is not None
        last_reload = time.monotonic()
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await self._listen()
                if time.monotonic() - last_reload > FULL_RELOAD:
                    last_reload = time.monotonic()
                    await self._reload()
                else:
                    await self._catch_up()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("file ids: cannot read changes from %s: %s", self.where, exc)

    # ------------------------------------------------------------------ writes

    async def index(self, path: str, ino: int | None) -> FileRecord:
        """The id of ``path``, a new one unless it has one (one id whoever asks first)."""
        new_id = str(uuid.uuid4())
        for _ in range(5):
            row = await self._pool.fetchrow(
                self.names.index, new_id, path, ino, self.names.lock_key, self.names.channel, self._token
            )
            if row is not None:
                record = _record(row)
                self.cache.apply([record])
                return record
        raise YStoreError(f"could not index {path!r} in {self.where}")

    async def move(
        self, old: str, new: str, ino: int | None, *, expect_id: str | None = None
    ) -> list[FileRecord]:
        """``old`` and everything below it now at ``new``; whatever ``new`` held is deleted.
        The files below ``old`` follow even if ``old`` itself had no id (a folder nobody
        opened, or a rename another server followed first). ``expect_id``: only if ``old`` still holds that id (a rename found on disk,
        which several servers may find at once). Returns the changed rows (empty: nothing
        at or below ``old``, or ``old`` no longer holds ``expect_id``)."""
        n = self.names
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute(n.lock, n.lock_key)
                holder = await conn.fetchval(n.select_by_path, old)
                if expect_id is not None and holder != expect_id:
                    return []
                # What ``new`` held is replaced only by an id that moves there: when ``old``
                # has none (another server already followed this rename), ``new`` keeps its.
                rows = await conn.fetch(n.tombstone_tree, new, holder) if holder else []
                rows += await conn.fetch(n.move_tree, old, new, ino)
                if rows:
                    await conn.execute(n.notify, n.channel, "move:" + self._token)
        records = [_record(r) for r in rows]
        self.cache.apply(records)
        return records

    async def delete(self, path: str) -> list[FileRecord]:
        """``path`` and everything below it deleted (tombstones)."""
        n = self.names
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute(n.lock, n.lock_key)
                rows = await conn.fetch(n.tombstone_tree, path, "")
                if rows:
                    await conn.execute(n.notify, n.channel, "delete:" + self._token)
        records = [_record(r) for r in rows]
        self.cache.apply(records)
        return records

    async def set_ino(self, ident: str, path: str, ino: int) -> None:
        """Record the inode now at ``path`` (a file replaced in place: git checkout, an editor
        that writes a new file), so that a later rename outside Jupyter is found."""
        n = self.names
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute(n.lock, n.lock_key)
                rows = await conn.fetch(n.set_ino, ident, path, ino)
                if rows:
                    await conn.execute(n.notify, n.channel, "ino:" + self._token)
        self.cache.apply(_record(r) for r in rows)


__all__ = ["FileIdCache", "FileIdNames", "FileIdTable", "FileRecord"]
