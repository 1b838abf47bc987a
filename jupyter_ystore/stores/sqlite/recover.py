"""Opening a SQLite database file, and what happens when SQLite says it is damaged.

A damaged file must not keep JupyterLab from starting, nor lose what can still be read. So
whenever a store of ours opens a database file (the start-up probe, a room, ``jupyter
ystore``), in the database thread:

1. It holds ``<db>.lock`` shared for as long as the connection is open (``_sqlite_lock``).
2. At the first open of a file in this process, ``PRAGMA quick_check`` reads every page
   (about 0.1 s for 100 MB; given up, unchecked, after ``CHECK_BUDGET`` s). A file SQLite
   reported damaged while this process used it (``note_damage``) is damaged too.
3. A damaged file (SQLITE_CORRUPT, SQLITE_NOTADB, a page that fails to read; never a lock,
   a permission, a full disk or a version we refuse) is salvaged under the exclusive lock:
   what can be read is copied into a new file beside it (``_sqlite_salvage``), the file and
   its -wal/-shm/-journal are renamed ``<name>.damaged-<UTC time>[-wal|-shm|-journal]``,
   never deleted, and the new file takes the original name. One WARNING says so.
4. If another process keeps the damaged file open, or the folder cannot take the new file,
   it stays where it is and is opened as it is (an error if SQLite cannot open it at all);
   the next open tries again.

A file named ``*.damaged-<time>`` is a copy set aside earlier: it is read into an in-memory
database (the same salvage, keeping every row) and served read-only, so that ``jupyter
ystore list --SQLiteYStore.db_path=<copy>`` works and the copy stays byte-identical.
"""

from __future__ import annotations

import logging
import os
import shlex
import sqlite3
import threading
import time

from jupyter_ystore.errors import YStoreError
from jupyter_ystore.stores.damaged import copy_name, is_damaged_copy
from jupyter_ystore.stores.sqlite import compat
from jupyter_ystore.stores.sqlite import schema as schema_module
from jupyter_ystore.stores.sqlite.errors import is_damage
from jupyter_ystore.stores.sqlite.lock import (
    SALVAGE_WAIT,
    Guard,
    Identity,
    Outcome,
    identity,
)
from jupyter_ystore.stores.sqlite.salvage import (
    Report,
    connect_read_only,
    read_only_uri,
    salvage,
)
from jupyter_ystore.stores.sqlite.schema import Options, Schema

log = logging.getLogger("jupyter_ystore.sqlite")

#: Seconds the integrity check at a file's first open may take before it is given up.
CHECK_BUDGET = 5.0
#: Seconds to wait for other processes to close a damaged file before opening it as it is.
USERS_WAIT = 2.0
#: Seconds before trying again to set aside a damaged file other processes had open.
RETRY_IN_USE = 60.0
#: The files beside a database that belong to it (moved with it, the database last).
SIDECARS = ("-wal", "-journal", "-shm")

_lock = threading.Lock()
_checked: set[Identity] = set()  # found intact at a first open in this process
_damaged: dict[Identity, str] = {}  # reported damaged while this process used them
_in_use_until: dict[Identity, float] = {}  # damaged, but other processes had them open


class _GuardedConnection(sqlite3.Connection):
    """A connection that lets go of ``<db>.lock`` when it is closed."""

    guard: Guard | None = None

    def close(self) -> None:
        try:
            super().close()
        finally:
            guard, self.guard = self.guard, None
            if guard is not None:
                guard.release()


def open_database(db_path: str, options: Options) -> tuple[sqlite3.Connection, Schema]:
    """``_sqlite_schema.open_database``, after a damaged file was set aside and salvaged."""
    if db_path == ":memory:":
        return schema_module.open_database(db_path, options)
    if is_damaged_copy(db_path):
        return open_damaged_copy(db_path)
    try:
        os.makedirs(os.path.dirname(db_path), exist_ok=True)
    except OSError:
        pass  # opening says why, naming the setting
    guard = Guard.shared(db_path, SALVAGE_WAIT)
    try:
        conn, schema = _open_checked(db_path, options, guard)
    except BaseException:
        if guard is not None:
            guard.release()
        raise
    if isinstance(conn, _GuardedConnection):
        conn.guard = guard
    elif guard is not None:  # sqlite3.connect replaced (tests): nothing to tie it to
        guard.release()
    return conn, schema


def _open_checked(
    db_path: str, options: Options, guard: Guard | None
) -> tuple[sqlite3.Connection, Schema]:
    damage = _diagnose(db_path, options)
    if damage is not None:
        _recover(db_path, guard, *damage)
    try:
        return schema_module.open_database(db_path, options, factory=_GuardedConnection)
    except sqlite3.DatabaseError as exc:
        seen = identity(db_path)
        if damage is not None or seen is None or not is_damage(exc):
            raise
        reason = str(exc)
    # Damage the check did not see (already checked in this process, or out of budget).
    _recover(db_path, guard, seen, reason)
    return schema_module.open_database(db_path, options, factory=_GuardedConnection)


def note_damage(db_path: str, exc: BaseException, action: str) -> None:
    """Remember that SQLite said ``db_path`` is damaged while this process used it: the
    next open of the file sets it aside (see the module)."""
    if db_path == ":memory:" or is_damaged_copy(db_path) or not is_damage(exc):
        return
    seen = identity(db_path)
    if seen is None:
        return
    with _lock:
        if seen in _damaged:
            return
        _damaged[seen] = str(exc)
        _checked.discard(seen)
    log.warning(
        "jupyter_ystore: SQLite reports the database %s damaged (%s) while %s; it will be "
        "moved aside and what can be read salvaged the next time it is opened while no "
        "other process uses it (at the latest when the server starts again)",
        db_path,
        exc,
        action,
    )


# ---------------------------------------------------------------------- finding damage


def _diagnose(db_path: str, options: Options) -> tuple[Identity, str] | None:
    """``(file, reason)`` when the file is damaged, else None (also when unsure)."""
    seen = identity(db_path)
    if seen is None:
        return None  # a new database
    with _lock:
        if _in_use_until.get(seen, 0.0) > time.monotonic():
            return None  # still open elsewhere: not waiting for them at every open
        reason = _damaged.get(seen)
        if reason is None and seen in _checked:
            return None
    if reason is None:
        reason = _check(db_path, options, seen)
    return None if reason is None else (seen, reason)


def _check(db_path: str, options: Options, seen: Identity) -> str | None:
    """What ``PRAGMA quick_check`` finds wrong with the file (read-only), if anything."""
    try:
        conn = sqlite3.connect(read_only_uri(db_path), uri=True, timeout=options.busy_timeout)
    except Exception:  # cannot even look (or sqlite3.connect replaced): the open will say
        return None
    deadline = time.monotonic() + CHECK_BUDGET
    try:
        conn.set_progress_handler(lambda: time.monotonic() > deadline, 20_000)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        problems = [row[0] for row in conn.execute("PRAGMA quick_check") if row[0] != "ok"]
    except sqlite3.DatabaseError as exc:
        # Only damage counts: locked, read-only, unopenable or out of time is "unknown".
        return str(exc) if is_damage(exc) else None
    finally:
        conn.close()
    if problems:
        return f"{problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
    with _lock:
        _checked.add(seen)
    return None


# ---------------------------------------------------------------------- setting it aside


def _recover(db_path: str, guard: Guard | None, seen: Identity, reason: str) -> None:
    """Set the damaged file aside and salvage it, if this process may; else leave it."""
    if not os.access(db_path, os.W_OK):  # someone's read-only file: never replaced by us
        log.warning(
            "jupyter_ystore: the database %s is damaged (%s) and read-only: left where it is",
            db_path,
            reason,
        )
        return
    outcome = Outcome.EXCLUSIVE
    if guard is not None:
        outcome = guard.exclusive(db_path, seen, USERS_WAIT)
    try:
        if outcome is Outcome.EXCLUSIVE:
            _set_aside(db_path, seen, reason)
        elif outcome is Outcome.IN_USE:
            with _lock:
                _in_use_until[seen] = time.monotonic() + RETRY_IN_USE
            log.warning(
                "jupyter_ystore: the database %s is damaged (%s) but other processes have it "
                "open, so it was left where it is and opened as it is; it is moved aside and "
                "salvaged at an open while no other process uses it (stop them, then start "
                "again)",
                db_path,
                reason,
            )
    finally:
        if guard is not None:
            guard.lock_shared(SALVAGE_WAIT)


def _set_aside(db_path: str, seen: Identity, reason: str) -> None:
    """Salvage into a new file, move the damaged one aside, put the new one in its place.

    In this order: a full disk or a read-only folder leaves the damaged file where it was.
    A salvage that fails for another reason (a bug of ours) still moves the file aside, so
    that the server starts with a new store; every row stays readable in the copy.
    """
    folder, name = os.path.split(db_path)
    tmp = os.path.join(folder, f".{name}.salvage-{os.getpid()}.tmp")
    try:
        report: Report | None = None
        try:
            report = _salvage_into(db_path, tmp)
        except (OSError, sqlite3.OperationalError):
            raise
        except Exception:
            log.exception("jupyter_ystore: salvaging the damaged database %s failed", db_path)
        copy = copy_name(db_path, lambda c: any(os.path.lexists(c + s) for s in ("",) + SIDECARS))
        moved = _move_aside(db_path, copy)
        if report is not None:
            try:
                os.replace(tmp, db_path)
            except OSError:
                _move_back(db_path, copy, moved)
                raise
        _fsync_folder(folder)
    except (OSError, sqlite3.OperationalError) as exc:  # no space, no permission, a lock
        _remove(tmp)
        log.warning(
            "jupyter_ystore: the database %s is damaged (%s) but could not be set aside (%s); "
            "it is opened as it is and set aside at a later open",
            db_path,
            reason,
            exc,
        )
        return
    with _lock:
        _damaged.pop(seen, None)
        _in_use_until.pop(seen, None)
        fresh = identity(db_path)
        if fresh is not None and report is not None:
            _checked.add(fresh)
    log.warning(_announcement(db_path, copy, moved, reason, report or Report()))


def _salvage_into(db_path: str, tmp: str) -> Report:
    """Copy what ``db_path`` holds into the new file ``tmp``, fsynced, in rollback mode
    (the normal open switches it to WAL, so no -wal of its own needs to follow it)."""
    _remove(tmp)
    source = connect_read_only(db_path)
    try:
        dest = sqlite3.connect(tmp, isolation_level=None)
        try:
            report = salvage(source, dest, keep_all=False)
            dest.execute("PRAGMA journal_mode = DELETE").fetchall()
        finally:
            dest.close()
    except BaseException:
        _remove(tmp)
        raise
    finally:
        source.close()
    fd = os.open(tmp, os.O_RDONLY)  # no connection of ours has this file open any more
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return report


def _move_aside(db_path: str, copy: str) -> list[str]:
    """Rename the file and the ones beside it to ``copy`` (+ the same suffix); the journals
    first, so that no journal of the damaged file is ever left beside a new one. Undone if
    a rename fails."""
    moved: list[str] = []
    try:
        for suffix in SIDECARS + ("",):
            if os.path.lexists(db_path + suffix):
                os.rename(db_path + suffix, copy + suffix)
                moved.append(suffix)
    except OSError:
        _move_back(db_path, copy, moved)
        raise
    return moved


def _move_back(db_path: str, copy: str, moved: list[str]) -> None:
    """Undo ``_move_aside`` (the database first, then what belongs to it)."""
    for suffix in reversed(moved):
        try:
            os.rename(copy + suffix, db_path + suffix)
        except OSError:
            pass


def _announcement(db_path: str, copy: str, moved: list[str], reason: str, report: Report) -> str:
    """The one line that tells an operator what happened and what to run."""
    beside = [s for s in moved if s]
    with_files = f" (with its {', '.join(beside)} files)" if beside else ""
    dropped = ""
    if report.dropped:
        names = ", ".join(report.dropped[:5]) + (", ..." if len(report.dropped) > 5 else "")
        dropped = (
            f"; {len(report.dropped)} documents kept nothing because their readable updates "
            f"need ones that were lost ({names})"
        )
    lost = ""
    if not report.schema:
        lost = "; not even its list of tables could be read"
    elif report.unreadable:
        lost = f", {_count(report.unreadable, 'unreadable part')} skipped"
    if report.invalid:
        lost += f", {_count(report.invalid, 'row')} holding no usable update skipped"
    return (
        f"jupyter_ystore: the SQLite store {db_path} was damaged ({reason}): moved it to "
        f"{copy}{with_files}, never deleted, and salvaged "
        f"{_count(report.documents, 'document')} ({_count(report.records, 'record')}{lost}) "
        f"into a fresh {db_path}{dropped}; documents with nothing salvaged open from their "
        f"files. Check the store with `jupyter ystore verify "
        f"--all --SQLiteYStore.db_path={shlex.quote(db_path)}`; read the damaged copy with "
        f"`jupyter ystore list --SQLiteYStore.db_path={shlex.quote(copy)}`"
    )


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _remove(path: str) -> None:
    for suffix in ("",) + SIDECARS:
        try:
            os.unlink(path + suffix)
        except FileNotFoundError:
            pass


def _fsync_folder(folder: str) -> None:
    if os.name == "nt":
        return
    fd = os.open(folder or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------- reading a copy


def open_damaged_copy(db_path: str) -> tuple[sqlite3.Connection, Schema]:
    """A read-only, in-memory database holding every row the damaged copy still gives."""
    if not os.path.isfile(db_path):
        raise YStoreError(
            "no such damaged copy", path=db_path, hint="check the name the warning gave"
        )
    memory = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    try:
        source = connect_read_only(db_path)
        try:
            report = salvage(source, memory, keep_all=True)
        finally:
            source.close()
        memory.execute("PRAGMA query_only = ON")
        schema = Schema(compat.inspect_layout(memory))
    except BaseException:
        memory.close()
        raise
    log.warning(
        "jupyter_ystore: %s is a damaged copy: read into memory and opened read-only "
        "(%s, %s readable%s)",
        db_path,
        _count(report.documents, "document"),
        _count(report.records, "record"),
        f", {_count(report.unreadable, 'unreadable part')} skipped" if report.unreadable else "",
    )
    return memory, schema
