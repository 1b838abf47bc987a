"""Opening a database file: refuse what we do not know, create or adopt the layout.

A refused file is left exactly as it was: the layout is read with read-only statements before
anything (journal mode, tables) is changed. New files get ``auto_vacuum = INCREMENTAL`` (so
compaction can shrink them), WAL, and the tables described in ``compat``.
"""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import time
from dataclasses import dataclass

from jupyter_ystore.errors import YStorePermissionError
from jupyter_ystore.stores.sqlite import attributes, compat, history, pending

log = logging.getLogger("jupyter_ystore.sqlite")


#: WAL pages after which a commit of ours copies the WAL back into the database: the bound on
#: the WAL (about 16 MiB; the file is reused, not grown). The checkpoint thread
#: (``checkpointer``) copies pages back every half second, so this checkpoint, on the
#: database thread, finds most of them copied. It must stay above what one compaction
#: dirties (about 1,000 pages for a document of 1,000 rows typed among 40 others): at 1,000,
#: nearly every compaction's commit paid for a whole checkpoint, two fsyncs and a copy of
#: every page changed since the last one.
WAL_AUTOCHECKPOINT = 4000


@dataclass(frozen=True)
class Options:
    """Connection settings, fixed by the first store that opens the file."""

    busy_timeout: float = 10.0
    synchronous: str = "NORMAL"
    #: WAL, or DELETE (a rollback journal) on network file systems, where WAL's shared
    #: memory index is not shared between hosts (see ``stores/filesystems.py``).
    journal_mode: str = "WAL"
    #: Seconds between two batches of writes sent to the database thread (``pacing``).
    commit_interval: float = 0.0


class Schema:
    """What the open database holds (tables can appear while it is open)."""

    def __init__(self, layout: compat.DatabaseLayout):
        self.layout = layout
        self.has_snapshots = layout.has_snapshots
        # False only where an older version made the table and we could not add the column
        # (a read-only file): snapshots are then all checked on load.
        self.snapshots_mark_clean = compat.SNAPSHOTS_CLEAN in layout.snapshot_columns
        # False only on a read-only legacy file we could not add the table to: writes then
        # go straight to yupdates (and fail there, read-only).
        self.has_pending = pending.TABLE in layout.tables
        # False on a read-only legacy file (until another process adds the table)
        self.has_attributes = attributes.TABLE in layout.tables
        self.has_history = history.TABLE in layout.tables  # likewise

    @property
    def has_checkpoints(self) -> bool:
        return self.layout.has_checkpoints

    def ensure_snapshots_table(self, conn: sqlite3.Connection) -> None:
        """The table, with its ``clean`` column (inside the caller's write transaction)."""
        if not self.has_snapshots:
            conn.execute(compat.CREATE_SNAPSHOTS)
            self.has_snapshots = True
        if not self.snapshots_mark_clean:
            if compat.SNAPSHOTS_CLEAN not in compat.snapshot_columns(conn):
                compat.add_snapshots_clean(conn)
            self.snapshots_mark_clean = True

    def snapshot_row(self, conn: sqlite3.Connection, path: str) -> int | None:
        """The rowid of ``path``'s snapshot, if that row is still there (another library
        may have rewritten the document since)."""
        head = self.snapshot_head(conn, path)
        return None if head is None else head[0]

    def snapshot_head(self, conn: sqlite3.Connection, path: str) -> tuple[int, bool] | None:
        """``snapshot_row`` and whether the snapshot was recorded as clean."""
        if not self.has_snapshots:
            return None
        clean = "s.clean" if self.snapshots_mark_clean else "0"
        row = conn.execute(
            f"SELECT s.row, {clean} FROM ystore_snapshots AS s JOIN yupdates AS u "
            "ON u.rowid = s.row AND u.path = s.path WHERE s.path = ?",
            (path,),
        ).fetchone()
        return None if row is None else (int(row[0]), bool(row[1]))


def open_database(
    db_path: str, options: Options, factory: type[sqlite3.Connection] = sqlite3.Connection
) -> tuple[sqlite3.Connection, Schema]:
    """A connection for the database thread, with the layout checked or created (see
    ``_sqlite_recover`` for what comes first: a damaged file is set aside)."""
    if db_path != ":memory:":
        try:
            os.makedirs(os.path.dirname(db_path), exist_ok=True)
        except OSError as exc:
            raise YStorePermissionError(
                f"cannot create the folder of SQLiteYStore.db_path: {exc}",
                path=db_path,
                hint="set SQLiteYStore.db_path to a file in a folder this process can create "
                "and write",
            ) from exc
    conn = sqlite3.connect(
        db_path,
        timeout=options.busy_timeout,
        isolation_level=None,  # we say BEGIN/COMMIT ourselves
        check_same_thread=False,  # made in the database thread, used only there
        cached_statements=64,
        factory=factory,
    )
    deadline = time.monotonic() + options.busy_timeout
    try:
        while True:
            try:
                return conn, _prepare(conn, db_path, options)
            except sqlite3.OperationalError as exc:
                # Two processes opening a new file at once: switching to WAL (and creating
                # the tables) can meet SQLITE_BUSY without SQLite's busy handler being asked.
                if "locked" not in str(exc).lower() or time.monotonic() >= deadline:
                    raise
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                time.sleep(random.uniform(0.005, 0.05))
    except BaseException:
        conn.close()
        raise


def _prepare(conn: sqlite3.Connection, db_path: str, options: Options) -> Schema:
    layout = compat.inspect_layout(conn)  # reads only: a refused file stays as it was
    compat.check_layout(layout, db_path)
    if layout.empty:
        _create(conn, db_path, options.journal_mode)
    else:
        _adopt(conn, layout, db_path, options.journal_mode)
    conn.execute(f"PRAGMA synchronous = {options.synchronous}")
    conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT}")
    return Schema(compat.inspect_layout(conn))


def _create(conn: sqlite3.Connection, db_path: str, journal_mode: str = "WAL") -> None:
    # auto_vacuum must be chosen before the first table; INCREMENTAL lets compaction give
    # pages back to the file system (the file shrinks) without a full VACUUM.
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    _set_journal_mode(conn, db_path, journal_mode)
    conn.execute("BEGIN IMMEDIATE")
    try:
        layout = compat.inspect_layout(conn)  # another process may have been first
        compat.check_layout(layout, db_path)
        for statement in (
            compat.CREATE_UPDATES,
            compat.CREATE_UPDATES_INDEX,
            compat.CREATE_CHECKPOINTS,
            compat.CREATE_SNAPSHOTS,
            pending.CREATE,
            attributes.CREATE,
            history.CREATE,
            history.CREATE_INDEX,
        ):
            conn.execute(statement)
        if layout.empty:
            conn.execute(f"PRAGMA user_version = {compat.LEGACY_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _adopt(
    conn: sqlite3.Connection, layout: compat.DatabaseLayout, db_path: str, journal_mode: str = "WAL"
) -> None:
    """WAL and our snapshots table on a database we accept (ours or a legacy one)."""
    try:
        _set_journal_mode(conn, db_path, journal_mode)
        if not layout.has_snapshots:
            conn.execute(compat.CREATE_SNAPSHOTS)
        elif compat.SNAPSHOTS_CLEAN not in layout.snapshot_columns:
            compat.add_snapshots_clean(conn)
        if pending.TABLE not in layout.tables:
            conn.execute(pending.CREATE)
        if attributes.TABLE not in layout.tables:
            conn.execute(attributes.CREATE)
        if history.TABLE not in layout.tables:
            conn.execute(history.CREATE)
            conn.execute(history.CREATE_INDEX)
    except sqlite3.OperationalError as exc:
        if "readonly" not in str(exc).lower():
            raise
        # Reads still work; the first write raises YStorePermissionError.
        log.warning("%s is read-only: documents can be read, not written", db_path)


def _set_journal_mode(conn: sqlite3.Connection, db_path: str, journal_mode: str) -> None:
    """Switch the journal mode; leaving WAL needs every other connection closed, so a file
    another process keeps in WAL stays there, and the log says so (never silently)."""
    if journal_mode.upper() == "WAL":
        conn.execute("PRAGMA journal_mode = WAL").fetchall()
        return
    wait = conn.execute("PRAGMA busy_timeout").fetchone()[0]
    conn.execute("PRAGMA busy_timeout = 500")  # a holder of the file will not let go soon
    try:
        found = conn.execute(f"PRAGMA journal_mode = {journal_mode}").fetchone()
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc).lower():
            raise
        found = conn.execute("PRAGMA journal_mode").fetchone()
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(wait)}")
    mode = str(found[0]).upper() if found else ""
    if db_path != ":memory:" and mode != journal_mode.upper():
        log.warning(
            "%s stays in journal_mode=%s (asked for %s): another process has it open; "
            "close it (other servers, jupyter ystore) and start again",
            db_path,
            mode,
            journal_mode,
        )
