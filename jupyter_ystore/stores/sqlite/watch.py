"""Live updates on SQLite: who wrote which row, and who must be woken (database thread).

SQLite has no notifications, so ``watch()`` is built from three facts:

* **Rowids follow commit order.** A row gets ``max(rowid) + 1`` under the write lock, so a
  reader that has seen row ``r`` of a document has seen every row committed before it, and
  ``rowid > last seen`` never skips one. Compaction keeps this: its snapshot takes the rowid
  of the newest row it covers, so a watcher behind it reads the snapshot (content it partly
  had: applying a Yjs update twice is harmless), a watcher past it does not.
* **Other processes are polled, cheaply.** ``PRAGMA data_version`` changes only when another
  connection committed; the database thread asks it once per ``poll_interval`` while anyone
  watches (one query per database, not per document), then finds which documents have rows
  above the newest rowid it knew and wakes only their watchers.
* **This process's writes are signalled directly.** Every write passes through the database
  thread, which records the rowid and bytes of each row a watching store wrote (its own
  rows, never handed back to it) and, after the commit, wakes the other stores watching
  that document.

Everything here runs on the database thread (no locks): ``Owner`` and ``Watch`` objects are
created on the event loop but only touched by jobs.
"""

from __future__ import annotations

import bisect
import logging
import sqlite3
import time
from typing import Any, Callable, Iterable

from jupyter_ystore.stores.sqlite.bridge import Waiter
from jupyter_ystore.stores.sqlite.recover import note_damage

log = logging.getLogger("jupyter_ystore.sqlite")

#: Own rows remembered for a store that loaded its document but does not watch (yet): past
#: this many the record is dropped, so a later watch() may hand some back (harmless in Yjs).
_OWN_LIMIT = 10_000
#: A watching store that alone writes its document is never woken, so its record of own rows
#: would grow for ever: past this many its watches are woken to read past them.
_CATCH_UP = 1000

FETCH = "SELECT rowid, yupdate FROM yupdates WHERE path = ? AND rowid > ? ORDER BY rowid"
MAX_ROW = "SELECT max(rowid) FROM yupdates WHERE path = ?"
# NOT INDEXED: a rowid range of the table (the rows since the last poll), where the planner
# would otherwise scan the whole (path, timestamp) index.
NEW_PATHS = "SELECT DISTINCT path FROM yupdates NOT INDEXED WHERE rowid > ?"


class Owner:
    """One store instance, as the database thread knows it."""

    __slots__ = ("path", "mark", "own", "watches")

    def __init__(self, path: str):
        self.path = path
        # Newest rowid this store loaded or yielded; None until it loads or watches (then
        # its writes are not recorded: nothing would ever read the record).
        self.mark: int | None = None
        self.own: dict[int, bytes] = {}  # rowid -> update, rows this store wrote
        self.watches: list[Watch] = []

    def loaded(self, rowid: int) -> None:
        self.mark = rowid
        self._prune(rowid)

    def wrote(self, rowid: int, update: bytes) -> None:
        own = self.own
        own[rowid] = update
        if len(own) > _OWN_LIMIT and not self.watches:
            own.clear()

    def _prune(self, below: int) -> None:
        if self.own:
            for rowid in [r for r in self.own if r <= below]:
                del self.own[rowid]


class Watch:
    """One running ``watch()``: its position and, while it waits, its waiter."""

    __slots__ = ("owner", "cursor", "interval", "waiter", "closed")

    def __init__(self, owner: Owner, interval: float):
        self.owner = owner
        self.cursor = 0
        self.interval = interval
        self.waiter: Waiter | None = None
        self.closed = False


Wake = tuple[Waiter, Any, Any]


class Hub:
    """The watches of one database and the polling of other processes' commits."""

    def __init__(self, db_path: str) -> None:
        self.db_path = db_path
        self.by_path: dict[str, list[Watch]] = {}
        self._data_version: int | None = None
        self._top: int | None = None  # newest rowid seen by the last poll
        self._next_poll = 0.0
        self._failing = False  # the last poll failed (logged once, not every poll)

    # ------------------------------------------------------------------ jobs

    def start(self, conn: sqlite3.Connection, watch: Watch) -> None:
        """Register ``watch``; it starts after what its store loaded (or at the end)."""
        owner = watch.owner
        if owner.mark is None:
            (top,) = conn.execute(MAX_ROW, (owner.path,)).fetchone()
            owner.mark = top or 0
        watch.cursor = owner.mark
        owner.watches.append(watch)
        if not self.by_path:
            self._data_version = _data_version(conn)
            self._top = _top(conn)
            self._next_poll = time.monotonic() + watch.interval
        self.by_path.setdefault(owner.path, []).append(watch)

    def stop(self, watch: Watch) -> list[Wake]:
        """Unregister ``watch`` and release its waiting generator."""
        watch.closed = True
        owner = watch.owner
        if watch in owner.watches:
            owner.watches.remove(watch)
        watches = self.by_path.get(owner.path)
        if watches is not None and watch in watches:
            watches.remove(watch)
            if not watches:
                del self.by_path[owner.path]
        return self._wake([watch])

    def fetch(self, conn: sqlite3.Connection, watch: Watch, waiter: Waiter) -> list[bytes]:
        """Rows after the watch's cursor not written by its own store, oldest first; with
        none, ``waiter`` is armed for the next wake-up."""
        owner = watch.owner
        rows = conn.execute(FETCH, (owner.path, watch.cursor)).fetchall()
        if not rows and watch.cursor:
            (top,) = conn.execute(MAX_ROW, (owner.path,)).fetchone()
            if top is None or top < watch.cursor:
                # The document's rows were deleted (and perhaps rewritten, reusing rowids):
                # everything stored now is new to this watcher.
                watch.cursor = 0
                rows = conn.execute(FETCH, (owner.path, 0)).fetchall()
        updates: list[bytes] = []
        own = owner.own
        for rowid, update in rows:
            update = bytes(update or b"")
            if own and own.get(rowid) == update:
                continue  # this store's own write
            updates.append(update)
        if rows:
            watch.cursor = rows[-1][0]
            if owner.mark is None or watch.cursor > owner.mark:
                owner.mark = watch.cursor
            owner._prune(min(w.cursor for w in owner.watches) if owner.watches else watch.cursor)
        if not updates:
            watch.waiter = waiter
        return updates

    # ------------------------------------------------------------------ signals

    @property
    def active(self) -> bool:
        return bool(self.by_path)

    def timeout(self) -> float | None:
        """Seconds the database thread may sleep before the next poll (None: no watch)."""
        if not self.by_path:
            return None
        return max(0.0, self._next_poll - time.monotonic())

    def committed(self, writers: Iterable[tuple[str, Owner | None]]) -> list[Wake]:
        """After this process committed rows: wake the OTHER stores watching those documents
        (and a store whose record of its own rows grew long, to read past them)."""
        by_path = self.by_path
        written: dict[str, set[Owner | None]] = {}
        for path, owner in writers:
            if path in by_path:
                written.setdefault(path, set()).add(owner)
        wake = [
            watch
            for path, owners in written.items()
            for watch in by_path[path]
            if owners != {watch.owner} or len(watch.owner.own) >= _CATCH_UP
        ]
        return self._wake(wake)

    def compacted(
        self, path: str, rowids: list[int], updates: list[bytes], last_row: int
    ) -> None:
        """This process replaced ``path``'s rows up to ``last_row`` (``rowids``, holding
        ``updates``) by a snapshot that takes that rowid. A watch whose store wrote every one
        of those rows past its cursor has had all the snapshot holds: it moves past it
        instead of reading it back (a whole document, applied again by its room after every
        compaction, and read again when its record of own rows grows long)."""
        for watch in self.by_path.get(path, ()):
            if watch.cursor >= last_row:
                continue
            own = watch.owner.own
            start = bisect.bisect_right(rowids, watch.cursor)
            if all(own.get(rowids[i]) == updates[i] for i in range(start, len(rowids))):
                watch.cursor = last_row
        for owner in {watch.owner for watch in self.by_path.get(path, ())}:
            low = min(watch.cursor for watch in owner.watches)
            if owner.mark is None or low > owner.mark:
                owner.mark = low
            owner._prune(low)

    def deleted(self, path: str, by: Owner | None) -> list[Wake]:
        """This process deleted a document: its rowids may be reused, so its watchers (and
        the deleting store) start again from its first row."""
        watches = list(self.by_path.get(path, ()))
        for owner in {watch.owner for watch in watches} | ({by} if by is not None else set()):
            owner.mark = 0 if owner.mark is not None else None
            owner.own.clear()
        for watch in watches:
            watch.cursor = 0
        return self._wake(watches)

    def poll(self, conn: sqlite3.Connection, fold: Callable[[], None]) -> list[Wake]:
        """When due: wake the watchers of documents another connection wrote to (``fold``
        first moves their pending rows into ``yupdates``, where the rowids are read). A
        failure (e.g. a lock during recovery) is logged once; the next poll retries."""
        try:
            wakes = self._poll(conn, fold)
        except sqlite3.Error as exc:
            note_damage(self.db_path, exc, "polling for other processes' updates")
            if not self._failing:
                log.warning("polling %s for other processes' updates: %s", self.db_path, exc)
            self._failing = True
            return []
        if self._failing:
            log.info("polling %s for other processes' updates works again", self.db_path)
            self._failing = False
        return wakes

    def _poll(self, conn: sqlite3.Connection, fold: Callable[[], None]) -> list[Wake]:
        now = time.monotonic()
        if not self.by_path or now < self._next_poll:
            return []
        self._next_poll = now + min(w.interval for ws in self.by_path.values() for w in ws)
        version = _data_version(conn)  # first: a commit after this is seen next time
        if version == self._data_version:
            return []
        self._data_version = version
        fold()
        top, known = _top(conn), self._top
        self._top = top
        if top is None or known is None or top <= known:
            # Nothing above what we knew: rows were deleted or compacted (rowids may be
            # reused); rare, so everyone looks.
            return self._wake([w for ws in self.by_path.values() for w in ws])
        paths = conn.execute(NEW_PATHS, (known,)).fetchall()
        return self._wake([w for (path,) in paths for w in self.by_path.get(path, ())])

    @staticmethod
    def _wake(watches: list[Watch]) -> list[Wake]:
        wakes: list[Wake] = []
        for watch in watches:
            waiter, watch.waiter = watch.waiter, None
            if waiter is not None:
                wakes.append((waiter, None, None))
        return wakes


def _data_version(conn: sqlite3.Connection) -> int:
    (version,) = conn.execute("PRAGMA data_version").fetchone()
    return int(version)


def _top(conn: sqlite3.Connection) -> int | None:
    (top,) = conn.execute("SELECT max(rowid) FROM yupdates").fetchone()
    return top
