"""Copying the WAL back into the database file beside the database thread.

Why: SQLite's automatic checkpoint runs inside the commit that takes the WAL past
``schema.WAL_AUTOCHECKPOINT`` pages, on the database thread: a copy of every page changed since
the last checkpoint and two fsyncs, while every room's keystrokes wait for their commit. A
compaction's commit alone dirties about a thousand pages (a document's rows are spread over
the table among the other documents' rows), so with the bound at 1,000 pages nearly every
compaction paid for a checkpoint: at 400 typing clients its job held the thread for a median
of 22.9-32.3 ms, against 11.2-22.6 ms with this thread (``benchmarks/README.md``).

How: a thread with a connection of its own runs a PASSIVE checkpoint (it never waits for, nor
blocks, a writer or a reader) every ``INTERVAL`` seconds while commits come. It cannot restart
the WAL by itself while commits keep coming (a restart needs every frame copied at the moment
a write begins), so the database thread keeps SQLite's automatic checkpoint as the bound on
the WAL: when it comes, nearly every page is already copied and it costs little more than its
fsyncs. A checkpointer that fails (a full disk, the file gone) is logged and changes nothing
else: the automatic checkpoint still bounds the WAL.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading

log = logging.getLogger("jupyter_ystore.sqlite")

#: Seconds between two checkpoints while commits come (each costs two fsyncs).
INTERVAL = 0.5


class Checkpointer:
    """The checkpoint thread of one database file; started at its first commit."""

    def __init__(self, db_path: str):
        self.db_path = db_path
        self._dirty = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def committed(self) -> None:
        """Called by the database thread after a commit of its own."""
        self._dirty = True
        if self._thread is None and not self._stop.is_set():
            name = "ystore-checkpoint:" + os.path.basename(self.db_path)
            self._thread = threading.Thread(target=self._main, name=name, daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the thread and close its connection (before the database thread closes the
        last connection, which then checkpoints and removes the WAL as usual)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)

    def _main(self) -> None:
        try:
            conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            log.warning(
                "%s: no checkpoint thread (%s); commits copy the WAL back themselves",
                self.db_path,
                exc,
            )
            return
        try:
            while not self._stop.wait(INTERVAL):
                if self._dirty:
                    self._dirty = False
                    self._checkpoint(conn)
        finally:
            conn.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:  # the WAL keeps every page: nothing is lost
            if not self._failing:
                log.warning(
                    "%s: copying the WAL back into the database file failed: %s (retried; "
                    "commits still copy it back once it passes the automatic checkpoint's "
                    "bound)",
                    self.db_path,
                    exc,
                )
                self._failing = True
            return
        if self._failing:
            log.info("%s: copying the WAL back works again", self.db_path)
            self._failing = False
