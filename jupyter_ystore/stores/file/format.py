"""The ``VERSION:2`` log format: ypy-websocket's and pycrdt-store's, so their files open in
place. One module for everything that reads or writes it (``FileYStore``, its salvage of a
damaged log, ``jupyter ystore verify``), so that they agree on what is intact::

    VERSION:2\\n
    then per update: varbytes(update) varbytes(metadata) varbytes(8-byte LE double timestamp)

A crash tears only the LAST record, which ends at an arbitrary byte. A file that cannot be
decoded somewhere but still ends like a record (a plausible timestamp) is damaged in the
middle: intact records follow, and ``find_intact`` finds where decoding resumes.
Pure functions of bytes: nothing here opens, locks or changes a file.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

from jupyter_ystore.core import ydoc as _ydoc
from jupyter_ystore.core.codec import TruncatedError, read_var_uint, write_var_bytes
from jupyter_ystore.errors import YStoreCorruptError, YStoreVersionError

Record = tuple[bytes, bytes, float]

HEADER_PREFIX = b"VERSION:"
VERSION = 2
HEADER = b"VERSION:%d\n" % VERSION
TIMESTAMP = struct.Struct("<d")
#: How far past damage decoding tries to resume (bytes).
RESYNC_WINDOW = 1 << 20


def encode_record(update: bytes, metadata: bytes, timestamp: float) -> bytes:
    """One log record: the three length-prefixed fields."""
    return (
        write_var_bytes(update)
        + write_var_bytes(metadata)
        + write_var_bytes(TIMESTAMP.pack(timestamp))
    )


@dataclass
class Scan:
    """What a log file holds: its intact records and where the intact part ends."""

    records: list[Record] = field(default_factory=list)
    intact_end: int = 0  # byte offset just after the header / the last intact record
    size: int = 0
    tail: bytes = b""  # the torn bytes after intact_end, if any

    @property
    def torn(self) -> bool:
        return self.intact_end < self.size


def _looks_like_record_end(buf: bytes, start: int) -> bool:
    """Whether ``buf`` ends the way an intact record does (a plausible 8-byte timestamp).

    A crash tears the LAST record, so a torn tail ends at an arbitrary byte. If instead the
    file still ends in a well-formed timestamp field, intact records follow the place where
    decoding failed: the damage is in the middle and truncating would throw good data away.
    """
    if len(buf) - 9 < start or buf[-9] != 8:
        return False
    (timestamp,) = TIMESTAMP.unpack(buf[-8:])
    return math.isfinite(timestamp) and 1e8 < timestamp < 1e11


def parse_log(buf: bytes, path: str, base: int = 0) -> Scan:
    """Decode a log file. Raise for unknown versions and damage before the tail.

    ``buf`` is the file's content from byte ``base`` on: the whole file (``base`` 0) or the
    part after records already checked (``base`` then falls on a record boundary).
    """
    scan = Scan(size=base + len(buf), intact_end=base)
    if base:
        return decode_records(buf, 0, base, scan, path)
    if not buf:
        return scan
    newline = buf.find(b"\n", 0, 64)
    if newline < 0:
        if HEADER.startswith(buf):  # a crash while the file was being created
            return scan
        raise YStoreVersionError(
            "not a ystore log: no 'VERSION:' header line",
            path=path,
            hint="the file was left untouched; move it away if it is not a document store",
        )
    header = buf[: newline + 1]
    if header != HEADER:
        found = header[len(HEADER_PREFIX) : -1] if header.startswith(HEADER_PREFIX) else None
        what = (
            f"format version {found.decode('ascii', 'replace')!r}"
            if found is not None
            else "no 'VERSION:' header line"
        )
        raise YStoreVersionError(
            f"cannot read this ystore log: {what}, this code reads version {VERSION}",
            path=path,
            hint="the file was left untouched; open it with the software that wrote it, "
            "or move it away to start this document afresh",
        )
    scan.intact_end = len(header)
    return decode_records(buf, len(header), 0, scan, path)


def decode_records(buf: bytes, pos: int, base: int, scan: Scan, path: str) -> Scan:
    """Decode records from ``pos`` on (inlined: loading is bound by this loop)."""
    end = len(buf)
    records = scan.records
    append = records.append
    unpack_from = TIMESTAMP.unpack_from
    while pos < end:
        start = pos
        try:
            size = buf[pos]
            if size < 0x80:
                pos += 1
            else:
                size, pos = read_var_uint(buf, pos)
            update = buf[pos : pos + size]
            pos += size
            if pos >= end:
                raise TruncatedError("no metadata field")
            size = buf[pos]
            if size < 0x80:
                pos += 1
            else:
                size, pos = read_var_uint(buf, pos)
            metadata = buf[pos : pos + size]
            pos += size
            if pos + 9 > end:
                raise TruncatedError("no complete timestamp field")
            if buf[pos] != 8:
                raise ValueError("a timestamp field is not 8 bytes")
            timestamp = unpack_from(buf, pos + 1)[0]
            pos += 9
        except ValueError:  # cut short (TruncatedError), or bytes we never wrote
            if _looks_like_record_end(buf, start):
                raise _corrupt(path, base + start) from None
            # The last record is torn (a crash mid-write; zeros the file system added
            # after a power loss): the caller sets it aside.
            return scan
        append((update, metadata, timestamp))
        scan.intact_end = base + pos
    return scan


def _corrupt(path: str, offset: int) -> YStoreCorruptError:
    return YStoreCorruptError(
        f"damaged ystore log: the record at byte {offset} cannot be decoded and intact "
        "records follow it",
        path=path,
        hint="the file was left untouched; restore it from a backup, or move it away to "
        "rebuild the document from its notebook file (edits not saved to the notebook are "
        "then lost)",
    )


@dataclass
class Intact:
    """The intact records of a log whose header was checked, torn or damaged as it may be."""

    before: list[Record] = field(default_factory=list)  # from the header to ``stop``
    stop: int = 0  # where decoding stopped: the end of the file when it all decodes
    damaged: bool = False  # intact records follow ``stop`` (else: at most a torn tail)
    resumed_at: int | None = None  # where records decode again, to the end of the file
    after: list[Record] = field(default_factory=list)

    @property
    def records(self) -> list[Record]:
        return self.before + self.after


def find_intact(buf: bytes, path: str) -> Intact:
    """The records before damage, and after it from an offset (within ``RESYNC_WINDOW``)
    where records decode one after the other to the very end of the file, each with a
    plausible time and a Yjs update.

    The first such offset can be a false start inside the damaged record: a Yjs decoder
    ignores trailing bytes, so a "record" made of the damaged record's end and the whole
    next one can pass, and would lose that next record. A false first record spans the
    true boundaries after it, so the offsets up to its end are tried too and the chain
    with the most records wins (the earliest on a tie)."""
    scan = Scan(size=len(buf), intact_end=len(HEADER))
    found = Intact(before=scan.records)
    try:
        decode_records(buf, len(HEADER), 0, scan, path)
    except YStoreCorruptError:
        found.damaged = True
    found.stop = scan.intact_end
    if not found.damaged:
        return found
    limit = min(len(buf), found.stop + RESYNC_WINDOW)
    offset = found.stop + 1
    while offset < limit:
        chain = _chain(buf, offset)
        if chain and len(chain) > len(found.after):
            found.resumed_at, found.after = offset, chain
            limit = min(limit, _first_record_end(buf, offset))
        offset += 1
    return found


def _first_record_end(buf: bytes, pos: int) -> int:
    """Where the record at ``pos`` (one ``_chain`` decoded) ends."""
    for _field in range(2):
        size, pos = read_var_uint(buf, pos)
        pos += size
    return pos + 9


def _chain(buf: bytes, pos: int) -> list[Record] | None:
    """Records decoding from ``pos`` exactly to the end of ``buf``, each plausible."""
    records: list[Record] = []
    end = len(buf)
    while pos < end:
        try:
            size, pos = read_var_uint(buf, pos)
            update = buf[pos : pos + size]
            pos += size
            size, pos = read_var_uint(buf, pos)
            metadata = buf[pos : pos + size]
            pos += size
        except ValueError:  # (TruncatedError too)
            return None
        if pos + 9 > end or buf[pos] != 8:
            return None
        (timestamp,) = TIMESTAMP.unpack_from(buf, pos + 1)
        pos += 9
        if not (1e8 < timestamp < 1e11) or not _ydoc.is_valid_update(update):
            return None
        records.append((update, metadata, timestamp))
    return records or None
