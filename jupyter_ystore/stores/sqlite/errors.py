"""Turn sqlite3 exceptions into the YStoreError family, with the path and what to do.

The originals turned every exception into ``YDocNotFound`` (a broken database looked like an
empty document) or logged and dropped failed writes; here each failure keeps its meaning.
"""

from __future__ import annotations

import errno
import sqlite3

from jupyter_ystore.errors import (
    YStoreCorruptError,
    YStoreError,
    YStoreLockedError,
    YStorePermissionError,
)
from jupyter_ystore.stores.damaged import is_damaged_copy

_LOCKED = ("database is locked", "database table is locked", "database is busy")
_PERMISSION = ("readonly", "read-only", "unable to open database", "access permission denied")
_CORRUPT = ("not a database", "malformed", "corrupt", "file is encrypted")
_PERMISSION_HINT = (
    "give this process read and write access to the database file, its -wal and -shm files "
    "and its folder, or set SQLiteYStore.db_path elsewhere"
)
_COPY_HINT = (
    "a damaged copy set aside by jupyter_ystore is only ever read; the store it was salvaged "
    "into is the file without the .damaged-<time> suffix"
)
#: SQLITE_CORRUPT, SQLITE_NOTADB (any extended code), SQLITE_IOERR_READ, _SHORT_READ.
_DAMAGE_CODES = (11, 26)
_READ_FAILURES = (266, 522)


def is_damage(exc: BaseException) -> bool:
    """Whether SQLite says the file itself is damaged (corrupt, not a database, a page that
    cannot be read), as opposed to locked, read-only, full or refused by us."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return (code & 0xFF) in _DAMAGE_CODES or code in _READ_FAILURES
    text = str(exc).lower()  # an exception made by hand, or an older Python
    return "not a database" in text or "malformed" in text


def map_error(exc: BaseException, db_path: str, action: str, busy_timeout: float) -> BaseException:
    """The YStoreError to raise for ``exc`` (other exceptions are returned unchanged)."""
    if isinstance(exc, YStoreError):
        return exc
    if isinstance(exc, PermissionError) or (
        isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
    ):
        return YStorePermissionError(
            f"permission denied while {action}: {exc}",
            path=db_path,
            hint=_PERMISSION_HINT,
        )
    if not isinstance(exc, sqlite3.Error):
        return exc
    text = str(exc).lower()
    if any(marker in text for marker in _LOCKED):
        return YStoreLockedError(
            f"the database stayed locked by another connection for more than "
            f"{busy_timeout:g} s while {action}",
            path=db_path,
            hint="nothing was written; retry, find the process holding the database, or raise "
            "SQLiteYStore.busy_timeout",
        )
    if any(marker in text for marker in _PERMISSION):
        return YStorePermissionError(
            f"cannot write the database while {action}: {exc}",
            path=db_path,
            hint=_COPY_HINT if is_damaged_copy(db_path) else _PERMISSION_HINT,
        )
    if any(marker in text for marker in _CORRUPT):
        return YStoreCorruptError(
            f"the database file is damaged or not an SQLite database ({exc}) while {action}",
            path=db_path,
            hint="the next open of the file while no other process uses it (e.g. the next "
            "start) moves it aside as <name>.damaged-<time>, never deleting it, and salvages "
            "what can be read into a fresh file; or restore it from a backup. "
            "`jupyter ystore verify --all` shows what is damaged",
        )
    return YStoreError(f"SQLite error while {action}: {exc}", path=db_path)
