"""``PostgresFileIdManager``: jupyter-server-fileid's ids kept in the store's PostgreSQL.

A room is ``json:notebook:<file id>`` and its history is stored under ``.notebook:<file
id>.y``, and jupyter-server-fileid draws a random id per file in a SQLite database of each
server. Servers that share documents through ``PostgresYStore`` must therefore share file ids
too; a SQLite file on a network file system is not a safe way to do that. This manager keeps
them in the store's own database and schema, keyed by the path relative to the server root,
so that servers whose roots are different paths to one shared folder agree::

    c.FileIdExtension.file_id_manager_class = "jupyter_ystore.PostgresFileIdManager"

(chosen by ``YStoreExtension`` when the store is ``PostgresYStore`` and no manager is
configured). Its connection settings are ``PostgresYStore``'s unless set here.

Behaviour, compared with jupyter-server-fileid's managers:

- Like ``ArbitraryFileIdManager``, a path keeps its id while it is indexed, whatever happens
  to its inode (``git checkout``, an editor writing a new file): the history stays with the
  notebook. Renames, copies and deletes made through Jupyter (the contents manager's events)
  are written to the table and seen by every server.
- Like ``LocalFileIdManager``, a file renamed on disk outside Jupyter is found again by its
  inode: when a path with no id is asked for, and in the background for the files of open
  documents (``verify_interval``), whose old path no longer holds them.
- ``get_id`` and ``get_path`` read a local copy of the table (see
  ``stores/postgres/fileids.py``): no database round trip, no disk access, on the event loop.
  ``index`` of a new path, ``move`` and ``delete`` wait for one round trip (they must be
  durable and agreed on); the inode refresh after a save is done in the background.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import posixpath
import sqlite3
import stat
import time
import weakref
from collections import deque
from typing import Any, Callable, Optional

from jupyter_server_fileid.manager import BaseFileIdManager
from traitlets import Bool, Float, Unicode, default

from jupyter_ystore.stores.postgres.fileids import FileIdTable, FileRecord

#: Seconds a file id stays "open" after the last get_path (rooms poll theirs every second).
_HOT_FOR = 120.0
#: Entries looked at when searching the root for a file renamed outside Jupyter.
_SEARCH_BUDGET = 100_000
#: Seconds before the same missing file is searched for again.
_SEARCH_AGAIN = 30.0

_OPEN: weakref.WeakSet[PostgresFileIdManager] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for manager in list(_OPEN):
        manager.close()


class PostgresFileIdManager(BaseFileIdManager):
    """File ids in PostgreSQL, shared by every server of the database (see the module)."""

    dsn = Unicode(
        None,
        allow_none=True,
        config=True,
        help="PostgreSQL connection string. Default: c.PostgresYStore.dsn (or the "
        "JUPYTER_YSTORE_DSN environment variable), the store's own database.",
    )
    schema = Unicode(
        None,
        allow_none=True,
        config=True,
        help="Schema of the file-id table. Default: c.PostgresYStore.schema.",
    )
    table_name = Unicode("file_ids", config=True, help="The file-id table (created on first use).")
    poll_interval = Float(
        5.0,
        config=True,
        help="Seconds between reads of changes other servers made, behind LISTEN/NOTIFY "
        "(which normally brings them within milliseconds).",
    )
    verify_interval = Float(
        1.0,
        config=True,
        help="Seconds between checks, in the background, that the files of open documents "
        "are still at their paths (a file renamed outside Jupyter is then found by its "
        "inode). 0: only when a path without an id is asked for.",
    )
    import_sqlite = Bool(
        True,
        config=True,
        help="When the table is empty at start-up, copy the ids of the SQLite file-id "
        "database at db_path (jupyter-server-fileid's, if it exists), so that documents "
        "keep their histories. `jupyter ystore file-ids import` does the same by hand.",
    )

    @default("db_journal_mode")
    def _default_db_journal_mode(self) -> str:
        return "DELETE"  # unused: nothing is written to SQLite

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._root = os.path.abspath(os.path.expanduser(self.root_dir or os.getcwd()))
        self._real_root = os.path.realpath(self._root)
        self._hot: dict[str, float] = {}  # id -> time.monotonic() of its last get_path
        self._searched: dict[str, float] = {}
        self._saved: deque[str] = deque()
        dsn, schema, timeout = self._connection()
        self._table = FileIdTable(
            dsn,
            schema,
            self.table_name,
            connect_timeout=timeout,
            poll_interval=self.poll_interval,
        )
        copy_from = self.db_path if self.import_sqlite else None
        found: list[int] = []

        def existing_ids() -> list[FileRecord]:
            records = read_sqlite_ids(copy_from, self._root) if copy_from else []
            found.append(len(records))
            return records

        copied = self._table.start(existing_ids)
        _OPEN.add(self)
        if copied:
            self.log.info(
                "PostgresFileIdManager: copied %d file ids from %s into %s (documents keep "
                "their histories)",
                copied,
                copy_from,
                self._table.names.label,
            )
        if self.verify_interval > 0:
            self._table.every(self.verify_interval, self._verify_open_files)
        self.log.info(
            "PostgresFileIdManager: file ids in %s (%d files), paths relative to %s",
            self._table.where,
            len(self._table.cache),
            self._root,
        )

    def _connection(self) -> tuple[str, str, float]:
        """DSN, schema and connect timeout: ours if set, else the store's settings."""
        from jupyter_ystore.stores.postgres.store import DSN_ENV, PostgresYStore

        store = PostgresYStore(None, config=self.config)
        dsn = self.dsn or store.dsn
        if not dsn:
            raise ValueError(
                "PostgresFileIdManager needs a database: set c.PostgresYStore.dsn (or "
                f"c.PostgresFileIdManager.dsn, or the {DSN_ENV} environment variable)"
            )
        return dsn, self.schema or store.schema, float(store.connect_timeout)

    def close(self) -> None:
        """Close the connections (at exit; the manager lives as long as the server)."""
        self._table.close()

    # ------------------------------------------------------------------ paths

    def _normalize_path(self, path: str) -> str:
        """An API path (or an absolute path under the root) → the key: relative, ``/``."""
        key = self._key(path)
        if key is None:
            raise ValueError(f"{path!r} is not under the server root {self._root}")
        return key

    def _key(self, path: str) -> str | None:
        if os.path.isabs(path):
            for root in (self._root, self._real_root):
                if path == root or path.startswith(root.rstrip(os.sep) + os.sep):
                    path = os.path.relpath(path, root)
                    break
            else:
                return None
        path = path.replace(os.sep, "/")
        key = posixpath.normpath("/" + path).lstrip("/")
        return "" if key == "." else key

    def _from_normalized_path(self, path: Optional[str]) -> Optional[str]:
        return path

    def _os_path(self, key: str) -> str:
        return os.path.join(self._root, *key.split("/")) if key else self._root

    def _lstat(self, key: str) -> os.stat_result | None:
        try:
            return os.lstat(self._os_path(key))
        except (OSError, ValueError):
            return None

    # ------------------------------------------------------------------ the interface

    def get_id(self, path: str) -> Optional[str]:
        """The id of ``path``: from the local copy; for a path without one, a file renamed
        outside Jupyter (its inode known under a path that lost it) gets its id back."""
        key = self._key(path)
        if key is None:
            return None
        ident = self._table.cache.by_path.get(key)
        if ident is not None:
            return ident
        st = self._lstat(key)
        return None if st is None else self._found_again(key, st)

    def index(self, path: str) -> Optional[str]:
        """The id of ``path``, created (one round trip) if it has none; None if no file is
        there."""
        key = self._key(path)
        if key is None:
            return None
        ident = self._table.cache.by_path.get(key)
        if ident is not None:
            return ident
        st = self._lstat(key)
        if st is None:
            return None
        ident = self._found_again(key, st)
        if ident is not None:
            return ident
        return self._table.run(self._table.index(key, st.st_ino)).id

    def get_path(self, id: str) -> Optional[str]:
        """The path of ``id`` relative to the root, from the local copy; None if unknown or
        deleted. The file is watched for renames outside Jupyter while it is asked for."""
        record = self._table.cache.by_id.get(id)
        if record is None:
            return None
        self._hot[id] = time.monotonic()
        return record.path

    def move(self, old_path: str, new_path: str) -> Optional[str]:
        """A rename made through Jupyter (``rename`` event): the id and the ids below it follow,
        for every server."""
        old, new = self._key(old_path), self._key(new_path)
        if old is None or new is None:
            return None
        st = self._lstat(new)
        records = self._table.run(self._table.move(old, new, st.st_ino if st else None))
        moved = next((r.id for r in records if r.path == new), None)
        if moved is not None:
            return moved
        return self.index(new_path)  # nothing was indexed at old_path

    def copy(self, from_path: str, to_path: str) -> Optional[str]:
        """A copy is a new file: a new id (the files below a copied folder get theirs when
        first opened)."""
        return self.index(to_path)

    def delete(self, path: str) -> None:
        """A delete made through Jupyter: the ids of ``path`` and below it are gone."""
        key = self._key(path)
        if key is not None:
            self._table.run(self._table.delete(key))

    def save(self, path: str) -> None:
        """After a save, record the file's inode (in the background: saves are frequent)."""
        key = self._key(path)
        if key is None or self._table.cache.by_path.get(key) is None:
            return None
        self._saved.append(key)
        self._table.submit(self._refresh_saved)
        return None

    def get_handlers_by_action(self) -> dict[str, Optional[Callable[[dict[str, Any]], Any]]]:
        return {
            "get": None,
            "save": lambda data: self.save(data["path"]),
            "rename": lambda data: self.move(data["source_path"], data["path"]),
            "copy": lambda data: self.copy(data["source_path"], data["path"]),
            "delete": lambda data: self.delete(data["path"]),
        }

    # ------------------------------------------------------------------ renames outside

    def _found_again(self, key: str, st: os.stat_result) -> str | None:
        """The id of a file now at ``key`` that was indexed under a path that no longer holds
        it (moved there outside Jupyter); the record follows it. None otherwise."""
        cache = self._table.cache
        for ident in list(cache.by_ino.get(st.st_ino, ())):
            record = cache.by_id.get(ident)
            if record is None or record.path is None or record.path == key:
                continue
            there = self._lstat(record.path)
            if there is not None and there.st_ino == st.st_ino:
                continue  # still there too: a hard link, not a rename
            moved = self._table.run(
                self._table.move(record.path, key, st.st_ino, expect_id=ident)
            )
            if moved:
                self.log.info("file id %s: %s was renamed to %s outside Jupyter", ident, record.path, key)
                return ident
            refreshed = cache.by_path.get(key)  # another server found it first
            if refreshed is not None:
                return refreshed
        return None

    async def _verify_open_files(self) -> None:
        """In the database thread: are the files of open documents where their ids say? A
        file replaced in place gets its new inode recorded; a missing one is searched for by
        inode (its folder first, then the root) and its id moved to where it is."""
        now = time.monotonic()
        for ident, seen in list(self._hot.items()):
            if now - seen > _HOT_FOR:
                self._hot.pop(ident, None)
        if not self._hot:
            return
        cache = self._table.cache
        records = [cache.by_id.get(ident) for ident in list(self._hot)]
        checks = [r for r in records if r is not None and r.path is not None]
        loop = asyncio.get_running_loop()
        found = await loop.run_in_executor(None, self._check_files, checks, now)
        for record, new_key, ino in found:
            if new_key is None:
                await self._table.set_ino(record.id, record.path or "", ino)
            else:
                moved = await self._table.move(record.path or "", new_key, ino, expect_id=record.id)
                if moved:
                    self.log.info(
                        "file id %s: %s was renamed to %s outside Jupyter", record.id, record.path, new_key
                    )

    def _check_files(
        self, records: list[FileRecord], now: float
    ) -> list[tuple[FileRecord, str | None, int]]:
        """(record, new path or None for "same path, new inode", inode) for each change."""
        changes: list[tuple[FileRecord, str | None, int]] = []
        missing: list[FileRecord] = []
        for record in records:
            st = self._lstat(record.path or "")
            if st is None:
                if record.ino is not None and now - self._searched.get(record.id, -1e9) > _SEARCH_AGAIN:
                    missing.append(record)
            elif record.ino != st.st_ino:
                changes.append((record, None, st.st_ino))
        if missing:
            wanted = {r.ino: r for r in missing}
            for ino, key in self._search(wanted, [r.path or "" for r in missing]).items():
                changes.append((wanted[ino], key, ino))
            for record in missing:
                self._searched[record.id] = now
        return changes

    def _search(self, wanted: dict[Any, FileRecord], old_paths: list[str]) -> dict[int, str]:
        """Where the inodes ``wanted`` are under the root: the old paths' folders first, then
        the whole tree (breadth first, symlinks not followed, at most ``_SEARCH_BUDGET``
        entries)."""
        found: dict[int, str] = {}
        known = self._table.cache.by_path
        folders = list(dict.fromkeys(posixpath.dirname(p) for p in old_paths)) + [""]
        seen: set[str] = set()
        budget = _SEARCH_BUDGET
        queue = deque(folders)
        while queue and budget > 0 and len(found) < len(wanted):
            folder = queue.popleft()
            if folder in seen:
                continue
            seen.add(folder)
            try:
                entries = list(os.scandir(self._os_path(folder)))
            except OSError:
                continue
            for entry in entries:
                budget -= 1
                key = f"{folder}/{entry.name}" if folder else entry.name
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if st.st_ino in wanted and key not in known:
                    found[st.st_ino] = key
                if stat.S_ISDIR(st.st_mode):
                    queue.append(key)
        return found

    async def _refresh_saved(self) -> None:
        """The inodes of files saved since the last call (their ids may have a stale one)."""
        keys = set()
        while self._saved:
            keys.add(self._saved.popleft())
        cache = self._table.cache
        for key in keys:
            ident = cache.by_path.get(key)
            record = cache.by_id.get(ident) if ident else None
            if record is None:
                continue
            st = await asyncio.get_running_loop().run_in_executor(None, self._lstat, key)
            if st is not None and st.st_ino != record.ino:
                await self._table.set_ino(record.id, key, st.st_ino)


# ---------------------------------------------------------------------- SQLite ids


def read_sqlite_ids(db_path: str, root: str) -> list[FileRecord]:
    """The ids of jupyter-server-fileid's SQLite database at ``db_path`` (either manager's
    layout), with their paths made relative to ``root``; rows outside ``root`` are left
    out. Of several rows for one path (``LocalFileIdManager`` keeps deleted files' rows), the
    one whose inode is the file's now wins, else the newest. Read-only; [] if no database."""
    if not db_path or db_path == ":memory:" or not os.path.exists(db_path):
        return []
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        columns = {row[1] for row in con.execute("PRAGMA table_info(Files)")}
        if not {"id", "path"} <= columns:
            return []
        ino = "ino" if "ino" in columns else "NULL"
        rows = con.execute(f"SELECT id, path, {ino} FROM Files ORDER BY rowid").fetchall()
    finally:
        con.close()
    root = os.path.abspath(root)
    roots = [root, os.path.realpath(root)]
    chosen: dict[str, tuple[str, int | None, bool]] = {}
    for ident, path, stored_ino in rows:
        path = str(path)
        rel = None
        for base in roots:
            if path == base or path.startswith(base.rstrip("/") + "/"):
                rel = os.path.relpath(path, base).replace(os.sep, "/")
                break
        if rel is None:
            continue
        rel = "" if rel == "." else rel
        try:
            current = os.lstat(os.path.join(root, rel)).st_ino if rel else os.lstat(root).st_ino
        except OSError:
            current = None
        matches = stored_ino is not None and stored_ino == current
        previous = chosen.get(rel)
        if previous is not None and previous[2] and not matches:
            continue  # an older row whose inode is the file's now wins
        chosen[rel] = (str(ident), current if current is not None else stored_ino, matches)
    return [FileRecord(ident, rel, ino, 0) for rel, (ident, ino, _m) in chosen.items()]


__all__ = ["PostgresFileIdManager", "choose_file_id_manager", "read_sqlite_ids"]


def choose_file_id_manager(serverapp: Any, store_class: type) -> bool:
    """With ``PostgresYStore`` and no ``c.FileIdExtension.file_id_manager_class`` configured,
    file ids go to the store's database too (what several servers on one database need;
    one server loses nothing: its SQLite ids are copied at the first start). Called while
    extensions are linked: jupyter_server_fileid is linked (alphabetically) before us and
    creates its manager when loaded, after. Whether it was chosen."""
    if not any(klass.__name__ == "PostgresYStore" for klass in store_class.mro()):
        return False
    if "file_id_manager_class" in serverapp.config.get("FileIdExtension", {}):
        return False
    manager = getattr(serverapp, "extension_manager", None)
    point = manager.extension_points.get("jupyter_server_fileid") if manager else None
    app = getattr(point, "app", None)
    if app is None or not hasattr(app, "file_id_manager_class"):
        return False
    app.file_id_manager_class = PostgresFileIdManager
    serverapp.log.info(
        "jupyter_ystore: file ids are kept in PostgreSQL with the documents "
        "(PostgresFileIdManager; set c.FileIdExtension.file_id_manager_class to choose another)"
    )
    return True
