"""FileYStore retained history: a sidecar file beside each log, ``<log file>.history``.

Beside the log rather than in it, for the reasons of ``attrs``: ypy-websocket 0.12.4 and
pycrdt-store 0.1.5 read a log as a plain run of update records, and loading must not read
history. Format::

    YSTORE-HISTORY:1\\n
    varbytes(coverage) then per row: varuint(seq) float64(first) float64(last)
                                     varbytes(points) varbytes(deltas)

(rows as ``retention.Row``; their times in the clear, so that a compaction plans from them
without decoding the points of rows it leaves alone). The file is only ever replaced whole (temporary file, fsync,
rename), while the compaction holds the log exclusively, so a reader sees a whole file.

**Which log records the points cover.** A log has no record ids, so the sidecar says it by
content: ``Coverage.first`` is a digest of the snapshot record the compaction wrote as the
log's first record (the points cover it, and only it), and ``previous``/``count`` the
digest of the log's first record *before* that compaction and how many records it covered
there. A compaction renames the new sidecar into place first and the new log second; a
crash in between leaves the new sidecar beside the old log, whose first record matches
``previous``: the points cover its first ``count`` records, and the records after them
(appended meanwhile) are the raw tail. So after a crash at any point the pair reads as the
old state or the new one, never as a mix. A log that matches neither (rewritten by another
library) is taken as not covered at all: its records come after the points, which costs a
duplicate in listings, never content (merging known updates again changes nothing).

The functions here block: run them in a worker thread.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass

from jupyter_ystore.core.codec import read_var_bytes, read_var_uint, write_var_bytes, write_var_uint
from jupyter_ystore.errors import YStoreCorruptError
from jupyter_ystore.stores.file.format import HEADER_PREFIX, Record, encode_record
from jupyter_ystore.stores.retention import Row

SUFFIX = ".history"
MAGIC = b"YSTORE-HISTORY:1\n"


def sidecar(log_path: str) -> str:
    """The history file of the document whose log is ``log_path``."""
    return log_path + SUFFIX


def digest(record: Record) -> bytes:
    """A record's identity in a log (its encoded bytes, hashed)."""
    return hashlib.blake2b(encode_record(*record), digest_size=16).digest()


@dataclass(frozen=True)
class Coverage:
    """Which records of the log the points cover (see the module's docstring)."""

    first: bytes = b""
    previous: bytes = b""
    count: int = 0
    clean: bool = False  # the snapshot holds nothing that waits for missing updates

    def covered(self, records: list[Record]) -> int | None:
        """How many leading ``records`` the points hold; None: this log is not theirs."""
        if not records:
            return 0
        head = digest(records[0])
        if self.first and head == self.first:
            return 1
        if self.previous and head == self.previous:
            return min(self.count, len(records))
        return None

    def encode(self) -> bytes:
        return (
            write_var_bytes(self.first)
            + write_var_bytes(self.previous)
            + write_var_uint(self.count)
            + write_var_uint(int(self.clean))  # added later: older readers stop before it
        )

    @classmethod
    def decode(cls, data: bytes) -> Coverage:
        first, pos = read_var_bytes(data, 0)
        previous, pos = read_var_bytes(data, pos)
        count, pos = read_var_uint(data, pos)
        clean = False
        if pos < len(data):  # written before the flag existed: not known to be clean
            flag, pos = read_var_uint(data, pos)
            clean = flag == 1
        return cls(first, previous, count, clean)


def snapshot_coverage(log_path: str) -> Coverage | None:
    """The coverage of the log's sidecar (``first``: the digest of the snapshot the last
    compaction wrote), read from the file's first bytes only: loading reads no history.
    None without a readable sidecar."""
    try:
        with open(sidecar(log_path), "rb") as file:
            head = file.read(len(MAGIC) + 80)  # the coverage is at most ~45 bytes
    except OSError:
        return None
    if not head.startswith(MAGIC):
        return None
    try:
        data, _pos = read_var_bytes(head, len(MAGIC))
        coverage = Coverage.decode(data)
    except Exception:  # cut short or damaged: not known, so the load checks it all
        return None
    return coverage if coverage.first else None


def snapshot_kind(log_path: str, record: Record) -> tuple[bool, bool]:
    """Whether ``record`` (the log's first) is the snapshot our last compaction wrote, and
    whether that snapshot is clean (a load then need not check it)."""
    coverage = snapshot_coverage(log_path)
    if coverage is None or digest(record) != coverage.first:
        return False, False
    return True, coverage.clean


@dataclass
class Sidecar:
    """A history file as read: rows with deltas, what they cover, and the file's identity
    (compaction checks it did not change before replacing it)."""

    rows: list[Row]
    coverage: Coverage
    identity: tuple[int, int, int, int] | None  # dev, inode, size, mtime_ns; None: no file
    damaged: bool = False  # unreadable: set aside (never deleted) when replaced


_TIMES = struct.Struct("<dd")


def encode(rows: list[Row], coverage: Coverage) -> bytes:
    out = [MAGIC, write_var_bytes(coverage.encode())]
    for row in sorted(rows, key=lambda r: r.seq):
        out += [
            write_var_uint(row.seq),
            _TIMES.pack(row.first_ts, row.last_ts),
            write_var_bytes(row.meta),
            write_var_bytes(row.deltas or b""),
        ]
    return b"".join(out)


def parse(data: bytes, path: str) -> tuple[list[Row], Coverage]:
    """Rows as stored (points decoded on first use; ``validate`` decodes them all)."""
    if not data:
        return [], Coverage()
    if data.startswith(HEADER_PREFIX) or not data.startswith(MAGIC):
        raise _damaged(path, "not a ystore history file (unknown header)")
    rows = []
    try:
        raw, pos = read_var_bytes(data, len(MAGIC))
        coverage = Coverage.decode(raw)
        while pos < len(data):
            seq, pos = read_var_uint(data, pos)
            if pos + _TIMES.size > len(data):
                raise ValueError("a row cut short")
            first, last = _TIMES.unpack_from(data, pos)
            pos += _TIMES.size
            meta, pos = read_var_bytes(data, pos)
            deltas, pos = read_var_bytes(data, pos)
            rows.append(Row(seq, first, last, 0, meta, deltas))
    except (ValueError, IndexError) as exc:
        raise _damaged(path, f"damaged ystore history file ({exc})") from None
    return rows, coverage


def validate(rows: list[Row], path: str) -> None:
    """Decode every row's points (a damaged row: ``YStoreCorruptError`` naming the file)."""
    try:
        for row in rows:
            row.table  # noqa: B018  (decoded and kept, as columns)
    except (ValueError, IndexError, UnicodeDecodeError) as exc:
        raise _damaged(path, f"damaged ystore history file ({exc})") from None


def read(path: str) -> Sidecar:
    """The history file ``path`` (empty without one)."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
    except FileNotFoundError:
        return Sidecar([], Coverage(), None)
    rows, coverage = parse(data, path)
    return Sidecar(rows, coverage, identity(st))


def identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def current_identity(path: str) -> tuple[int, int, int, int] | None:
    try:
        return identity(os.stat(path))
    except FileNotFoundError:
        return None


def _damaged(path: str, message: str) -> YStoreCorruptError:
    return YStoreCorruptError(
        message,
        path=path,
        hint="the document itself is intact (its log is another file); move this file "
        "away to drop its older history, or restore it from a backup",
    )
