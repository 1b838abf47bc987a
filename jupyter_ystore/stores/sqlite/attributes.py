"""Document attributes on SQLite: a table of our own, ``ystore_attributes`` (database thread).

A new table rather than a column: ypy-websocket 0.12.4 and pycrdt-store 0.1.5 read only
``yupdates`` (and ``ycheckpoints``) and ignore tables they do not know, so a file keeps
opening with them after we stored attributes in it. The table is created with the others on
new files and added when we adopt an older file; a read-only file without it reads as "no
attributes" and refuses a set with ``YStorePermissionError``.

A set is one ``BEGIN IMMEDIATE`` ... ``COMMIT`` of its own, durable as a write is (the
store's ``synchronous``), and never grouped with the writes' commits (a value may be MBs).
Reads and sets do not fold pending rows (``SharedDatabase.call(fold=False)``), so reading
attributes does not change what ``watch()`` yields or when.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

from jupyter_ystore.errors import YStorePermissionError

if TYPE_CHECKING:  # _sqlite_schema imports this module
    from jupyter_ystore.stores.sqlite.schema import Schema

TABLE = "ystore_attributes"

CREATE = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} "
    "(path TEXT NOT NULL, name TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (path, name))"
)

_SELECT = f"SELECT name, value FROM {TABLE} WHERE path = ?"
_UPSERT = f"INSERT OR REPLACE INTO {TABLE} (path, name, value) VALUES (?, ?, ?)"
_DELETE_NAME = f"DELETE FROM {TABLE} WHERE path = ? AND name = ?"
_DELETE_ALL = f"DELETE FROM {TABLE} WHERE path = ?"
_EXISTS = f"SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '{TABLE}'"


def present(conn: sqlite3.Connection, schema: Schema) -> bool:
    """Whether the table exists (looked up again while it does not: another process may
    add it to a file we opened without it)."""
    if not schema.has_attributes:
        schema.has_attributes = conn.execute(_EXISTS).fetchone() is not None
    return schema.has_attributes


def read(conn: sqlite3.Connection, schema: Schema, path: str) -> dict[str, bytes]:
    """``path``'s attributes (one statement: a consistent view)."""
    if not present(conn, schema):
        return {}
    return {name: bytes(value) for name, value in conn.execute(_SELECT, (path,))}


def write(
    conn: sqlite3.Connection,
    schema: Schema,
    db_path: str,
    path: str,
    values: dict[str, bytes | None],
) -> None:
    """Set or remove ``values``' names of ``path`` in one transaction (table made if missing)."""
    if not present(conn, schema):
        try:
            conn.execute(CREATE)
        except sqlite3.OperationalError as exc:
            if "readonly" not in str(exc).lower():
                raise
            raise YStorePermissionError(
                f"cannot store attributes of {path!r}: the database is read-only and has no "
                f"{TABLE} table (it was written by an older library)",
                path=db_path,
                hint="give this process write access to the database file and its folder; "
                "its documents can still be read",
            ) from exc
        schema.has_attributes = True
    conn.execute("BEGIN IMMEDIATE")
    try:
        for name, value in values.items():
            if value is None:
                conn.execute(_DELETE_NAME, (path, name))
            else:
                conn.execute(_UPSERT, (path, name, value))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def delete(conn: sqlite3.Connection, schema: Schema, path: str) -> None:
    """Inside the deletion's transaction: forget ``path``'s attributes."""
    if present(conn, schema):
        conn.execute(_DELETE_ALL, (path,))
