"""The pending table: where a write commits first, moved into ``yupdates`` in bulk (a fold).

Why: ``yupdates`` carries ypy-websocket's ``(path, timestamp)`` index, and a commit that
inserts one row for each of 20 documents dirties 20 index leaf pages, each copied whole into
the WAL. Measured on the 2-core VM (raw sqlite3, no Python store around it): 20 rows per
commit cost 650–740 µs with the index and 145 µs without; one row per commit 72 µs and 34
µs. So writes commit into ``ystore_pending`` (same columns, no secondary index: a commit
dirties one or two pages at the table's end) and are folded into ``yupdates`` later, many
rows at once, sorted by rowid, touching each document's index leaf once per fold instead of
once per commit (20 documents, a fold every 2,000 rows: 27,000 → 65,000 rows/s).

What stays true:

* **Durability.** A pending row is committed in the same database file, in the same
  transaction as before; a crash between commit and fold leaves it there, and the next
  reader folds it.
* **Rowids.** A pending row takes the rowid it will keep in ``yupdates``
  (``max`` over both tables ``+ 1``, under the write lock), so rowids still follow commit
  order across both tables, which is what live updates (``_sqlite_watch``) and compaction
  rely on. A legacy writer (ypy-websocket) inserting straight into ``yupdates`` meanwhile may
  take a rowid a pending row holds; the fold then gives the pending rows fresh rowids, in
  order (a watcher may be handed such a row twice: harmless in Yjs).
* **Readers see everything.** Every read of this package (load, compaction, listing,
  deletion, live-update polls) folds first, in the database thread that owns the connection.
  Other libraries reading the file (ypy-websocket, pycrdt-store) see rows once folded: after
  ``FOLD_ROWS`` rows, after ``FOLD_IDLE`` seconds without a write, and when the store closes.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jupyter_ystore.stores.sqlite.schema import Schema

TABLE = "ystore_pending"

CREATE = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} "
    "(rowid INTEGER PRIMARY KEY, path TEXT NOT NULL, yupdate BLOB, metadata BLOB, "
    "timestamp REAL NOT NULL)"
)

#: Rows (written by this process since its last fold) after which it folds.
FOLD_ROWS = 2000
#: Seconds without a write after which pending rows are folded (for other libraries' readers).
FOLD_IDLE = 0.25
#: Seconds before a fold that failed (the file locked by another process, say) is tried again.
FOLD_RETRY = 2.0

INSERT = (
    f"INSERT INTO {TABLE} (rowid, path, yupdate, metadata, timestamp) VALUES (?, ?, ?, ?, ?)"
)
NEWEST_ROW = (
    "SELECT max(coalesce((SELECT max(rowid) FROM yupdates), 0), "
    f"coalesce((SELECT max(rowid) FROM {TABLE}), 0))"
)
_ANY = f"SELECT EXISTS (SELECT 1 FROM {TABLE})"
_CLASH = (
    f"SELECT (SELECT min(rowid) FROM {TABLE}) <= coalesce((SELECT max(rowid) FROM yupdates), 0)"
)
_MOVE_KEEPING_ROWIDS = (
    "INSERT INTO yupdates (rowid, path, yupdate, metadata, timestamp) "
    f"SELECT rowid, path, yupdate, metadata, timestamp FROM {TABLE} ORDER BY rowid"
)
_MOVE_RENUMBERED = (
    "INSERT INTO yupdates (path, yupdate, metadata, timestamp) "
    f"SELECT path, yupdate, metadata, timestamp FROM {TABLE} ORDER BY rowid"
)
_CLEAR = f"DELETE FROM {TABLE}"


def newest_row(conn: sqlite3.Connection) -> int:
    """The highest rowid in either table (0 if none): the next row takes this + 1."""
    (top,) = conn.execute(NEWEST_ROW).fetchone()
    return int(top)


def any_pending(conn: sqlite3.Connection) -> bool:
    (found,) = conn.execute(_ANY).fetchone()
    return bool(found)


def any_below(conn: sqlite3.Connection, schema: Schema, rowid: int) -> bool:
    """Whether a pending row (not in ``yupdates`` yet) has a rowid at most ``rowid``: then
    a range of ``yupdates`` rowids does not hold every row in it."""
    if not schema.has_pending:
        return False
    query = f"SELECT EXISTS (SELECT 1 FROM {TABLE} WHERE rowid <= ?)"
    (found,) = conn.execute(query, (rowid,)).fetchone()
    return bool(found)


def fold(conn: sqlite3.Connection) -> bool:
    """Inside a write transaction: move every pending row into ``yupdates``. Returns False
    when a legacy writer had taken pending rows' rowids, so they were renumbered."""
    (clash,) = conn.execute(_CLASH).fetchone()
    conn.execute(_MOVE_RENUMBERED if clash else _MOVE_KEEPING_ROWIDS)
    conn.execute(_CLEAR)
    return not clash
