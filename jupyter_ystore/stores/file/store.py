"""FileYStore and TempFileYStore: one append-only log file per document.

The format is ypy-websocket's (also pycrdt-store's), so their files open in place: see
``format``, shared with ``jupyter ystore verify``.

What we add: each batch of records is ONE ``os.write`` on an ``O_APPEND`` descriptor followed
by ``fsync`` before ``write()`` returns, with concurrent writers sharing that write and fsync
(group commit). A crash mid-write can only leave a torn last record: on open we keep the
intact records, set the torn bytes aside next to the file and truncate it, and say so in the
log. Damage anywhere else sets the file aside as ``<name>.damaged-<UTC time>`` and keeps its
intact records in a fresh file (``_file_salvage``); such copies are only ever read. Version
headers we do not know raise and touch nothing.

Other processes using the same files (a second server, ``jupyter ystore compact``) are
coordinated with ``flock`` (see ``_LogFile``).

Compaction follows SQLite's policy: automatic once ``compact_after_updates`` updates or
``compact_after_bytes`` bytes follow the snapshot, after ``document_ttl`` idle seconds (before
the next write), and on ``compact()``. The log becomes its snapshot plus the records appended
since, by an atomic replacement (temporary file, fsync, ``os.replace``, fsync of the folder).
An automatic compaction reads and squashes under a shared lock, so writers of every process
go on meanwhile, then takes the file exclusively only to check that nothing but appends
happened since (else it starts again), copy those appended records after the snapshot and
rename. The updates it replaces become history points (``history_retention``) in a second
sidecar, ``<file>.history`` (``_file_history``: how a crash between the two renames still
reads as the old or the new state).

A document's attributes (``set_attributes``) live in a sidecar file beside its log,
``<file>.attrs``, replaced whole the same way (see ``_file_attrs``); listings skip it (it
does not start with ``VERSION:``).
"""

from __future__ import annotations

import copy
import errno
import os
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, AsyncIterator, ClassVar

import anyio
from traitlets import TraitError, Unicode, observe, validate

from jupyter_ystore.core import threads
from jupyter_ystore.errors import (
    YDocNotFound,
    YStoreCorruptError,
    YStoreError,
    YStoreInvalidPath,
    YStoreLockedError,
    YStorePermissionError,
)
from jupyter_ystore.stores import compaction, upstream_names
from jupyter_ystore.stores import retention as _retention
from jupyter_ystore.stores.base import BaseYStore, DocumentInfo
from jupyter_ystore.stores.compaction import Policy
from jupyter_ystore.stores.damaged import copy_name, is_damaged_copy
from jupyter_ystore.stores.file import history as _file_history
from jupyter_ystore.stores.file.format import (  # (encode_record, parse_log: public names)
    HEADER,
    HEADER_PREFIX,
    Record,
    Scan,
    decode_records,
    encode_record,
    parse_log,
)
from jupyter_ystore.stores.retention import Point, Retention, StoredHistory
from jupyter_ystore.stores.settings import Count, Seconds
from jupyter_ystore.stores.shared import SharedMap

#: The folder, in a server's root, that holds one file per document by default.
DEFAULT_FOLDER = ".jupyter_ystore"
_TORN_MARK = ".torn-"
_TMP_SUFFIX = ".compact.tmp"


# ---------------------------------------------------------------------- OS helpers


def _os_error(exc: OSError, path: str, doing: str) -> YStoreError:
    """Our error for an OSError, keeping the OS's words and adding what to do."""
    if isinstance(exc, PermissionError):
        return YStorePermissionError(
            f"permission denied while {doing}: {exc.strerror}",
            path=path,
            hint="give the server's user read and write access to the file and its folder",
        )
    if exc.errno == errno.ENOSPC:
        return YStoreError(
            f"no space left on the device while {doing}",
            path=path,
            hint="free some disk space; nothing partial was kept",
        )
    if isinstance(exc, (NotADirectoryError, IsADirectoryError, FileExistsError)):
        return YStoreError(
            f"cannot use this path while {doing}: {exc.strerror}",
            path=path,
            hint="a file stands where a folder is needed (or the reverse); move it away",
        )
    return YStoreError(f"{doing} failed: {exc}", path=path)


try:
    import fcntl
except ImportError:  # Windows: no cross-process coordination; one server per folder
    fcntl = None  # type: ignore[assignment]

_SHARED, _EXCLUSIVE, _UNLOCK = (
    (fcntl.LOCK_SH, fcntl.LOCK_EX, fcntl.LOCK_UN) if fcntl is not None else (0, 0, 0)
)


#: Seconds to wait for another process to release a log file before giving up.
LOCK_TIMEOUT = 30.0


def _flock(fd: int, how: int, path: str = "") -> None:
    """Coordinate with other processes using the same file (blocks: call in a thread).

    Locks are held only for one append, repair or compaction, so a wait is short; a file
    held longer than ``LOCK_TIMEOUT`` (a process stuck with it) raises YStoreLockedError.
    """
    if fcntl is None:
        return
    if how == _UNLOCK:
        fcntl.flock(fd, how)
        return
    deadline = time.monotonic() + LOCK_TIMEOUT
    delay = 0.0005
    while True:
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise YStoreLockedError(
                    f"another process has held the ystore log for over {LOCK_TIMEOUT:g} s",
                    path=path,
                    hint="find the process using the file (e.g. `fuser` or `lsof`), "
                    "and retry once it is done",
                ) from None
        time.sleep(delay)
        delay = min(delay * 2, 0.01)


def _fsync_dir(folder: str) -> None:
    """Make a create / rename / unlink in ``folder`` durable."""
    if os.name == "nt":  # Windows cannot open a folder; NTFS journals the entry itself
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_file(path: str, data: bytes, suffix: str = _TMP_SUFFIX) -> os.stat_result:
    """Make ``data`` the content of ``path`` atomically (a temporary file beside it, written
    whole and fsynced, renamed over it; the caller fsyncs the folder), so that the path
    always names a whole file. Returns the new file's stat."""
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}{suffix}")
    try:
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:  # a write may take less than asked (a large file, a full disk)
                view = view[os.write(out, view) :]
            os.fsync(out)
            st = os.fstat(out)
        finally:
            os.close(out)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return st


def _write_new(path: str, data: bytes) -> None:
    """Write ``data`` to a new file ``path``, fsynced (to be renamed into place later)."""
    out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(out, view) :]
        os.fsync(out)
    finally:
        os.close(out)


def _read_all(fd: int, offset: int = 0) -> bytes:
    size = os.fstat(fd).st_size - offset
    os.lseek(fd, offset, os.SEEK_SET)
    chunks = []
    while True:
        chunk = os.read(fd, max(size, 1 << 16))
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


# ---------------------------------------------------------------------- one log file


@dataclass
class _Pending:
    record: bytes
    timestamp: float
    size: int = 0  # the update's bytes
    done: bool = False
    error: BaseException | None = None


@dataclass
class _Read:
    """What a compaction read: the log (to ``size`` bytes) and its history sidecar."""

    identity: tuple[int, int]  # device, inode of the log
    size: int
    records: list[Record]
    sidecar: _file_history.Sidecar


@dataclass
class _Prepared:
    """A compaction computed and written to temporary files, waiting for ``_commit``."""

    read: _Read
    log_tmp: str
    sidecar_tmp: str | None  # None: the history is empty, the sidecar goes
    snapshot_timestamp: float

    def discard(self) -> None:
        for tmp in (self.log_tmp, self.sidecar_tmp):
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass


class _LogFile:
    """One log file, shared by every store of this process that names it.

    Sharing lets concurrent writers of one document join one write+fsync, and keeps the
    append descriptor right after a compaction swaps the file. The blocking methods run in
    a worker thread while ``lock`` is held.

    Other processes (a second server, ``jupyter ystore compact``) are coordinated with
    ``flock``: appends, repairs, compaction and deletion hold the file exclusively, reads
    hold it shared. Before appending, a writer checks that the path still names its open
    file and that the file has not changed since its last write; if it has, it reopens
    and checks what was added (a torn tail left by a process that crashed is set aside
    before anything is appended after it).
    """

    def __init__(self, path: str, log: Any):
        self.path = path
        self.log = log
        self.lock = anyio.Lock()
        self.queue: list[_Pending] = []
        self.fd: int | None = None  # O_APPEND descriptor, opened on the first write
        # (device, inode, size) of the file as last checked or written by us: a file that
        # still matches needs no check before the next append.
        self.verified: tuple[int, int, int] | None = None
        # What the check at open parsed, handed to the first read if the file is unchanged
        # (a room reads right after it opens: this saves parsing the file twice).
        self._kept: tuple[tuple[int, int, int], list[Record]] | None = None
        self.last_timestamp: float | None = None
        self.damaged_copy = is_damaged_copy(path)  # set aside earlier: only ever read
        self.key: str | None = None  # the document's key (for what the log says to run)
        # Records in the file as last seen, and the bytes of the updates after the first
        # (the snapshot, once compacted): what the compaction thresholds look at.
        self.records = 0
        self.tail_bytes = 0

    def _count(self, records: list[Record], *, added: bool = False) -> None:
        """Note the records of a scan: the whole file, or (``added``) appended ones."""
        if not added:
            self.records, self.tail_bytes = 0, 0
        skip = 1 if self.records == 0 else 0
        self.records += len(records)
        self.tail_bytes += sum(len(record[0]) for record in records[skip:])

    def due(self, policy: Policy) -> bool:
        """Whether the updates after the first record pass ``policy``'s thresholds."""
        return policy.due(max(0, self.records - 1), self.tail_bytes)

    # -- reading and recovery

    def load_kept(self) -> list[Record]:
        """``load()``, reusing what the open check parsed when the file has not changed."""
        kept, self._kept = self._kept, None
        if kept is not None:
            try:
                st = os.stat(self.path)
            except OSError:
                pass
            else:
                if (st.st_dev, st.st_ino, st.st_size) == kept[0]:
                    return kept[1]
        return self.load()

    def load(self, *, keep: bool = False) -> list[Record]:
        """Every intact record; a torn tail is set aside (or, read-only, skipped)."""
        self._kept = None
        writable = not self.damaged_copy
        try:
            try:
                fd = os.open(self.path, os.O_RDWR if writable else os.O_RDONLY)
            except PermissionError:
                writable = False  # a read-only file is still readable
                fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            self.last_timestamp = None
            return []
        except OSError as exc:
            raise _os_error(exc, self.path, "opening the ystore log") from exc
        try:
            _flock(fd, _SHARED, self.path)  # writers of other processes hold it exclusively
            try:
                scan, key = self._scan(fd, 0)
            except YStoreCorruptError:  # damaged in the middle
                if not writable:
                    if not self.damaged_copy:
                        raise
                    scan, key = self._scan_copy(fd)
                else:
                    from jupyter_ystore.stores.file import (
                        salvage as _file_salvage,  # (it imports this module)
                    )

                    _flock(fd, _EXCLUSIVE, self.path)
                    if not self._is_current(fd):  # set aside by another process meanwhile
                        return self.load(keep=keep)
                    scan, found = _file_salvage.salvage(self, fd, _read_all(fd), self.key)
                    if found is None:  # nothing kept: the document opens from its file
                        self.verified = None
                        self.last_timestamp = None
                        return []
                    key = found
            if scan.torn and writable:
                _flock(fd, _EXCLUSIVE, self.path)
                scan, key = self._scan(fd, 0)  # as it is now that we hold it alone
                if scan.torn:
                    key = self._set_aside(fd, scan)
            elif scan.torn:
                self.log.warning(
                    "ystore log %s ends with a torn record (%d bytes) that cannot be "
                    "repaired (read-only); reading the %d intact records",
                    self.path,
                    scan.size - scan.intact_end,
                    len(scan.records),
                )
        except OSError as exc:
            raise _os_error(exc, self.path, "reading the ystore log") from exc
        finally:
            os.close(fd)  # releases the lock
        if not scan.torn or writable:
            self.verified = key
        self.last_timestamp = scan.records[-1][2] if scan.records else None
        self._count(scan.records)
        if keep and not scan.torn:
            self._kept = (key, scan.records)
        return scan.records

    def _scan_copy(self, fd: int) -> tuple[Scan, tuple[int, int, int]]:
        """The intact records of a damaged copy, read without touching it."""
        from jupyter_ystore.stores.file import (
            salvage as _file_salvage,  # (it imports this module)
        )

        buf = _read_all(fd)
        st = os.fstat(fd)
        scan = Scan(records=_file_salvage.intact_records(buf, self.path).records, size=len(buf))
        scan.intact_end = scan.size  # nothing of a copy is ever set aside
        return scan, (st.st_dev, st.st_ino, len(buf))

    def _refuse_copy(self, doing: str) -> None:
        if self.damaged_copy:
            raise YStorePermissionError(
                f"a damaged copy is only ever read, not {doing}",
                path=self.path,
                hint="the document's store is the file without the .damaged-<time> suffix",
            )

    def _scan(self, fd: int, offset: int) -> tuple[Scan, tuple[int, int, int]]:
        """Parse the file from ``offset`` (0, or a checked record boundary)."""
        buf = _read_all(fd, offset)
        st = os.fstat(fd)
        scan = parse_log(buf, self.path, offset)
        scan.tail = buf[scan.intact_end - offset :]
        return scan, (st.st_dev, st.st_ino, offset + len(buf))

    def _set_aside(self, fd: int, scan: Scan) -> tuple[int, int, int]:
        """Keep the torn bytes in ``<name>.torn-<UTC time>`` and cut the log back to intact.

        The caller holds the file exclusively. Returns the file's new identity and size.
        """
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        base = f"{self.path}{_TORN_MARK}{stamp}"
        aside, n = base, 0
        while True:
            try:
                out = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                break
            except FileExistsError:
                n += 1
                aside = f"{base}-{n}"
        try:
            os.write(out, scan.tail)
            os.fsync(out)
        finally:
            os.close(out)
        os.ftruncate(fd, scan.intact_end)
        os.fsync(fd)
        _fsync_dir(os.path.dirname(self.path))
        self.log.warning(
            "ystore log %s ended with a torn record (a crash while writing?): kept its %d "
            "intact records, moved the %d torn bytes to %s",
            self.path,
            len(scan.records),
            len(scan.tail),
            aside,
        )
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino, st.st_size)

    # -- appending

    def _is_current(self, fd: int) -> bool:
        """Whether the path still names the file open as ``fd`` (not replaced or removed)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def _open_locked(self) -> int:
        """The append descriptor, held exclusively, naming the current file."""
        while True:
            if self.fd is None:
                folder = os.path.dirname(self.path)
                if not os.path.isdir(folder):
                    os.makedirs(folder, exist_ok=True)
                self.fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            _flock(self.fd, _EXCLUSIVE, self.path)
            if self._is_current(self.fd):
                return self.fd
            self.close_fd()  # replaced by another process's compaction, or deleted

    def _check_before_append(self, fd: int) -> None:
        """Make sure what we append follows intact records (the caller holds the file)."""
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino, st.st_size)
        if key == self.verified and st.st_size:
            return
        if st.st_size == 0:  # a new (or emptied) file: its header first
            self._write_all(fd, HEADER, 0)
            os.fsync(fd)
            _fsync_dir(os.path.dirname(self.path))
            self.verified = (st.st_dev, st.st_ino, len(HEADER))
            return
        known = self.verified
        offset = known[2] if known and known[:2] == key[:2] and known[2] <= key[2] else 0
        scan, key = self._scan(fd, offset)  # only what others added, when we can
        if scan.torn:
            key = self._set_aside(fd, scan)
        if scan.records:
            self.last_timestamp = scan.records[-1][2]
        self._count(scan.records, added=offset > 0)
        self.verified = key

    def _write_all(self, fd: int, data: bytes, size_before: int) -> None:
        """One ``os.write``; if the OS takes less (disk full), undo the partial record."""
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            try:
                os.ftruncate(fd, size_before)
            except OSError:
                pass  # the next open sets a torn tail aside
            raise

    def append(self, batch: list[_Pending], policy: Policy, now: float) -> bool:
        """Write a batch of records with one write and one fsync (runs in a thread); an
        idle document (``policy.ttl``) is squashed first. Returns whether the updates after
        the snapshot now pass a compaction threshold."""
        self._kept = None
        self._refuse_copy("appended to")
        data = b"".join(p.record for p in batch)
        try:
            fd = self._open_locked()
            try:
                self._check_before_append(fd)
                if self.records > 1 and policy.idle(self.last_timestamp, now):
                    self._compact_locked(fd, policy.retention, now)
                    fd = self._open_locked()
                    self._check_before_append(fd)
                size_before = os.fstat(fd).st_size
                self._write_all(fd, data, size_before)
                os.fsync(fd)
                st = os.fstat(fd)
                self.verified = (st.st_dev, st.st_ino, size_before + len(data))
            finally:
                if self.fd is not None:
                    _flock(self.fd, _UNLOCK)
        except OSError as exc:
            raise _os_error(exc, self.path, "appending to the ystore log") from exc
        self.last_timestamp = batch[-1].timestamp
        skip = 1 if self.records == 0 else 0
        self.records += len(batch)
        self.tail_bytes += sum(p.size for p in batch[skip:])
        return self.due(policy)

    def close_fd(self) -> None:
        self._kept = None
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    # -- administration

    def compact(
        self,
        retention: Retention,
        now: float,
        name: str | None = None,
        saved_by: str | None = None,
    ) -> bool:
        """Replace the log by one record holding the squashed state, atomically, the
        history it replaces kept as points (``name``: ending with a version of that name).
        False when the log is missing (or, without ``name``, already one record)."""
        self._kept = None
        self._refuse_copy("compacted")
        if not os.path.exists(self.path):
            return False
        try:
            fd = self._open_locked()
            try:
                self._check_before_append(fd)
                return self._compact_locked(fd, retention, now, name, saved_by)
            finally:
                if self.fd is not None:
                    _flock(self.fd, _UNLOCK)
        except OSError as exc:
            raise _os_error(exc, self.path, "compacting the ystore log") from exc

    def _compact_locked(
        self,
        fd: int,
        retention: Retention,
        now: float,
        name: str | None = None,
        saved_by: str | None = None,
    ) -> bool:
        """Compact the checked file held exclusively as ``fd``; closes ``fd`` after."""
        read = self._read_for_compaction(fd)
        if not read.records:
            return False
        if len(read.records) <= 1 and name is None:
            return self._rethin_locked(read, retention, now)
        prepared = self._prepare(read, retention, now, name, saved_by)
        try:
            self._commit(fd, prepared)
        except BaseException:
            prepared.discard()
            raise
        return True

    def _rethin_locked(self, read: _Read, retention: Retention, now: float) -> bool:
        """A log already one snapshot: its points are thinned again for ``now`` (the
        last compaction may have planned with an earlier time, e.g. one in the background
        that finished just before this one), the log left as it is. Only the sidecar is
        replaced, atomically; False when nothing changes."""
        side = read.sidecar
        if not side.rows or side.damaged or side.coverage.covered(read.records) != 1:
            return False
        change = _retention.compact_rows(
            side.rows, [], now, retention, document=self.key or self.path
        )
        if change.empty:
            return False
        path = _file_history.sidecar(self.path)
        rows = _retention.apply_change(side.rows, change)
        if rows:
            _replace_file(path, _file_history.encode(rows, side.coverage))
        else:  # every point past the last tier
            os.unlink(path)
        _fsync_dir(os.path.dirname(path))
        return True

    def _read_for_compaction(self, fd: int) -> _Read:
        """The log open as ``fd`` (held by the caller) and its history sidecar. Changes
        nothing of this object: it also runs beside writers."""
        buf = _read_all(fd)
        st = os.fstat(fd)
        scan = parse_log(buf, self.path)
        side_path = _file_history.sidecar(self.path)
        try:
            side = _file_history.read(side_path)
        except YStoreCorruptError as exc:
            # A damaged history must not keep the log from being compacted (it would grow
            # and slow loading down): the compaction starts a new one in its place.
            self.log.warning("%s; a new history replaces it", exc)
            identity = _file_history.current_identity(side_path)
            side = _file_history.Sidecar([], _file_history.Coverage(), identity, damaged=True)
        return _Read((st.st_dev, st.st_ino), scan.intact_end, scan.records, side)

    def _prepare(
        self,
        read: _Read,
        retention: Retention,
        now: float,
        name: str | None,
        saved_by: str | None,
    ) -> _Prepared:
        """Squash, plan the history points and write both new files beside the old ones
        (fsynced, not yet in place). CPU and disk work, under no lock of the caller's."""
        records = read.records
        key = self.key or self.path
        rows = read.sidecar.rows
        covered = (read.sidecar.coverage.covered(records) or 0) if rows else 0
        change = _retention.compact_rows(
            rows,
            _retention.new_points(records[covered:]),
            now,
            retention,
            name=name,
            saved_by=saved_by,
            document=key,
        )
        new_rows = _retention.apply_change(rows, change)
        squashed, clean = compaction.squash([record[0] for record in records], key, self.path)
        _update, metadata, timestamp = records[-1]
        snapshot = (squashed, metadata, timestamp)
        folder, base = os.path.split(self.path)
        unique = f"{os.getpid()}.{os.urandom(4).hex()}"
        log_tmp = os.path.join(folder, f".{base}.{unique}{_TMP_SUFFIX}")
        sidecar_tmp = None
        try:
            _write_new(log_tmp, HEADER + encode_record(*snapshot))
            if new_rows:
                coverage = _file_history.Coverage(
                    _file_history.digest(snapshot),
                    _file_history.digest(records[0]),
                    len(records),
                    clean,
                )
                sidecar_tmp = os.path.join(folder, f".{base}.history.{unique}{_TMP_SUFFIX}")
                _write_new(sidecar_tmp, _file_history.encode(new_rows, coverage))
        except BaseException:
            _Prepared(read, log_tmp, sidecar_tmp, timestamp).discard()
            raise
        return _Prepared(read, log_tmp, sidecar_tmp, timestamp)

    def _commit(self, fd: int, prepared: _Prepared) -> None:
        """Put a prepared compaction in place; the caller holds the log exclusively as
        ``fd`` and checked that it only grew since the read. The records appended since are
        copied after the snapshot; the sidecar is renamed first, the log second (see
        ``_file_history``), one fsync of the folder makes both durable."""
        extra = _read_all(fd, prepared.read.size)
        if extra:
            with open(prepared.log_tmp, "ab") as out:
                out.write(extra)
                out.flush()
                os.fsync(out.fileno())
        side = _file_history.sidecar(self.path)
        if prepared.read.sidecar.damaged:  # kept beside, as every damaged file is
            os.rename(side, copy_name(side))
        if prepared.sidecar_tmp is not None:
            os.replace(prepared.sidecar_tmp, side)
        elif prepared.read.sidecar.identity is not None and not prepared.read.sidecar.damaged:
            os.unlink(side)  # no point left (history_retention = 0)
        os.replace(prepared.log_tmp, self.path)
        _fsync_dir(os.path.dirname(self.path))
        st = os.stat(self.path)
        self.close_fd()  # points at the replaced file; writers waiting on it will reopen
        self.verified = (st.st_dev, st.st_ino, st.st_size)
        appended = decode_records(extra, 0, 0, Scan(), self.path).records if extra else []
        self.last_timestamp = appended[-1][2] if appended else prepared.snapshot_timestamp
        self.records = 1
        self.tail_bytes = 0
        self._count(appended, added=True)
        compaction.report("FileYStore")

    def prepare_compaction(self, policy: Policy, now: float) -> _Prepared | None:
        """An automatic compaction's first half (a worker thread, beside writers): read the
        log under a shared lock, then squash and plan with no lock held. None when it is
        not due (or the file is gone)."""
        if self.damaged_copy:
            return None
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            _flock(fd, _SHARED, self.path)
            if not self._is_current(fd):
                return None  # replaced meanwhile: the next threshold tries again
            read = self._read_for_compaction(fd)
        finally:
            os.close(fd)
        tail = read.records[1:]
        if not policy.due(len(tail), sum(len(record[0]) for record in tail)):
            return None
        return self._prepare(read, policy.retention, now, None, None)

    def commit_compaction(self, prepared: _Prepared) -> bool:
        """The second half (the caller holds ``lock``): under the exclusive lock, put it in
        place if the log only grew since it was read and the sidecar is unchanged; else
        False (discarded: the caller starts again)."""
        self._kept = None
        try:
            fd = self._open_locked()
            try:
                self._check_before_append(fd)
                st = os.fstat(fd)
                side = _file_history.sidecar(self.path)
                if (
                    (st.st_dev, st.st_ino) != prepared.read.identity
                    or st.st_size < prepared.read.size
                    or _file_history.current_identity(side) != prepared.read.sidecar.identity
                ):
                    prepared.discard()
                    return False
                self._commit(fd, prepared)
                return True
            finally:
                if self.fd is not None:
                    _flock(self.fd, _UNLOCK)
        except BaseException as exc:
            prepared.discard()
            if isinstance(exc, OSError):
                raise _os_error(exc, self.path, "compacting the ystore log") from exc
            raise

    def read_history(self) -> StoredHistory:
        """The retained points and the log records after them, as one consistent pair (the
        log is read again if a compaction replaced it meanwhile)."""
        for _attempt in range(5):
            records = self.load()
            known = self.verified
            side = _file_history.read(_file_history.sidecar(self.path))
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                st = None
            if known is not None and st is not None and (st.st_dev, st.st_ino) != known[:2]:
                continue  # compacted between the two reads
            _file_history.validate(side.rows, _file_history.sidecar(self.path))
            covered = (side.coverage.covered(records) or 0) if side.rows else 0
            return StoredHistory(_retention.points_of(side.rows), records[covered:], 0)
        raise YStoreError(
            "the document kept being compacted while its history was read (5 attempts)",
            path=self.path,
            hint="nothing is wrong with it; try again",
        )

    def delete_version(self, name: str) -> None:
        """Remove a version's name, under the exclusive lock (``VersionNotFound``)."""
        self._refuse_copy("changed")
        side = _file_history.sidecar(self.path)
        if not os.path.exists(self.path):
            raise _retention.VersionNotFound(name)
        try:
            self._open_locked()
            try:
                found = _file_history.read(side)
                seq = max((row.seq for row in found.rows), default=0) + 1
                change = _retention.rename_version(found.rows, name, None, seq)
                rows = _retention.apply_change(found.rows, change)
                _replace_file(side, _file_history.encode(rows, found.coverage), ".history.tmp")
                _fsync_dir(os.path.dirname(self.path))
            finally:
                if self.fd is not None:
                    _flock(self.fd, _UNLOCK)
        except OSError as exc:
            raise _os_error(exc, side, "changing the document's history") from exc

    def delete(self) -> None:
        self._kept = None
        self._refuse_copy("deleted")
        try:
            if os.path.exists(self.path):
                self._open_locked()
                os.unlink(self.path)
                self.close_fd()  # releases the lock: waiting writers find the file gone
                _fsync_dir(os.path.dirname(self.path))
        except OSError as exc:
            self.close_fd()
            raise _os_error(exc, self.path, "deleting the ystore log") from exc
        self.verified = None
        self.last_timestamp = None


#: The open log files of the process, by real path (one per file, shared by its stores).
_LOGS: SharedMap[str, _LogFile] = SharedMap()


# ---------------------------------------------------------------------- paths


def _resolve(path: str, root_dir: str | None) -> str:
    """The absolute file of document ``path``; refuse paths that leave ``root_dir``."""
    if "\x00" in path:
        raise YStoreInvalidPath("a document path cannot contain a NUL character", path=repr(path))
    if root_dir is None:
        return os.path.abspath(path)
    root = os.path.realpath(os.path.expanduser(root_dir))
    if os.path.isabs(path):  # ("~" is not expanded: "~/x" is a folder named "~")
        raise YStoreInvalidPath(
            f"a document path must be relative to the store's folder {root}",
            path=path,
        )
    target = os.path.normpath(os.path.join(root, path))
    real = os.path.realpath(target)  # a symlink inside the root must not lead out of it
    for candidate in (target, real):
        if candidate == root or os.path.commonpath([root, candidate]) != root:
            raise YStoreInvalidPath(f"document path leaves the store's folder {root}", path=path)
    if path.endswith(("/", os.sep)) or os.path.basename(target) in ("", ".", ".."):
        raise YStoreInvalidPath("a document path must name a file", path=path)
    return target


# ---------------------------------------------------------------------- stores


class FileYStore(BaseYStore):
    """One document per file, in ypy-websocket's ``VERSION:2`` log format.

    ``path`` is the document's file: as given when ``root_dir`` is unset (the seed's
    behaviour), else relative to ``root_dir``, which it may not leave.
    """

    root_dir = Unicode(
        None,
        allow_none=True,
        config=True,
        help="""Folder holding the document files. When set, a document path is relative
        to it and may not leave it ('..', absolute paths). Unset: paths are used as given.""",
    )
    document_ttl = Seconds(
        None,
        allow_none=True,
        config=True,
        help="""Seconds of idleness after which a document's history is squashed into one
        update before the next write (None: keep the whole history). Alias:
        squash_after_inactivity_of.""",
    )
    squash_after_inactivity_of = upstream_names.ttl_alias()  # pycrdt-store's name
    compact_after_updates = Count(
        1000,
        allow_none=True,
        config=True,
        help="""Compact a document's log (its snapshot replaces the records before it) once
        this many updates follow the snapshot, so that loading costs the document's size,
        not its history. None or 0: never by count.""",
    )
    compact_after_bytes = Count(
        1024 * 1024,
        allow_none=True,
        config=True,
        help="""Compact a document's log once the updates after its snapshot hold this many
        bytes. None or 0: never by size.""",
    )

    @validate("root_dir")
    def _check_root_dir(self, proposal: Any) -> str | None:
        value = proposal["value"]
        if value is None:
            return None
        if not value or "\x00" in value:
            raise TraitError(f"root_dir must be a non-empty folder path without NUL, got {value!r}")
        ancestor = os.path.abspath(os.path.expanduser(value))
        while not os.path.exists(ancestor):
            ancestor = os.path.dirname(ancestor)
        if not os.path.isdir(ancestor):
            raise TraitError(f"root_dir {value!r} cannot be used as a folder: {ancestor} is a file")
        return value

    def __init__(self, path: str, metadata_callback: Any = None, log: Any = None, **kwargs: Any):
        super().__init__(path, metadata_callback=metadata_callback, log=log, **kwargs)
        upstream_names.apply(self)
        self._file = _resolve(self.path, self._root()) if self.path is not None else None
        self._logfile: _LogFile | None = None

    @classmethod
    def default_settings(cls, server_root: str) -> dict[str, Any]:
        return {"root_dir": os.path.join(server_root, DEFAULT_FOLDER)}

    def location(self) -> str:
        return f"c.{type(self).__name__}.root_dir = {self._root()!r}"

    def missing_location(self) -> str | None:
        root = self._root()
        return root if root and not os.path.isdir(os.path.expanduser(root)) else None

    def _root(self) -> str | None:
        return self.root_dir

    @observe("root_dir")
    def _root_changed(self, change: Any) -> None:
        if hasattr(self, "_file") and self.path is not None:
            if self._logfile is not None:
                raise YStoreError("cannot change root_dir of a running store", path=self._file)
            self._file = _resolve(self.path, self._root())

    @property
    def file_path(self) -> Path:
        """The document's file on disk."""
        return Path(self._file if self._file is not None else self._document())

    # -- lifecycle hooks

    async def _open(self) -> None:
        self._policy = Policy.of(self)
        if self._file is None:  # a backend handle: no log of its own
            return
        path = os.path.realpath(self._file)
        logfile = self._logfile = _LOGS.acquire(path, lambda: _LogFile(path, self.log))
        logfile.key = logfile.key or self.path
        async with logfile.lock:
            if logfile.verified is None:  # check the header, set a torn tail aside
                await threads.run_sync(partial(logfile.load, keep=True))
            if logfile.due(self._policy):  # e.g. a long log written before compaction
                self._want_compaction()

    async def _compact_once(self) -> None:
        try:
            await self._compact_automatically()
        except Exception as exc:  # the log is intact; the next threshold retries
            self.log.error("automatic compaction of %r failed: %s", self.path, exc, exc_info=True)

    async def _compact_automatically(self) -> None:
        logfile = self._logfile
        if logfile is None:
            return
        for _attempt in range(5):
            prepared = await threads.run_sync(
                logfile.prepare_compaction, self._policy, self.clock()
            )
            if prepared is None:
                return
            async with logfile.lock:
                await self._flush(logfile)
                if await threads.run_sync(logfile.commit_compaction, prepared):
                    return

    async def _close(self) -> None:
        logfile, self._logfile = self._logfile, None
        if logfile is None:
            return
        try:
            if logfile.queue:  # writes whose writers were cancelled while waiting
                async with logfile.lock:
                    await self._flush(logfile)
        finally:
            if _LOGS.release(logfile.path, logfile):
                logfile.close_fd()

    # -- the log

    async def write(self, data: bytes, *, metadata: bytes | None = None) -> None:
        await self._ensure_running()
        data = self._checked_update(data)
        metadata = await self._metadata_for(metadata)
        logfile = self._logfile
        assert logfile is not None
        timestamp = self.clock()
        pending = _Pending(encode_record(data, metadata, timestamp), timestamp, len(data))
        logfile.queue.append(pending)
        async with logfile.lock:
            if not pending.done:
                await self._flush(logfile)
        if pending.error is not None:
            error = copy.copy(pending.error)  # each writer raises its own instance
            raise error from pending.error.__cause__

    async def _flush(self, logfile: _LogFile) -> None:
        """Write everything queued as one batch (the caller holds the lock)."""
        batch, logfile.queue = logfile.queue, []
        if not batch:
            return
        try:
            due = await threads.run_sync(
                logfile.append, batch, self._policy, batch[-1].timestamp
            )
        except Exception as exc:
            for pending in batch:
                pending.error = exc
        else:
            if due:
                self._want_compaction()
        finally:
            for pending in batch:
                pending.done = True

    async def _records(self) -> list[Record]:
        await self._ensure_running()
        logfile = self._logfile
        assert logfile is not None
        async with logfile.lock:
            await self._flush(logfile)
            return await threads.run_sync(logfile.load_kept)

    async def _load(self) -> list[bytes]:
        """Every record's update; whether the first is the snapshot our last compaction
        wrote, and a clean one, is told by the sidecar's first bytes (then loading checks
        only its structs, or nothing of it). One hop to a worker thread for both."""
        await self._ensure_running()
        logfile = self._logfile
        assert logfile is not None

        def load() -> tuple[list[Record], tuple[bool, bool]]:
            records = logfile.load_kept()
            kind = _file_history.snapshot_kind(logfile.path, records[0]) if records else (False, False)
            return records, kind

        async with logfile.lock:
            await self._flush(logfile)
            records, (self._head_is_snapshot, self._head_is_clean) = (
                await threads.run_sync(load)
            )
        if not records:
            raise YDocNotFound(self.path)
        return [update for update, _metadata, _timestamp in records]

    async def read(self) -> AsyncIterator[Record]:
        records = await self._records()
        if not records:
            raise YDocNotFound(self.path)
        for record in records:
            yield record

    # -- administration

    async def compact(self) -> None:
        await self._ensure_running()
        logfile = self._logfile
        assert logfile is not None
        async with logfile.lock:
            await self._flush(logfile)
            await threads.run_sync(
                logfile.compact, self._policy.retention, self.clock()
            )

    async def read_history(self) -> StoredHistory:
        await self._ensure_running()
        logfile = self._logfile
        assert logfile is not None
        async with logfile.lock:
            await self._flush(logfile)
            stored = await threads.run_sync(logfile.read_history)
        if stored.empty:
            raise YDocNotFound(self.path)
        return stored

    async def save_version(self, name: str, saved_by: str | None = None) -> Point:
        await self._ensure_running()
        name = _retention.check_version_name(name)
        logfile = self._logfile
        assert logfile is not None
        async with logfile.lock:
            await self._flush(logfile)
            done = await threads.run_sync(
                logfile.compact, self._policy.retention, self.clock(), name, saved_by
            )
        if not done:
            raise YDocNotFound(self.path)
        stored = await self.read_history()
        return next(point for point in stored.points if point.name == name)

    async def delete_version(self, name: str) -> None:
        await self._ensure_running()
        logfile = self._logfile
        assert logfile is not None
        async with logfile.lock:
            await threads.run_sync(logfile.delete_version, name)

    async def delete(self) -> None:
        from jupyter_ystore.stores.file import attrs as _file_attrs

        await self._ensure_running()
        logfile = self._logfile
        assert logfile is not None
        async with logfile.lock:
            await self._flush(logfile)
            # Attributes and history first: a crash in between may leave the log without
            # them, never them (an id of that history, say) outliving it.
            await threads.run_sync(_file_attrs.remove, _file_attrs.sidecar(logfile.path))
            await threads.run_sync(
                _file_attrs.remove, _file_history.sidecar(logfile.path)
            )
            await threads.run_sync(logfile.delete)

    async def _read_attributes(self) -> dict[str, bytes]:
        """From the sidecar file ``<log>.attrs`` (see ``_file_attrs``)."""
        from jupyter_ystore.stores.file import attrs as _file_attrs

        assert self._logfile is not None
        path = _file_attrs.sidecar(self._logfile.path)
        return await threads.run_sync(_file_attrs.read, path)

    async def _write_attributes(self, values: dict[str, bytes | None]) -> None:
        from jupyter_ystore.stores.file import attrs as _file_attrs

        assert self._logfile is not None
        path = _file_attrs.sidecar(self._logfile.path)
        await threads.run_sync(_file_attrs.update, path, values)

    async def list_documents(self) -> list[DocumentInfo]:
        await self._ensure_running()
        root = self._root()
        if root is None:
            # paths used as given: list this file's folder only (it may be a user's home),
            # naming each document by its absolute path, which opens it again
            folder = os.path.dirname(self._file)
            return await threads.run_sync(_list_folder, folder, self.log, False)
        return await threads.run_sync(_list_folder, os.path.realpath(root), self.log, True)


def _name_in(base: str, path: Any) -> Any:
    """``path`` relative to a TempFileYStore's ``base``: an absolute path inside ``base``
    (e.g. another store's ``path``, which is absolute) becomes relative; anything else is
    returned for ``_resolve`` to check."""
    if not isinstance(path, str) or "\x00" in path or not os.path.isabs(path):
        return path
    target = os.path.normpath(path)
    for folder in {os.path.normpath(os.path.abspath(base)), os.path.realpath(base)}:
        if target != folder and os.path.commonpath([folder, target]) == folder:
            return os.path.relpath(target, folder)
    raise YStoreInvalidPath(
        f"an absolute document path must be inside the store's folder {base}", path=path
    )


def _list_folder(folder: str, log: Any, recursive: bool) -> list[DocumentInfo]:
    """Every ystore log in ``folder``, read without repairing anything.

    Paths are relative to ``folder`` when ``recursive`` (a store root), else absolute.
    """
    found: list[DocumentInfo] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        if not recursive:
            dirnames.clear()
        dirnames.sort()
        for name in sorted(filenames):
            if _TORN_MARK in name or name.endswith(_TMP_SUFFIX) or is_damaged_copy(name):
                continue
            full = os.path.join(dirpath, name)
            try:
                with open(full, "rb") as f:
                    if f.read(len(HEADER_PREFIX)) != HEADER_PREFIX:
                        continue  # not a ystore log
                    f.seek(0)
                    buf = f.read()
                records = parse_log(buf, full).records
            except (OSError, YStoreError) as exc:
                log.warning("ystore log %s cannot be listed: %s", full, exc)
                continue
            found.append(
                DocumentInfo(
                    path=Path(os.path.relpath(full, folder)).as_posix() if recursive else full,
                    updates=len(records),
                    bytes=sum(len(r[0]) for r in records),
                    first_timestamp=records[0][2] if records else None,
                    last_timestamp=records[-1][2] if records else None,
                )
            )
    return found


class TempFileYStore(FileYStore):
    """A FileYStore in a temporary folder made once per class.

    Set ``prefix_dir`` in a subclass to name the folder (``tempfile.mkdtemp(prefix=...)``), or
    ``base_dir`` to choose it. The ``path`` given is relative to ``base_dir`` (or an absolute
    path inside it) and may not leave it; ``store.path`` is then ``base_dir/path``, as in
    ypy-websocket and pycrdt-store. ``root_dir`` does not apply.
    """

    prefix_dir: ClassVar[str | None] = None
    base_dir: ClassVar[str | None] = None
    _made_base_dirs: ClassVar[set[str]] = set()

    def __init__(self, path: str, metadata_callback: Any = None, log: Any = None, **kwargs: Any):
        base = self.get_base_dir()
        name = _name_in(base, path) if path is not None else None
        super().__init__(name, metadata_callback=metadata_callback, log=log, **kwargs)
        if name is not None:
            self.path = str(Path(base) / name)  # the upstreams' value: base_dir/name

    @classmethod
    def default_settings(cls, server_root: str) -> dict[str, Any]:
        return {}  # its own temporary folder

    def _root(self) -> str | None:
        return self.get_base_dir()

    @observe("root_dir")
    def _root_changed(self, change: Any) -> None:
        """Nothing to do: the files live in ``base_dir`` whatever ``root_dir`` says."""

    @classmethod
    def get_base_dir(cls) -> str:
        """The class's folder, made on first use (a subclass gets its own)."""
        base = cls.base_dir
        inherited_temp = "base_dir" not in cls.__dict__ and base in cls._made_base_dirs
        if base is None or inherited_temp:
            base = cls.make_directory()
        return base

    @classmethod
    def make_directory(cls) -> str:
        cls.base_dir = tempfile.mkdtemp(prefix=cls.prefix_dir)
        cls._made_base_dirs.add(cls.base_dir)
        return cls.base_dir
