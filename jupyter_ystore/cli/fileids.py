"""`jupyter ystore file-ids import|list`: file ids kept in PostgreSQL (PostgresFileIdManager).

``import`` copies the ids of jupyter-server-fileid's SQLite database (``--from``, default the
configured ``c.BaseFileIdManager.db_path``) into the PostgreSQL table, so that the documents
stored under those ids (rooms ``json:notebook:<id>``, keys ``.notebook:<id>.y``) keep their
histories once the servers use ``PostgresFileIdManager``. Ids or paths the table has already
are left as they are. ``list`` prints the table. Connection settings are the server's
(``c.PostgresFileIdManager.*``, else ``c.PostgresYStore.dsn`` and ``schema``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sqlite3
from typing import Any

import anyio
from traitlets import Unicode

from jupyter_ystore.cli.base import CliError, FileIdMapper, StoreCommand, aliases, table, usage_error
from jupyter_ystore.core.keys import key_file_id
from jupyter_ystore.errors import YStoreError


def _settings(config: Any) -> tuple[str, str, str]:
    """DSN, schema and table of the file ids, as the server's PostgresFileIdManager has them."""
    from jupyter_ystore.stores.postgres.store import DSN_ENV, PostgresYStore

    own = config.get("PostgresFileIdManager", {})
    store = PostgresYStore(None, config=config)
    dsn = own.get("dsn") or store.dsn
    if not dsn:
        raise CliError(
            f"no PostgreSQL database: set c.PostgresYStore.dsn, --PostgresYStore.dsn=… or {DSN_ENV}"
        )
    return str(dsn), str(own.get("schema") or store.schema), str(own.get("table_name") or "file_ids")


def uses_postgres_file_ids(config: Any, store_class: type) -> bool:
    """Whether the server keeps its file ids in PostgreSQL: configured, or chosen because
    the store is PostgresYStore (see ``server.fileids.choose_file_id_manager``)."""
    configured = config.get("FileIdExtension", {}).get("file_id_manager_class")
    if configured is not None:
        name = configured if isinstance(configured, str) else getattr(configured, "__name__", "")
        return str(name).rsplit(".", 1)[-1] == "PostgresFileIdManager"
    return any(klass.__name__ == "PostgresYStore" for klass in store_class.mro())


class PostgresFileIdMapper(FileIdMapper):
    """Document key → file path, read from the PostgreSQL file-id table (all of it, once)."""

    def __init__(self, config: Any, root: str | None = None):
        self.root = root
        self._config = config
        self._paths: dict[str, str] | None = None
        self._cache: dict[str, str | None] = {}

    def _load(self) -> dict[str, str]:
        from jupyter_ystore.stores.postgres.fileids import FileIdNames

        dsn, schema, name = _settings(self._config)
        names = FileIdNames(schema, name)

        async def fetch() -> dict[str, str]:
            import asyncpg

            conn = await asyncpg.connect(dsn, timeout=10)
            try:
                if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", names.qualified):
                    return {}
                return {row["id"]: row["path"] for row in await conn.fetch(names.select_all)}
            finally:
                await conn.close()

        # Called from synchronous code inside the command's event loop: a loop of its own in
        # a thread, once per command (a command, not a server: nobody else waits on it).
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            try:
                return pool.submit(asyncio.run, fetch()).result()
            except Exception:
                return {}

    def path_of(self, key: str) -> str | None:
        if self._paths is None:
            self._paths = self._load()
        ident = key_file_id(key)
        return self._paths.get(ident) if ident else None


class FileIdsApp(StoreCommand):
    description = (
        "File ids in PostgreSQL: `import` copies a jupyter-server-fileid SQLite database's ids "
        "(documents keep their histories), `list` shows them."
    )
    aliases = {
        **aliases,
        "from": "FileIdsApp.source",
        "sqlite-root": "FileIdsApp.sqlite_root",
    }
    source = Unicode(
        "",
        config=True,
        help="The SQLite file-id database to import (default: c.BaseFileIdManager.db_path, "
        "else jupyter-server-fileid's default file).",
    )
    sqlite_root = Unicode(
        "",
        config=True,
        help="The root folder of the server that wrote that database (its paths are absolute "
        "under it); default: this server's root.",
    )

    async def run(self) -> int:
        if len(self.extra_args) != 1 or self.extra_args[0] not in ("import", "list"):
            raise usage_error("file-ids takes one action: import or list")
        from jupyter_ystore.stores.postgres.fileids import FileIdTable

        dsn, schema, name = _settings(self.config)
        try:
            ids = FileIdTable(dsn, schema, name, poll_interval=3600)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        try:
            await anyio.to_thread.run_sync(ids.start)
        except YStoreError as exc:
            raise CliError(str(exc)) from None
        try:
            if self.extra_args[0] == "list":
                return self._list(ids)
            return await self._import(ids)
        finally:
            await anyio.to_thread.run_sync(ids.close)

    def _list(self, ids: Any) -> int:
        records = sorted(ids.cache.by_id.values(), key=lambda r: r.path or "")
        if self.json:
            self.emit_json([{"id": r.id, "path": r.path} for r in records])
            return 0
        for line in table([("ID", "PATH")] + [(r.id, r.path or "") for r in records]):
            print(line)
        return 0

    async def _import(self, ids: Any) -> int:
        from jupyter_ystore.server.fileids import read_sqlite_ids

        source = self.source or FileIdMapper._db_path(self.config)
        if not os.path.exists(source):
            raise CliError(f"no SQLite file-id database at {source} (give one with --from=PATH)")
        root = os.path.abspath(os.path.expanduser(self.sqlite_root or self.server_root))
        try:
            records = await anyio.to_thread.run_sync(read_sqlite_ids, source, root)
            total = await anyio.to_thread.run_sync(_count_rows, source)
        except sqlite3.Error as exc:
            raise CliError(f"cannot read {source}: {exc}") from None
        copied = await anyio.to_thread.run_sync(lambda: ids.run(ids.import_records(records), timeout=600))
        result = {
            "from": source,
            "to": ids.names.label,
            "copied": copied,
            "already_there": len(records) - copied,
            "outside_root": total - len(records),
            "root": root,
        }
        if self.json:
            self.emit_json(result)
        else:
            print(
                f"copied {copied} file ids from {source} into {ids.names.label} "
                f"({result['already_there']} already there, {result['outside_root']} not under "
                f"{root} or duplicates)"
            )
        return 0


def _count_rows(db_path: str) -> int:
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return int(con.execute("SELECT count(*) FROM Files").fetchone()[0])
    except sqlite3.Error:
        return 0
    finally:
        con.close()


__all__ = ["FileIdsApp", "PostgresFileIdMapper", "uses_postgres_file_ids"]
