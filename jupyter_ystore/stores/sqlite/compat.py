"""What ypy-websocket 0.12.4, pycrdt-store 0.1.5 and jupyter-collaboration wrote into SQLite.

All three share one table, defined by ypy-websocket::

    yupdates(path TEXT NOT NULL, yupdate BLOB, metadata BLOB, timestamp REAL NOT NULL)
    INDEX idx_yupdates_path_timestamp ON yupdates (path, timestamp)
    PRAGMA user_version = 2

pycrdt-store 0.1.5 adds ``ycheckpoints(path PRIMARY KEY, checkpoint BLOB, timestamp REAL)``: a
merged state of the document written every ``checkpoint_interval`` updates. It never deletes
the rows a checkpoint covers, so a checkpoint is redundant with ``yupdates`` in the normal
case; but pycrdt-store's ttl squash (with compression off) replaces the rows by an EMPTY
document, and then the checkpoint is the only copy of the content. Readers here therefore
apply the checkpoint AND every row: Yjs updates are idempotent, so the overlap is harmless.

jupyter-collaboration (on either library) keys documents ``.{file_type}:{file_id}.y``, e.g.
``.notebook:5e2c….y``; ypy-websocket's own examples use any string. Keys are used verbatim.

This module only reads; it never renames, moves or rewrites a user's database.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

from jupyter_ystore.errors import YStoreVersionError

#: The ``user_version`` every known writer uses (and so do we: ypy-websocket and
#: pycrdt-store can still open a database we wrote).
LEGACY_VERSION = 2

UPDATES_TABLE = "yupdates"
CHECKPOINTS_TABLE = "ycheckpoints"  # pycrdt-store 0.1.5
SNAPSHOTS_TABLE = "ystore_snapshots"  # ours: which yupdates row is a snapshot

CREATE_UPDATES = (
    "CREATE TABLE IF NOT EXISTS yupdates "
    "(path TEXT NOT NULL, yupdate BLOB, metadata BLOB, timestamp REAL NOT NULL)"
)
CREATE_UPDATES_INDEX = (
    "CREATE INDEX IF NOT EXISTS idx_yupdates_path_timestamp ON yupdates (path, timestamp)"
)
# Created empty on new databases so that pycrdt-store 0.1.5, which insists on this table, can
# open them; it is read (and cleared by compaction) in databases pycrdt-store filled.
CREATE_CHECKPOINTS = (
    "CREATE TABLE IF NOT EXISTS ycheckpoints "
    "(path TEXT NOT NULL, checkpoint BLOB NOT NULL, timestamp REAL NOT NULL, PRIMARY KEY(path))"
)
CREATE_SNAPSHOTS = (
    "CREATE TABLE IF NOT EXISTS ystore_snapshots "
    "(path TEXT PRIMARY KEY, row INTEGER NOT NULL, timestamp REAL NOT NULL, "
    "covered INTEGER NOT NULL, clean INTEGER NOT NULL DEFAULT 0)"
)
# ``clean``: the snapshot holds nothing that waits for missing updates (``ydoc.squash_clean``),
# so a load skips checking it. Added later: older versions of ours (and salvage) insert
# without it, and 0 (check it) is the safe default.
SNAPSHOTS_CLEAN = "clean"
ADD_SNAPSHOTS_CLEAN = "ALTER TABLE ystore_snapshots ADD COLUMN clean INTEGER NOT NULL DEFAULT 0"


@dataclass(frozen=True)
class DatabaseLayout:
    """What an existing database holds, read without writing anything."""

    user_version: int
    tables: frozenset[str] = field(default_factory=frozenset)
    auto_vacuum: int = 0  # 0 NONE, 1 FULL, 2 INCREMENTAL
    snapshot_columns: frozenset[str] = field(default_factory=frozenset)

    @property
    def empty(self) -> bool:
        """A new (or zero-length) file: no table, no version."""
        return not self.tables and self.user_version == 0

    @property
    def has_updates(self) -> bool:
        return UPDATES_TABLE in self.tables

    @property
    def has_checkpoints(self) -> bool:
        return CHECKPOINTS_TABLE in self.tables

    @property
    def has_snapshots(self) -> bool:
        return SNAPSHOTS_TABLE in self.tables


def inspect_layout(conn: sqlite3.Connection) -> DatabaseLayout:
    """Read the schema and version of ``conn``'s database (read-only statements).

    In one read transaction: another process creating the tables between the two reads
    would otherwise show a version without its tables.
    """
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN")
    try:
        tables = frozenset(
            name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        )
        (user_version,) = conn.execute("PRAGMA user_version").fetchone()
        (auto_vacuum,) = conn.execute("PRAGMA auto_vacuum").fetchone()
        columns = snapshot_columns(conn) if SNAPSHOTS_TABLE in tables else frozenset()
    finally:
        if own and conn.in_transaction:
            conn.execute("COMMIT")
    return DatabaseLayout(
        user_version=user_version,
        tables=tables,
        auto_vacuum=auto_vacuum,
        snapshot_columns=columns,
    )


def snapshot_columns(conn: sqlite3.Connection) -> frozenset[str]:
    """The columns of ``ystore_snapshots`` (read-only)."""
    return frozenset(row[1] for row in conn.execute(f"PRAGMA table_info({SNAPSHOTS_TABLE})"))


def add_snapshots_clean(conn: sqlite3.Connection) -> None:
    """``clean`` on a ``ystore_snapshots`` table an older version made; another process
    may add it first."""
    try:
        conn.execute(ADD_SNAPSHOTS_CLEAN)
    except sqlite3.OperationalError as exc:
        if "duplicate column" not in str(exc).lower():
            raise


def check_layout(layout: DatabaseLayout, db_path: str) -> None:
    """Refuse a database this code does not know, leaving it untouched."""
    if layout.empty:
        return
    if not layout.has_updates:
        raise YStoreVersionError(
            f"not a YStore database: no yupdates table (user_version {layout.user_version})",
            path=db_path,
            hint="point SQLiteYStore.db_path at a YStore database or at a new file; "
            "this file was left untouched",
        )
    if layout.user_version != LEGACY_VERSION:
        raise YStoreVersionError(
            f"YStore database format version {layout.user_version} is not supported "
            f"(this code reads version {LEGACY_VERSION})",
            path=db_path,
            hint="open it with the software that wrote it, or upgrade jupyter_ystore; "
            "the file was left untouched (nothing renamed or rewritten)",
        )


def read_checkpoint(
    conn: sqlite3.Connection, layout: DatabaseLayout, path: str
) -> tuple[bytes, float] | None:
    """pycrdt-store's checkpoint of ``path`` (merged state and its timestamp), if any."""
    if not layout.has_checkpoints:
        return None
    row = conn.execute(
        "SELECT checkpoint, timestamp FROM ycheckpoints WHERE path = ?", (path,)
    ).fetchone()
    if row is None or not row[0]:
        return None
    return bytes(row[0]), float(row[1])
