"""Retained history points on SQLite: a table of our own, ``ystore_history``.

One row holds consecutive points of one document (``retention.Row``): ``points`` their
metadata, ``deltas`` their deltas, ``first_ts``/``last_ts`` their time span (planning decides
from these which rows it must read) and ``upto``, the newest ``yupdates`` rowid they cover
(the rows after it are the history's raw tail). ``points`` comes before ``deltas`` so that
reading it does not read a large row's deltas. Rows are immutable: a compaction deletes and
inserts rows inside the transaction that replaces the history by its snapshot, and checks
first that the rows it planned over are still the document's (another process may have
compacted meanwhile).

A new table rather than more rows in ``yupdates``: loading reads ``yupdates`` (and the
pending table) only, so history costs loading nothing; ypy-websocket 0.12.4 and pycrdt-store
0.1.5 ignore tables they do not know. Created with the others on new files and added when
we adopt an older file (or at its first compaction, if it was read-only when opened).
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

from jupyter_ystore.stores.retention import ChainChange, Row

if TYPE_CHECKING:  # schema imports this module
    from jupyter_ystore.stores.sqlite.schema import Schema

TABLE = "ystore_history"

CREATE = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} "
    "(path TEXT NOT NULL, seq INTEGER NOT NULL, first_ts REAL NOT NULL, last_ts REAL NOT NULL, "
    "upto INTEGER NOT NULL, points BLOB NOT NULL, deltas BLOB NOT NULL)"
)
CREATE_INDEX = f"CREATE UNIQUE INDEX IF NOT EXISTS {TABLE}_path_seq ON {TABLE} (path, seq)"

_HEADERS = f"SELECT seq, first_ts, last_ts, upto, points FROM {TABLE} WHERE path = ? ORDER BY seq"
_WHOLE = (
    f"SELECT seq, first_ts, last_ts, upto, points, deltas FROM {TABLE} WHERE path = ? "
    "ORDER BY seq"
)
_DELTAS = f"SELECT deltas FROM {TABLE} WHERE path = ? AND seq = ?"
_SEQS = f"SELECT seq FROM {TABLE} WHERE path = ? ORDER BY seq"
_INSERT = (
    f"INSERT INTO {TABLE} (path, seq, first_ts, last_ts, upto, points, deltas) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_DELETE = f"DELETE FROM {TABLE} WHERE path = ? AND seq = ?"
_DELETE_ALL = f"DELETE FROM {TABLE} WHERE path = ?"
_EXISTS = f"SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '{TABLE}'"


def present(conn: sqlite3.Connection, schema: Schema) -> bool:
    """Whether the table exists (looked up again while it does not: another process may
    add it to a file we opened without it)."""
    if not schema.has_history:
        schema.has_history = conn.execute(_EXISTS).fetchone() is not None
    return schema.has_history


def ensure(conn: sqlite3.Connection, schema: Schema) -> None:
    """Inside a write transaction: the table, made if missing."""
    if not present(conn, schema):
        conn.execute(CREATE)
        conn.execute(CREATE_INDEX)
        schema.has_history = True


def read_rows(
    conn: sqlite3.Connection, schema: Schema, path: str, *, deltas: bool = False
) -> list[Row]:
    """``path``'s rows: headers and point metadata (``deltas``: their deltas too)."""
    if not present(conn, schema):
        return []
    if deltas:
        return [
            Row(seq, first, last, upto, bytes(points), bytes(blob))
            for seq, first, last, upto, points, blob in conn.execute(_WHOLE, (path,))
        ]
    return [
        Row(seq, first, last, upto, bytes(points))
        for seq, first, last, upto, points in conn.execute(_HEADERS, (path,))
    ]


def read_deltas(conn: sqlite3.Connection, path: str, seqs: set[int]) -> dict[int, bytes]:
    """The deltas blobs of rows ``seqs`` of ``path``."""
    found = {}
    for seq in seqs:
        row = conn.execute(_DELTAS, (path, seq)).fetchone()
        if row is not None:
            found[seq] = bytes(row[0])
    return found


def seqs(conn: sqlite3.Connection, schema: Schema, path: str) -> list[int]:
    """The row numbers of ``path`` now (what a compaction checks it planned over)."""
    if not present(conn, schema):
        return []
    return [seq for (seq,) in conn.execute(_SEQS, (path,))]


def apply(conn: sqlite3.Connection, schema: Schema, path: str, change: ChainChange) -> None:
    """Inside a write transaction: delete and insert ``change``'s rows."""
    if change.empty:
        return
    ensure(conn, schema)
    conn.executemany(_DELETE, [(path, seq) for seq in change.delete])
    conn.executemany(
        _INSERT,
        [
            (path, row.seq, row.first_ts, row.last_ts, row.upto, row.meta, row.deltas)
            for row in change.insert
        ],
    )


def delete(conn: sqlite3.Connection, schema: Schema, path: str) -> None:
    """Inside the deletion's transaction: forget ``path``'s history."""
    if present(conn, schema):
        conn.execute(_DELETE_ALL, (path,))


def covered(rows: list[Row]) -> int:
    """The newest ``yupdates`` rowid the rows cover (0: none)."""
    return max((row.upto for row in rows), default=0)
