"""PostgresYStore: every document of every server in one PostgreSQL table.

For deployments with several Jupyter servers (replicas behind a proxy, JupyterHub, home
folders on NFS where SQLite's locks fail). Same semantics as SQLiteYStore:

- ``write`` returns once the update is committed (durable as the server's
  ``synchronous_commit`` says: with its default, flushed to the WAL); concurrent writes of a
  process share one transaction (group commit, ``_pg_commit``).
- A document is stored as its newest snapshot plus the updates after it; ``_load`` reads
  exactly that. Compaction runs in the background when the updates after the snapshot reach
  ``compact_after_updates`` or ``compact_after_bytes``, and on ``compact()``; a write coming
  more than ``document_ttl`` seconds after the document's last update squashes it first.
- Several processes may write one document: ids come from the table's identity column, and
  a per-document advisory lock taken before an id is drawn makes ids follow commit order.
  Compaction is done by one process at a time and never drops an update committed during it
  (``_pg_compact``). Each process counts its own writes toward the compaction thresholds.
- Layout: ``<schema>.<table>(id, path, yupdate, metadata, timestamp, snapshot, origin)``
  and ``<table>_version`` holding the layout version; created on first use, checked after.
  ``<table>_attrs(path, name, value)`` holds the documents' attributes (``set_attributes``):
  created with the others, or beside a table an earlier version made (same layout version:
  see ``_pg_names.SCHEMA_VERSION``). Read on every call, never cached, so every server sees
  every other's values.
  One asyncpg pool per (DSN, event loop) serves every document of the process.

Live updates (``watch``) use LISTEN/NOTIFY *and* polling by id. NOTIFY wakes watchers within
milliseconds of a commit and costs nothing while a document is idle, which polling alone
cannot offer at once (a short poll interval costs a query per open document and server every
interval). But a notification is only a hint: it is lost while the listening connection is
down, and its payload is limited to 8000 bytes. So a notification carries only ``id:path``,
a watcher always reads the rows with ``id > last seen`` (which, thanks to the commit-ordered
ids, never skips a row), and a watcher also polls every ``poll_interval`` seconds, so that a
lost notification delays an update, never loses it.

asyncpg is asyncio only: use this store with anyio's asyncio backend (Jupyter's default).
"""

from __future__ import annotations

import os
import random
from typing import Any, AsyncIterator, Sequence

import anyio
from traitlets import Int, TraitError, Unicode, default, validate

from jupyter_ystore.errors import (
    YDocNotFound,
    YStoreConnectionError,
    YStoreError,
    YStorePermissionError,
)
from jupyter_ystore.stores import compaction, upstream_names
from jupyter_ystore.stores.base import BaseYStore, DocumentInfo
from jupyter_ystore.stores.compaction import Policy
from jupyter_ystore.stores.postgres import compact as _pg_compact
from jupyter_ystore.stores.postgres import pool as _pg_pool
from jupyter_ystore.stores.postgres.commit import GroupCommitter, Pending
from jupyter_ystore.stores.postgres.compact import CompactResult, compact_document
from jupyter_ystore.stores.postgres.listen import Listener
from jupyter_ystore.stores.postgres.names import Names, check_identifier, describe_dsn
from jupyter_ystore.stores.retention import Point, StoredHistory, check_version_name
from jupyter_ystore.stores.settings import Count, Seconds

DSN_ENV = "JUPYTER_YSTORE_DSN"
_IMPORT_CHUNK = 10_000  # rows per INSERT statement of import_records


class PostgresYStore(BaseYStore):
    """Yjs updates of many documents in one PostgreSQL table, shared by many servers."""

    supports_live_updates = True

    dsn = Unicode(
        None,
        allow_none=True,
        config=True,
        help=f"""PostgreSQL connection string, e.g. postgresql://user@host:5432/dbname.
        When not configured, the {DSN_ENV} environment variable is used.""",
    )
    schema = Unicode(
        "jupyter_ystore",
        config=True,
        help="PostgreSQL schema holding the table (created on first use).",
    )
    table_name = Unicode(
        "yupdates",
        config=True,
        help="Table of the updates; a table <name>_version beside it records its layout version.",
    )
    pool_size = Int(
        10,
        config=True,
        help="Most connections the process opens to this database (shared by all documents).",
    )
    document_ttl = Seconds(
        None,
        allow_none=True,
        config=True,
        help="""A write coming more than this many seconds after the document's last update
        first squashes the document's history into one snapshot. None: never. Alias:
        squash_after_inactivity_of.""",
    )
    squash_after_inactivity_of = upstream_names.ttl_alias()  # pycrdt-store's name
    compact_after_updates = Count(
        500,
        allow_none=True,
        config=True,
        help="""Compact a document (a snapshot replaces its history) once this many updates
        follow its last snapshot, so that loading costs the document's size, not its history.
        None or 0: never by count. Counted per process: with several servers writing one
        document, each counts its own writes.""",
    )
    compact_after_bytes = Count(
        1024 * 1024,
        allow_none=True,
        config=True,
        help="""Compact a document once the updates after its last snapshot hold this many
        bytes. None or 0: never by size.""",
    )
    poll_interval = Seconds(
        2.0,
        positive=True,
        config=True,
        help="""Seconds between the polls by which watch() catches updates whose
        notification was lost (normally NOTIFY delivers them at once). Must be > 0, as on
        SQLiteYStore: a watch always waits between two polls.""",
    )
    connect_timeout = Seconds(
        10.0, positive=True, config=True, help="Seconds to wait for a connection (> 0)."
    )
    command_timeout = Seconds(
        60.0,
        positive=True,
        allow_none=True,
        config=True,
        help="Seconds a statement may take (> 0; None: no limit).",
    )

    @default("dsn")
    def _default_dsn(self) -> str | None:
        return os.environ.get(DSN_ENV) or None

    @validate("pool_size")
    def _check_pool_size(self, proposal: Any) -> int:
        if proposal["value"] < 1:
            raise TraitError(f"PostgresYStore.pool_size must be >= 1, got {proposal['value']}")
        return proposal["value"]

    @validate("schema")
    def _check_schema(self, proposal: Any) -> str:
        return check_identifier(proposal["value"], "PostgresYStore.schema")

    @validate("table_name")
    def _check_table(self, proposal: Any) -> str:
        return check_identifier(proposal["value"], "PostgresYStore.table_name", 55)

    def __init__(self, path: str | None, *args: Any, **kwargs: Any) -> None:
        super().__init__(path, *args, **kwargs)
        upstream_names.apply(self)
        if path is not None and "\0" in path:
            raise ValueError(f"a document path cannot contain NUL characters: {path!r}")
        self._shared: _pg_pool.SharedPool | None = None
        self._names: Names | None = None
        # Marks this instance's rows, so that watch() does not hand them back.
        self._origin = random.getrandbits(62) + 1
        self._seen_id: int | None = None  # newest id applied by the last _load/read/watch
        self._last_known_timestamp: float | None = None  # a lower bound of the last update
        self._tail_updates = 0
        self._tail_bytes = 0

    # ------------------------------------------------------------------ lifecycle

    async def _open(self) -> None:
        self._policy = Policy.of(self)
        dsn = self.dsn
        if not dsn:
            raise YStoreConnectionError(
                "no PostgreSQL database configured for PostgresYStore",
                hint=f"set c.PostgresYStore.dsn or the {DSN_ENV} environment variable "
                "to postgresql://user@host:port/database",
            )
        names = Names(self.schema, self.table_name)
        shared = await _pg_pool.acquire(
            dsn,
            max_size=self.pool_size,
            connect_timeout=self.connect_timeout,
            command_timeout=self.command_timeout,
        )
        try:
            await shared.ensure_table(names)
            self._shared, self._names = shared, names
            row = await self._fetchrow(names.select_tail_stats, self.path)
        except BaseException:
            self._shared = None
            with anyio.CancelScope(shield=True):
                await _pg_pool.release(shared)
            raise
        self._tail_updates, self._tail_bytes, self._last_known_timestamp = row[0], row[1], row[2]
        self._request_compaction_if_due()

    async def _close(self) -> None:
        shared, self._shared = self._shared, None
        if shared is not None:
            await _pg_pool.release(shared)

    async def _compact_once(self) -> None:
        try:
            result = await self._compact(self._policy, wait=False)
        except YStoreError as exc:
            # The data is intact (the transaction rolled back). Retry after another
            # threshold's worth of writes, not on every write (e.g. a corrupt record).
            self.log.warning("automatic compaction of %r failed: %s", self.path, exc)
            self._tail_updates = self._tail_bytes = 0
            return
        if not result.done and not result.busy:
            self._tail_updates, self._tail_bytes = result.tail_updates, result.tail_bytes

    # ------------------------------------------------------------------ helpers

    @property
    def _table(self) -> Names:
        assert self._names is not None
        return self._names

    def _pool(self) -> Any:
        if self._shared is None:
            raise RuntimeError(f"PostgresYStore {self.path!r} is not open")
        return self._shared.pool

    def _error(self, exc: Exception, doing: str) -> YStoreError:
        if isinstance(exc, YStoreError):
            return exc
        dsn = self.dsn or ""
        if _pg_pool.is_connection_failure(exc):
            return _pg_pool.connection_error(dsn, exc, "lost the connection to")
        return YStoreError(
            f"could not {doing} {self.path!r} in {self._table.label}, {describe_dsn(dsn)}: "
            f"{type(exc).__name__}: {exc}"
        )

    async def _fetch(self, sql: str, *args: Any, doing: str = "read") -> list[Any]:
        try:
            return await self._pool().fetch(sql, *args)
        except Exception as exc:
            raise self._error(exc, doing) from None

    async def _fetchrow(self, sql: str, *args: Any, doing: str = "read") -> Any:
        try:
            return await self._pool().fetchrow(sql, *args)
        except Exception as exc:
            raise self._error(exc, doing) from None

    def _committer(self) -> GroupCommitter:
        shared = self._shared
        assert shared is not None
        return shared.helper(
            "commit", self._table, lambda: GroupCommitter(shared.pool, self._table, shared.dsn)
        )

    def _listener(self) -> Listener:
        shared = self._shared
        assert shared is not None
        return shared.helper(
            "listen",
            self._table,
            lambda: Listener(shared.dsn, self._table, self.connect_timeout),
        )

    def _shield_limit(self) -> float:
        """How long a shielded transaction may hold up stop() before it is abandoned."""
        return 2 * (self.command_timeout or 60.0)

    def _request_compaction_if_due(self) -> None:
        if self._policy.due(self._tail_updates, self._tail_bytes):
            self._want_compaction()

    async def _compact(
        self,
        policy: Policy | None,
        *,
        wait: bool,
        name: str | None = None,
        saved_by: str | None = None,
    ) -> CompactResult:
        """Compact if ``policy`` says it is due (None: whenever there is a tail), keeping
        history points (``history_retention``; ``name``: ending with that version)."""
        shared = self._shared
        assert shared is not None
        try:
            # Shielded: a transaction cut by cancellation (stop()) could not even roll back.
            with anyio.fail_after(self._shield_limit(), shield=True):
                keeps = await shared.ensure_history(self._table)
                if name is not None and not keeps:
                    raise YStorePermissionError(
                        f"cannot save a version of {self.path!r}: {self._table.label} has no "
                        f"{self._table.table}_history table and this database user may not "
                        "create it",
                        hint=f"run `{self._table.create_history}` as the owner of the schema",
                    )
                result = await compact_document(
                    self._pool(),
                    self._table,
                    self.path,
                    policy=policy,
                    wait=wait,
                    retention=self._policy.retention if keeps else None,
                    now=self.clock(),
                    name=name,
                    saved_by=saved_by,
                )
        except (ValueError, KeyError):  # VersionExists, VersionNotFound: the caller's
            raise
        except Exception as exc:
            raise self._error(exc, "compact") from None
        if result.done:
            self._tail_updates = self._tail_bytes = 0
            compaction.report(type(self).__name__)
        return result

    # ------------------------------------------------------------------ the store API

    async def write(self, data: bytes, *, metadata: bytes | None = None) -> None:
        """Append one update; returns once it is committed."""
        await self._ensure_running()
        update = self._checked_update(data)
        metadata = await self._metadata_for(metadata)
        now = self.clock()
        if self._policy.ttl is not None:
            await self._squash_if_idle(now)
        item = Pending(self.path, update, metadata, now, self._origin)
        await self._committer().submit(item)
        self._last_known_timestamp = max(self._last_known_timestamp or now, now)
        self._tail_updates += 1
        self._tail_bytes += len(update)
        self._request_compaction_if_due()

    async def _squash_if_idle(self, now: float) -> None:
        known = self._last_known_timestamp
        if known is not None and not self._policy.idle(known, now):
            return  # this store wrote (or saw) an update recently: the document is not idle
        last = (await self._fetchrow(self._table.select_last_timestamp, self.path))[0]
        if self._policy.idle(last, now):
            await self._compact(None, wait=True)
        self._last_known_timestamp = last

    async def read(self) -> AsyncIterator[tuple[bytes, bytes, float]]:
        """Every stored record, oldest first; a snapshot comes first, with empty metadata."""
        await self._ensure_running()
        rows = await self._fetch(self._table.select_document, self.path)
        self._seen_id = rows[-1]["id"] if rows else 0
        if not rows:
            raise YDocNotFound(self.path)
        for row in rows:
            yield bytes(row["yupdate"]), bytes(row["metadata"]), row["timestamp"]

    async def _load(self) -> list[bytes]:
        """The newest snapshot and the updates after it (one statement, so consistent)."""
        await self._ensure_running()
        rows = await self._fetch(self._table.select_updates, self.path)
        self._seen_id = rows[-1]["id"] if rows else 0
        self._head_is_snapshot = bool(rows) and bool(rows[0]["snapshot"])
        self._head_is_clean = bool(rows) and bool(rows[0]["clean"])
        return [bytes(row["yupdate"]) for row in rows]

    # ------------------------------------------------------------------ optional API

    def location(self) -> str:
        # the DSN may hold a password: the setting is named, not shown
        return f"c.{type(self).__name__}.dsn or JUPYTER_YSTORE_DSN"

    async def list_documents(self) -> list[DocumentInfo]:
        await self._ensure_running()
        rows = await self._fetch(self._table.list_documents)
        return [
            DocumentInfo(
                path=row["path"],
                updates=row["updates"],
                bytes=row["bytes"],
                first_timestamp=row["first"],
                last_timestamp=row["last"],
                snapshots=row["snapshots"],
            )
            for row in rows
        ]

    async def compact(self) -> None:
        """Replace the document's history by one snapshot now (waits for a compaction
        running elsewhere, then merges whatever came after it)."""
        await self._ensure_running()
        await self._compact(None, wait=True)

    async def read_history(self) -> StoredHistory:
        """Retained points and log records in one repeatable-read transaction; ``watch()``
        is not moved."""
        await self._ensure_running()
        shared = self._shared
        assert shared is not None
        try:
            with_points = await shared.ensure_history(self._table, create=False)
            async with self._pool().acquire() as conn:
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    stored = await _pg_compact.read_history(
                        conn, self._table, self.path, with_points
                    )
        except Exception as exc:
            raise self._error(exc, "read the history of") from None
        if stored.empty:
            raise YDocNotFound(self.path)
        return stored

    async def save_version(self, name: str, saved_by: str | None = None) -> Point:
        """Compact now (waiting for a compaction running elsewhere), ending the history
        with a point named ``name``; one transaction."""
        await self._ensure_running()
        name = check_version_name(name)
        result = await self._compact(None, wait=True, name=name, saved_by=saved_by)
        if not result.done:
            raise YDocNotFound(self.path)
        stored = await self.read_history()
        return next(point for point in stored.points if point.name == name)

    async def delete_version(self, name: str) -> None:
        await self._ensure_running()
        shared = self._shared
        assert shared is not None
        try:
            if not await shared.ensure_history(self._table, create=False):
                from jupyter_ystore.stores.retention import VersionNotFound

                raise VersionNotFound(name)
            with anyio.fail_after(self._shield_limit(), shield=True):
                async with self._pool().acquire() as conn:
                    await _pg_compact.delete_version(conn, self._table, self.path, name)
        except (ValueError, KeyError):
            raise
        except Exception as exc:
            raise self._error(exc, "remove a version of") from None

    async def delete(self) -> None:
        """Forget the document; waits for a compaction of it to finish first."""
        await self._ensure_running()
        try:
            with anyio.fail_after(self._shield_limit(), shield=True):
                await self._delete_rows()
        except Exception as exc:
            raise self._error(exc, "delete") from None
        self._tail_updates = self._tail_bytes = 0
        self._seen_id = None
        self._last_known_timestamp = None

    async def _delete_rows(self) -> None:
        names = self._table
        assert self._shared is not None
        attributes = await self._shared.ensure_attributes(names, create=False)
        history = await self._shared.ensure_history(names, create=False)
        async with self._pool().acquire() as conn:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", names.compact_key(self.path))
                await conn.execute("SELECT pg_advisory_xact_lock($1)", names.write_key(self.path))
                await conn.execute(names.delete_document, self.path)
                if attributes:
                    await conn.execute(names.delete_attributes, self.path)
                if history:
                    await conn.execute(names.delete_history, self.path)

    async def _read_attributes(self) -> dict[str, bytes]:
        """One SELECT; touches no update and not ``watch()``'s position."""
        assert self._shared is not None
        try:
            if not await self._shared.ensure_attributes(self._table, create=False):
                return {}  # an earlier version's tables, nobody allowed to add ours yet
        except Exception as exc:
            raise self._error(exc, "read the attributes of") from None
        rows = await self._fetch(
            self._table.select_attributes, self.path, doing="read the attributes of"
        )
        return {row["name"]: bytes(row["value"]) for row in rows}

    async def _write_attributes(self, values: dict[str, bytes | None]) -> None:
        """One statement (atomic), committed when it returns."""
        names = self._table
        assert self._shared is not None
        removed = [name for name, value in values.items() if value is None]
        kept = [(name, value) for name, value in values.items() if value is not None]
        try:
            # Shielded: a statement cut by cancellation (stop()) could leave the
            # connection unusable; it is one short transaction.
            with anyio.fail_after(self._shield_limit(), shield=True):
                if not await self._shared.ensure_attributes(names):
                    raise YStorePermissionError(
                        f"cannot store attributes of {self.path!r}: {names.label} has no "
                        f"{names.table}_attrs table and this database user may not create it",
                        hint=f"run `{names.create_attributes}` as the owner of the schema; "
                        "the documents' updates are not affected",
                    )
                await self._pool().execute(
                    names.set_attributes,
                    self.path,
                    removed,
                    [name for name, _value in kept],
                    [value for _name, value in kept],
                )
        except Exception as exc:
            raise self._error(exc, "store the attributes of") from None

    async def import_records(self, records: Sequence[tuple[bytes, bytes, float]]) -> None:
        """Append stored records as they are, metadata and timestamps kept, in ONE
        transaction: all or nothing (used by ``jupyter_ystore.stores.migrate``)."""
        await self._ensure_running()
        names = self._table
        try:
            with anyio.fail_after(self._shield_limit(), shield=True):
                async with self._pool().acquire() as conn, conn.transaction():
                    for start in range(0, len(records), _IMPORT_CHUNK):
                        chunk = records[start : start + _IMPORT_CHUNK]
                        await conn.execute(
                            names.insert_batch,
                            [self.path] * len(chunk),
                            [bytes(record[0]) for record in chunk],
                            [bytes(record[1]) for record in chunk],
                            [float(record[2]) for record in chunk],
                            [self._origin] * len(chunk),
                            names.channel,
                            [names.write_key(self.path)],
                        )
        except Exception as exc:
            raise self._error(exc, "import into") from None
        self._tail_updates += len(records)
        self._tail_bytes += sum(len(record[0]) for record in records)
        self._request_compaction_if_due()

    async def watch(self) -> AsyncIterator[bytes]:
        """Updates committed by other stores (other servers, or other instances here), in
        commit order, for as long as the store runs.

        Starts after what this store last loaded (``apply_updates``/``read``), so nothing
        committed between loading and watching is missed; without a load, starts now. This
        store's own writes are not yielded; a snapshot written by a compaction is (it may
        hold updates not yet seen, and applying known content again changes nothing). While
        the server is unreachable it logs once and retries every ``poll_interval``.
        """
        await self._ensure_running()
        listener = self._listener()
        waker = listener.register(self.path)
        try:
            if self._seen_id is None:
                self._seen_id = (await self._fetchrow(self._table.select_max_id, self.path))[0]
            last = self._seen_id
            outage: YStoreConnectionError | None = None
            while True:
                await listener.ensure()
                waker.reset()
                try:
                    rows = await self._fetch(self._table.select_after, self.path, last)
                except YStoreConnectionError as exc:
                    # The server is away (restart, failover): keep trying at the poll rate;
                    # "id > last" resumes exactly where we were once it is back.
                    if outage is None:
                        self.log.warning("live updates of %r paused: %s", self.path, exc)
                    outage = exc
                    await waker.wait(self.poll_interval)
                    continue
                if outage is not None:
                    self.log.info("live updates of %r resumed", self.path)
                    outage = None
                for row in rows:
                    last = row["id"]
                    if self._seen_id is None or last > self._seen_id:
                        self._seen_id = last
                    if row["origin"] == self._origin and not row["snapshot"]:
                        continue
                    yield bytes(row["yupdate"])
                await waker.wait(self.poll_interval)
        finally:
            listener.unregister(waker)
