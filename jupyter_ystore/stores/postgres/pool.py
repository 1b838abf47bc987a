"""One asyncpg pool per (DSN, event loop), shared by every document of the process.

A Jupyter server opens a store per document; a pool each would exhaust the server's
connections. Stores acquire the shared pool in ``_open`` and release it in ``_close``; the
last release closes it. The pool also carries, per table, the group committer, the LISTEN
connection and whether the table's layout was checked, since those are shared too.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Callable

import anyio

from jupyter_ystore.errors import YStoreConnectionError, YStoreError, YStoreVersionError
from jupyter_ystore.stores.postgres.cancelled_connects import quiet_cancelled_connects
from jupyter_ystore.stores.postgres.names import SCHEMA_VERSION, Names, describe_dsn
from jupyter_ystore.stores.shared import SharedMap

log = logging.getLogger(__name__)

def _asyncpg() -> Any:
    try:
        import asyncpg
    except ImportError:  # pragma: no cover - depends on the installation
        raise YStoreError(
            "PostgresYStore needs the asyncpg driver",
            hint="install it with `pip install 'jupyter_ystore[postgres]'`",
        ) from None
    return asyncpg


def connection_error(dsn: str, exc: BaseException, doing: str = "cannot connect to") -> YStoreConnectionError:
    """One readable error for an unreachable server: where, and the driver's own reason."""
    reason = str(exc).strip() or type(exc).__name__
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)) and reason == type(exc).__name__:
        reason = "timed out"
    elif isinstance(exc, OSError) and exc.errno:
        # asyncio says "Connect call failed"; the errno says why (refused, unreachable...).
        reason = f"{os.strerror(exc.errno)} ({reason})"
    return YStoreConnectionError(
        f"{doing} {describe_dsn(dsn)}: {reason}",
        hint="Check that the server runs and accepts connections, and the DSN set in "
        "c.PostgresYStore.dsn or the JUPYTER_YSTORE_DSN environment variable",
    )


def is_connection_failure(exc: BaseException) -> bool:
    """Errors meaning "the server is gone", as opposed to a refused statement."""
    asyncpg = _asyncpg()
    return isinstance(
        exc,
        (
            OSError,
            asyncio.TimeoutError,
            TimeoutError,
            asyncpg.exceptions.ConnectionDoesNotExistError,
            asyncpg.exceptions.CannotConnectNowError,
            asyncpg.exceptions.PostgresConnectionError,
            asyncpg.exceptions.InterfaceError,
            asyncpg.exceptions.InvalidCatalogNameError,
            asyncpg.exceptions.InvalidAuthorizationSpecificationError,
            asyncpg.exceptions.InvalidPasswordError,
            asyncpg.exceptions.AdminShutdownError,
        ),
    )


class SharedPool:
    """The pool of one DSN on one event loop, with the per-table helpers built on it."""

    def __init__(self, dsn: str):
        self.dsn = dsn
        self.pool: Any = None  # connected by the first store that opens it (``connect``)
        self._connect_lock = asyncio.Lock()
        self.tables_ready: set[Names] = set()
        self.attributes_ready: set[Names] = set()  # <table>_attrs known to exist
        self._attributes_warned: set[Names] = set()
        self.history_ready: set[Names] = set()  # <table>_history known to exist
        self._history_warned: set[Names] = set()
        self.setup_lock = asyncio.Lock()
        self.helpers: dict[tuple[str, Names], Any] = {}

    def helper(self, kind: str, names: Names, factory: Callable[[], Any]) -> Any:
        """The one ``kind`` helper (committer, listener) of a table, created on first use."""
        key = (kind, names)
        found = self.helpers.get(key)
        if found is None:
            found = self.helpers[key] = factory()
        return found

    async def connect(
        self, *, max_size: int, connect_timeout: float, command_timeout: float | None
    ) -> None:
        """Create the asyncpg pool unless a store sharing this one already did."""
        async with self._connect_lock:
            if self.pool is not None:
                return
            asyncpg = _asyncpg()
            quiet_cancelled_connects()
            try:
                self.pool = await asyncpg.create_pool(
                    self.dsn,
                    min_size=1,
                    max_size=max(1, max_size),
                    timeout=connect_timeout,
                    command_timeout=command_timeout,
                    reset=_keep_session,
                )
            except Exception as exc:
                if is_connection_failure(exc) or isinstance(
                    exc, asyncpg.exceptions.PostgresError
                ):
                    raise connection_error(self.dsn, exc) from None
                if isinstance(exc, ValueError):  # asyncpg's DSN parser
                    raise YStoreConnectionError(
                        f"invalid PostgreSQL DSN: {exc}",
                        hint="expected postgresql://user@host:port/database",
                    ) from None
                raise

    async def ensure_table(self, names: Names) -> None:
        """Create the table on first use, or check the version of the one found."""
        if names in self.tables_ready:
            return
        async with self.setup_lock:
            if names in self.tables_ready:
                return
            try:
                await _ensure_table(self.pool, names)
                await self.ensure_attributes(names)
                await self.ensure_history(names)
            except YStoreError:
                raise
            except Exception as exc:
                if is_connection_failure(exc):
                    raise connection_error(self.dsn, exc) from None
                raise YStoreError(
                    f"cannot set up the table {names.label} in {describe_dsn(self.dsn)}: {exc}",
                    hint="the database user needs CREATE on the database (first use) and "
                    "SELECT, INSERT, DELETE on the table",
                ) from None
            self.tables_ready.add(names)


    async def ensure_attributes(self, names: Names, *, create: bool = True) -> bool:
        """Whether the attributes table of ``names`` exists, created if missing and
        ``create`` (tables made by an earlier version have none). Without the CREATE
        privilege: False, with one warning; the updates keep working."""
        if names in self.attributes_ready:
            return True
        asyncpg = _asyncpg()
        async with self.pool.acquire() as conn:
            exists = "SELECT to_regclass($1) IS NOT NULL"
            if not await conn.fetchval(exists, names.attributes_table):
                if not create:
                    return False
                try:
                    async with conn.transaction():
                        await conn.execute("SELECT pg_advisory_xact_lock($1)", names.setup_key())
                        await conn.execute(names.create_attributes)
                except asyncpg.exceptions.InsufficientPrivilegeError as exc:
                    if names not in self._attributes_warned:
                        self._attributes_warned.add(names)
                        log.warning(
                            "document attributes cannot be stored: %s has no %s_attrs table "
                            "and this user may not create it (%s); run `%s` as its owner",
                            names.label,
                            names.table,
                            exc,
                            names.create_attributes,
                        )
                    return False
        self.attributes_ready.add(names)
        return True


    async def ensure_history(self, names: Names, *, create: bool = True) -> bool:
        """Whether the history table of ``names`` exists, created if missing and
        ``create`` (tables made by an earlier version have none). Without the CREATE
        privilege: False, with one warning; compaction then keeps no history points."""
        if names in self.history_ready:
            return True
        asyncpg = _asyncpg()
        async with self.pool.acquire() as conn:
            exists = "SELECT to_regclass($1) IS NOT NULL"
            if not await conn.fetchval(exists, names.history_table):
                if not create:
                    return False
                try:
                    async with conn.transaction():
                        await conn.execute("SELECT pg_advisory_xact_lock($1)", names.setup_key())
                        await conn.execute(names.create_history)
                except asyncpg.exceptions.InsufficientPrivilegeError as exc:
                    if names not in self._history_warned:
                        self._history_warned.add(names)
                        log.warning(
                            "history points cannot be kept: %s has no %s_history table and "
                            "this user may not create it (%s); run `%s` as its owner",
                            names.label,
                            names.table,
                            exc,
                            names.create_history,
                        )
                    return False
        self.history_ready.add(names)
        return True


async def _ensure_table(pool: Any, names: Names) -> None:
    asyncpg = _asyncpg()
    async with pool.acquire() as conn:
        # Fast path, needing no CREATE privilege: the table exists and says its version.
        try:
            versions = await conn.fetch(names.select_version)
        except (asyncpg.exceptions.UndefinedTableError, asyncpg.exceptions.InvalidSchemaNameError):
            versions = None
        if versions is None:
            async with conn.transaction():
                # Several servers may start at once on an empty database: one creates.
                await conn.execute("SELECT pg_advisory_xact_lock($1)", names.setup_key())
                exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", names.version_table)
                if not exists:
                    if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", names.qualified):
                        raise YStoreVersionError(
                            f"the table {names.label} exists but has no {names.table}_version "
                            "table: it was not created by jupyter_ystore",
                            hint="point c.PostgresYStore.schema or table_name elsewhere",
                        )
                    for statement in names.create_statements():
                        await conn.execute(statement)
                    return
                versions = await conn.fetch(names.select_version)
    found = sorted({row["version"] for row in versions})
    if found != [SCHEMA_VERSION]:
        raise YStoreVersionError(
            f"the table {names.label} has layout version {', '.join(map(str, found)) or 'none'}; "
            f"this jupyter_ystore knows version {SCHEMA_VERSION} only",
            hint="upgrade jupyter_ystore (or use the one that wrote it), or point "
            "c.PostgresYStore.schema at another schema; nothing was changed",
        )


#: (event loop, DSN) -> SharedPool: asyncpg pools belong to one loop.
_POOLS: SharedMap[tuple[asyncio.AbstractEventLoop, str], SharedPool] = SharedMap()


async def _keep_session(_conn: Any) -> None:
    """Skip asyncpg's reset query (a round trip on every release, a third of a write).

    Safe here: the store never changes a pooled connection's session (no SET, no LISTEN:
    the listener has a connection of its own; advisory locks are transaction-level), and
    asyncpg still rolls back a transaction left open before calling this.
    """


async def acquire(
    dsn: str, *, max_size: int, connect_timeout: float, command_timeout: float | None
) -> SharedPool:
    """The shared pool of ``dsn`` on the running loop, created (and connected) on first use."""
    key = (asyncio.get_running_loop(), dsn)
    shared = _POOLS.acquire(key, lambda: SharedPool(dsn))
    try:
        await shared.connect(
            max_size=max_size, connect_timeout=connect_timeout, command_timeout=command_timeout
        )
    except BaseException:
        with anyio.CancelScope(shield=True):
            await release(shared)
        raise
    return shared


async def release(shared: SharedPool) -> None:
    """Drop one reference; the last one closes the listener connections and the pool."""
    if not _POOLS.release((asyncio.get_running_loop(), shared.dsn), shared):
        return
    for helper in list(shared.helpers.values()):
        aclose = getattr(helper, "aclose", None)
        if aclose is not None:
            await aclose()
    if shared.pool is None:
        return
    try:
        await asyncio.wait_for(shared.pool.close(), timeout=10)
    except Exception:
        shared.pool.terminate()
