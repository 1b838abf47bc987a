"""WAL checkpoints in a thread (and connection) of their own, off the commit path.

SQLite's automatic checkpoint runs inside the COMMIT that crosses its threshold, with two
fsyncs even at ``synchronous = NORMAL``: one write in a few hundred would pay for all of them.
Here commits are only counted; every ``every`` commits this thread runs a PASSIVE checkpoint,
which never blocks writers (and is retried next time if readers hold it back).
"""

from __future__ import annotations

import logging
import sqlite3
import threading

log = logging.getLogger("jupyter_ystore.sqlite")


class Checkpointer:
    """Copies the WAL back into the database file every ``every`` commits."""

    def __init__(self, db_path: str, busy_timeout: float, every: int = 500):
        self._db_path = db_path
        self._busy_timeout = busy_timeout
        self._every = every
        self._commits = 0
        self._wanted = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(
            target=self._main, name="ystore-sqlite-checkpoint", daemon=True
        )
        self._thread.start()

    def committed(self, count: int = 1) -> None:
        """Called by the writing thread after each commit."""
        self._commits += count
        if self._commits >= self._every:
            self._commits = 0
            self._wanted.set()

    def request(self) -> None:
        """Checkpoint soon (e.g. after compaction freed pages: the file shrinks then)."""
        self._commits = 0
        self._wanted.set()

    def stop(self) -> None:
        """End the thread and close its connection (before the main one closes, so that
        closing the last connection checkpoints and removes the WAL)."""
        self._stopping = True
        self._wanted.set()
        self._thread.join()

    def _main(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(self._db_path, timeout=self._busy_timeout, isolation_level=None)
            while True:
                self._wanted.wait()
                self._wanted.clear()
                if self._stopping:
                    return
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # the WAL only grows until the next try
                    log.debug("checkpoint of %s: %s", self._db_path, exc)
        except sqlite3.Error as exc:
            log.warning("no background checkpoints for %s: %s", self._db_path, exc)
        finally:
            if conn is not None:
                conn.close()
