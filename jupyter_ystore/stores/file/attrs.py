"""FileYStore attributes: a sidecar file beside each document's log, ``<log file>.attrs``.

Beside the log rather than in it: the log is ypy-websocket's ``VERSION:2`` format, which
ypy-websocket 0.12.4 and pycrdt-store 0.1.5 read as a plain run of update records, so
anything else inside it would break them. They never open the sidecar.

Format: ``YSTORE-ATTRS:1\\n`` then, per attribute, ``varbytes(name) varbytes(value)``. The
file is only ever replaced whole (written to a temporary file in the same folder, fsynced,
renamed over the sidecar, folder fsynced), so a reader in any process sees the old or the
new file, never a torn one, and needs no lock. A set reads, merges and replaces the file
while holding ``flock`` on it, so concurrent sets (other threads, other processes) do not
lose each other's names; after taking the lock it checks that the path still names the
locked file (a set that just finished replaced it, or a delete removed it) and otherwise
locks the new one. A set with no sidecar yet creates an empty one to lock (an empty
sidecar means "no attributes"). No attribute left: the sidecar is removed.

The functions here block: run them in a worker thread.
"""

from __future__ import annotations

import os

from jupyter_ystore.core.codec import read_var_bytes, write_var_bytes
from jupyter_ystore.errors import YStoreCorruptError, YStoreError
from jupyter_ystore.stores.file.format import HEADER_PREFIX
from jupyter_ystore.stores.file.store import (
    _EXCLUSIVE,
    _flock,
    _fsync_dir,
    _replace_file,
    _os_error,
    _read_all,
)

SUFFIX = ".attrs"
MAGIC = b"YSTORE-ATTRS:1\n"
_TMP = ".attrs.tmp"


def sidecar(log_path: str) -> str:
    """The attributes file of the document whose log is ``log_path``."""
    return log_path + SUFFIX


def parse(data: bytes, path: str) -> dict[str, bytes]:
    """Decode a sidecar (empty: no attributes)."""
    if not data:
        return {}
    if data.startswith(HEADER_PREFIX):
        raise _in_the_way(path)
    if not data.startswith(MAGIC):
        raise YStoreCorruptError(
            "not a ystore attributes file (unknown header)",
            path=path,
            hint="the file was left untouched; move it away to drop the document's attributes",
        )
    values: dict[str, bytes] = {}
    pos = len(MAGIC)
    try:
        while pos < len(data):
            name, pos = read_var_bytes(data, pos)
            value, pos = read_var_bytes(data, pos)
            values[name.decode("ascii")] = value
    except (ValueError, UnicodeDecodeError) as exc:  # TruncatedError is a ValueError
        raise YStoreCorruptError(
            f"damaged ystore attributes file at byte {pos} ({exc})",
            path=path,
            hint="the file was left untouched; move it away to drop the document's attributes",
        ) from None
    return values


def encode(values: dict[str, bytes]) -> bytes:
    return MAGIC + b"".join(
        write_var_bytes(name.encode("ascii")) + write_var_bytes(value)
        for name, value in sorted(values.items())
    )


def read(path: str) -> dict[str, bytes]:
    """The attributes stored in the sidecar ``path`` now ({} without one)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise _os_error(exc, path, "reading the document's attributes") from exc
    return parse(data, path)


def update(path: str, values: dict[str, bytes | None]) -> None:
    """Set (bytes) or remove (None) names in the sidecar ``path``: atomic and durable."""
    try:
        folder = os.path.dirname(path)
        _make_folders(folder)
        fd = _lock(path, create=True)
        assert fd is not None
        try:
            current = parse(_read_all(fd), path)
            merged = dict(current)
            for name, value in values.items():
                if value is None:
                    merged.pop(name, None)
                else:
                    merged[name] = value
            if merged and merged == current and os.fstat(fd).st_size:
                return  # already stored as asked
            if not merged:
                os.unlink(path)  # waiting setters find it gone and lock a new one
            else:
                _replace_file(path, encode(merged), _TMP)
            _fsync_dir(folder)
        finally:
            os.close(fd)  # releases the lock
    except OSError as exc:
        raise _os_error(exc, path, "storing the document's attributes") from exc


def remove(path: str) -> None:
    """Delete the sidecar ``path`` (if any), durably."""
    try:
        fd = _lock(path, create=False)
        if fd is None:
            return
        try:
            os.unlink(path)
            _fsync_dir(os.path.dirname(path))
        finally:
            os.close(fd)
    except OSError as exc:
        raise _os_error(exc, path, "deleting the document's attributes") from exc


def _lock(path: str, *, create: bool) -> int | None:
    """A descriptor of the sidecar that ``path`` names, held exclusively (None: there is
    none and ``create`` is false)."""
    flags = os.O_RDWR | (os.O_CREAT if create else 0)
    while True:
        try:
            fd = os.open(path, flags, 0o644)
        except FileNotFoundError:
            if create:
                raise
            return None
        try:
            _flock(fd, _EXCLUSIVE, path)
            mine = os.fstat(fd)
            try:
                now = os.stat(path)
            except FileNotFoundError:
                now = None
            if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # replaced or removed while we waited: lock what is there now


def _make_folders(folder: str) -> None:
    """Create ``folder`` and its missing parents, each entry made durable (a set may come
    before the document's first write, which would create them)."""
    missing = []
    while folder and not os.path.isdir(folder):
        missing.append(folder)
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    for new in reversed(missing):
        try:
            os.mkdir(new)
        except FileExistsError:
            pass
        _fsync_dir(os.path.dirname(new))


def _in_the_way(path: str) -> YStoreError:
    return YStoreError(
        "a document log has the name of this document's attributes file",
        path=path,
        hint="the document named like it keeps its updates there; rename one of the two "
        "documents to store attributes (nothing was changed)",
    )
