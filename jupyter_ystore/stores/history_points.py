"""Retained history points, one at a time (``Point``) or as columns (``PointTable``), and
their stored encoding.

A compaction turns every update it replaces into a point (``stores/retention.py``): about
1,000 at a time, thousands when older rows are thinned. As objects (a ``Point`` each, plus
the planner's entry and group for each) that was 3,000 to 12,000 objects the garbage
collector tracks, held while a compaction went from the database thread to a worker thread
and back: long enough to be promoted, so that 48 rooms compacting in the same seconds set
off full collections (17–30 ms pauses of the event loop on a 2-core VM). A ``PointTable``
holds the same points in a few arrays and lists, whatever their number, so the planner and
the row encoder work on columns and a ``Point`` is made only for a reader that asks.
"""

from __future__ import annotations

import math
import zlib
from array import array
from dataclasses import dataclass
from typing import Iterable, Sequence

from jupyter_ystore.core.codec import (
    read_var_bytes,
    read_var_string,
    read_var_uint,
    write_var_string,
    write_var_uint,
)


@dataclass
class Point:
    """One retained point: the document after every update up to ``end``.

    ``delta`` is the merge of the updates since the point before it (None until loaded);
    ``authors`` describe who made them (``describe_metadata``); ``name`` is set when a user
    saved this point as a version (``saved_by`` who), and such a point is never dropped.
    """

    start: float
    end: float
    updates: int
    size: int  # bytes of the updates it summarises (what it cost before merging)
    authors: tuple[str, ...] = ()
    name: str | None = None
    saved_by: str | None = None
    delta: bytes | None = None


class PointTable:
    """Points as columns: the ``i``-th point is ``starts[i]``, ``ends[i]``, ... ``deltas[i]``.

    The numbers live in arrays and the rest in lists of strings, tuples and bytes, so a
    table costs the garbage collector a handful of objects however many points it holds."""

    __slots__ = ("starts", "ends", "updates", "sizes", "authors", "names", "savers", "deltas")

    def __init__(self) -> None:
        self.starts = array("d")
        self.ends = array("d")
        self.updates = array("q")
        self.sizes = array("q")
        self.authors: list[tuple[str, ...]] = []
        self.names: list[str | None] = []
        self.savers: list[str | None] = []
        self.deltas: list[bytes | None] = []

    @classmethod
    def of(cls, points: Iterable[Point]) -> PointTable:
        table = cls()
        for p in points:
            table.append(p.start, p.end, p.updates, p.size, p.authors, p.name, p.saved_by, p.delta)
        return table

    def __len__(self) -> int:
        return len(self.ends)

    def append(
        self,
        start: float,
        end: float,
        updates: int,
        size: int,
        authors: tuple[str, ...] = (),
        name: str | None = None,
        saved_by: str | None = None,
        delta: bytes | None = None,
    ) -> None:
        self.starts.append(start)
        self.ends.append(end)
        self.updates.append(updates)
        self.sizes.append(size)
        self.authors.append(authors)
        self.names.append(name)
        self.savers.append(saved_by)
        self.deltas.append(delta)

    def append_from(self, other: PointTable, i: int) -> None:
        """Copy ``other``'s ``i``-th point to the end of this table."""
        self.append(
            other.starts[i],
            other.ends[i],
            other.updates[i],
            other.sizes[i],
            other.authors[i],
            other.names[i],
            other.savers[i],
            other.deltas[i],
        )

    def slice(self, lo: int, hi: int) -> PointTable:
        """Points ``lo`` to ``hi`` - 1, in columns of their own (changing them changes
        nothing here)."""
        table = PointTable()
        table.starts = self.starts[lo:hi]
        table.ends = self.ends[lo:hi]
        table.updates = self.updates[lo:hi]
        table.sizes = self.sizes[lo:hi]
        table.authors = self.authors[lo:hi]
        table.names = self.names[lo:hi]
        table.savers = self.savers[lo:hi]
        table.deltas = self.deltas[lo:hi]
        return table

    def point(self, i: int) -> Point:
        return Point(
            self.starts[i],
            self.ends[i],
            self.updates[i],
            self.sizes[i],
            self.authors[i],
            self.names[i],
            self.savers[i],
            self.deltas[i],
        )

    def points(self) -> list[Point]:
        return [self.point(i) for i in range(len(self))]

    def with_deltas(self, deltas: bytes) -> PointTable:
        """These points (decoded without deltas) with the deltas blob of their row."""
        table = self.slice(0, len(self))
        table.deltas = decode_deltas(deltas, len(self))
        return table


def quantize(timestamp: float) -> float:
    """A point's time: ``timestamp`` rounded up to the microsecond (stored as an integer
    count of microseconds; rounding up keeps every update a point holds at or before it)."""
    return math.ceil(timestamp * 1_000_000) / 1_000_000


def micros(timestamp: float) -> int:
    return round(timestamp * 1_000_000)


_HAS_START, _HAS_NAME, _HAS_SAVER, _BACKWARDS, _MANY = 1, 2, 4, 8, 16
_FORMAT = 1
_FORMAT_COMPRESSED = 2  # the same, zlib-compressed after the format number
#: The first byte of a compressed deltas blob. An uncompressed one starts with the length of
#: its first delta, never 0 unless that delta is empty (then it is always compressed).
_COMPRESSED = b"\x00"
#: Points and deltas shorter than this are stored as they are (a few points gain nothing).
_COMPRESS_FROM = 512


_SMALL = [bytes((i,)) for i in range(128)]


def _uint(n: int) -> bytes:
    """``write_var_uint`` with the one- and two-byte cases inline (compaction encodes a few
    per point, thousands of points at a time)."""
    if n < 128:
        return _SMALL[n]
    if n < 16384:
        return bytes((0x80 | (n & 0x7F), n >> 7))
    return write_var_uint(n)


def _table(points: Sequence[Point] | PointTable) -> PointTable:
    return points if isinstance(points, PointTable) else PointTable.of(points)


def encode_points(points: Sequence[Point] | PointTable) -> bytes:
    """Points' metadata, compactly (a keystroke's point: ~6 bytes): an author table, the
    first end in microseconds, then per point flags, the end as a difference from the one
    before, the start when it differs, counts and author indexes."""
    table = _table(points)
    authors: dict[str, int] = {}
    for who in table.authors:
        for author in who:
            if author not in authors:
                authors[author] = len(authors)
    previous = micros(table.ends[0]) if len(table) else 0
    out = [_uint(_FORMAT), _uint(len(authors))]
    out += [write_var_string(author) for author in authors]
    out += [write_var_uint(previous), write_var_uint(len(table))]
    append = out.append
    columns = zip(
        table.starts, table.ends, table.updates, table.sizes, table.authors, table.names,
        table.savers,
    )  # fmt: skip
    for start_s, end_s, updates, size, who, name, saved_by in columns:
        end = round(end_s * 1_000_000)
        start = round(start_s * 1_000_000) if start_s != end_s else end
        flags = (
            (_HAS_START if start != end else 0)
            | (_HAS_NAME if name is not None else 0)
            | (_HAS_SAVER if saved_by is not None else 0)
            | (_BACKWARDS if end < previous else 0)
            | (_MANY if updates != 1 else 0)
        )
        append(_SMALL[flags])
        append(_uint(abs(end - previous)))
        previous = end
        if flags & _HAS_START:
            append(_uint(end - start))
        if flags & _MANY:
            append(_uint(updates))
        append(_uint(size))
        append(_uint(len(who)))
        for author in who:
            append(_uint(authors[author]))
        if name is not None:
            append(write_var_string(name))
        if saved_by is not None:
            append(write_var_string(saved_by))
    body = b"".join(out[1:])
    if len(body) >= _COMPRESS_FROM:  # a compaction's row of keystrokes: about 2× smaller
        packed = zlib.compress(body, 6)
        if len(packed) < len(body):
            return _uint(_FORMAT_COMPRESSED) + packed
    return out[0] + body


def encode_deltas(points: Sequence[Point] | PointTable) -> bytes:
    """The deltas of a row, length-prefixed, zlib-compressed when that saves bytes.

    Keystroke deltas repeat their client id and structure: a row of a compaction's 1,000
    updates shrinks about 4× (measured on the benchmark's typing stream), which is most of a
    store's size while the every-update tier holds a burst of typing. Only compactions write
    rows (in a worker thread) and only history readers read deltas, so loading never pays."""
    out = []
    for delta in _table(points).deltas:
        if delta is None:
            raise ValueError("a history row is stored with every delta")
        out.append(_uint(len(delta)))
        out.append(delta)
    raw = b"".join(out)
    ambiguous = raw[:1] == _COMPRESSED  # an empty first delta: stored compressed whatever
    if ambiguous or len(raw) >= _COMPRESS_FROM:
        packed = zlib.compress(raw, 6)
        if ambiguous or len(packed) + 1 < len(raw):
            return _COMPRESSED + packed
    return raw


def decode_table(data: bytes, deltas: bytes | None = None) -> PointTable:
    """``encode_points`` read back as columns, with the deltas of ``encode_deltas`` when
    given. ValueError for bytes we did not write."""
    pos = 0
    version, pos = read_var_uint(data, pos)
    if version == _FORMAT_COMPRESSED:
        try:
            data, pos = zlib.decompress(data[pos:]), 0
        except zlib.error as exc:
            raise ValueError(f"history row points cannot be decompressed ({exc})") from None
    elif version != _FORMAT:
        raise ValueError(f"unknown history row format {version}")
    count, pos = read_var_uint(data, pos)
    authors = []
    for _ in range(count):
        author, pos = read_var_string(data, pos)
        authors.append(author)
    alone = [(author,) for author in authors]  # one tuple per author, shared by its points
    previous, pos = read_var_uint(data, pos)
    count, pos = read_var_uint(data, pos)
    table = PointTable()
    for _ in range(count):
        flags, pos = read_var_uint(data, pos)
        step, pos = read_var_uint(data, pos)
        end = previous - step if flags & _BACKWARDS else previous + step
        previous = end
        start = end
        if flags & _HAS_START:
            step, pos = read_var_uint(data, pos)
            start = end - step
        updates = 1
        if flags & _MANY:
            updates, pos = read_var_uint(data, pos)
        size, pos = read_var_uint(data, pos)
        n, pos = read_var_uint(data, pos)
        if n == 1:
            index, pos = read_var_uint(data, pos)
            who: tuple[str, ...] = alone[index]
        else:
            indexes = []
            for _ in range(n):
                index, pos = read_var_uint(data, pos)
                indexes.append(authors[index])
            who = tuple(indexes)
        name = saved_by = None
        if flags & _HAS_NAME:
            name, pos = read_var_string(data, pos)
        if flags & _HAS_SAVER:
            saved_by, pos = read_var_string(data, pos)
        table.append(start / 1_000_000, end / 1_000_000, updates, size, who, name, saved_by)
    if pos != len(data):
        raise ValueError("trailing bytes after a history row")
    if deltas is not None:
        table.deltas = decode_deltas(deltas, count)
    return table


def decode_points(data: bytes, deltas: bytes | None = None) -> list[Point]:
    """``encode_points`` read back as ``Point`` objects (see ``decode_table``)."""
    return decode_table(data, deltas).points()


def decode_deltas(deltas: bytes, count: int) -> list[bytes | None]:
    """The ``count`` deltas of an ``encode_deltas`` blob. ValueError when they do not match."""
    if deltas[:1] == _COMPRESSED:
        try:
            deltas = zlib.decompress(deltas[1:])
        except zlib.error as exc:
            raise ValueError(f"history row deltas cannot be decompressed ({exc})") from None
    pos = 0
    out: list[bytes | None] = []
    for _ in range(count):
        delta, pos = read_var_bytes(deltas, pos)
        out.append(delta)
    if pos != len(deltas):
        raise ValueError("history row deltas do not match its points")
    return out
