"""History that outlives compaction: retention tiers and the chain of retained points.

Compaction replaces a document's updates by one snapshot, which keeps loading fast but
would forget every earlier state. So before the updates go, compaction turns them into
**retained points** kept outside the load path: each point is the document at one moment
(the end of the updates it summarises), stored as the *delta* from the point before it: the
merge of those updates (``merge_updates`` keeps deleted content, so merging the deltas of a
point and of every point before it rebuilds that point's state exactly). A point also keeps
its time range, how many updates it summarises and their authors (``describe_metadata`` of
each update's metadata), and a name when a user saved it as a version.

**Tiers.** ``Retention`` says how many points to keep as they age, e.g. the default
``10m:every,1h:1m,7d:1h,90d:1d``: every update of the last 10 minutes, then one point a
minute for the last hour, one an hour for 7 days, one a day for 90 days; older points go.
At each compaction ``thin`` walks the chain oldest first: two neighbouring points in the same
bucket of their tier (``floor(end / interval)``, epoch-aligned) become one, and a point past
the last tier is dropped; either way its delta is merged into the next point's, so no later
state changes. Named versions and the newest point are never merged away or dropped. The
first point (whose delta is the whole document before it) is squashed (deleted content
garbage-collected) whenever it absorbs others, so the chain does not grow with the age of
the document, only with what changed within the window.

**Rows.** Points are stored in rows of consecutive points (``Row``): one row per compaction
holds e.g. the 1,000 updates it turned into points, so a keystroke-sized point costs its
update plus ~14 bytes, not a database row. A row is immutable: a compaction deletes the rows
whose points change and inserts new ones (``ChainPlan``), so a backend detects a concurrent
change by the set of row numbers alone. Readers sort points by time, not by row.

Nothing here does I/O: the backends read rows, ask ``plan_chain`` which deltas it needs, and
store the ``ChainChange`` it builds, in the transaction that replaces the history by the
snapshot.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping, Sequence

from traitlets import TraitError, TraitType

from jupyter_ystore.core import ydoc as _ydoc
from jupyter_ystore.core.codec import (
    read_var_bytes,
    read_var_string,
    read_var_uint,
    write_var_string,
    write_var_uint,
)

#: An update that changes nothing (no structs, no deletions): the delta of a version saved
#: when nothing changed since the point before it.
EMPTY_UPDATE = b"\x00\x00"

DEFAULT_RETENTION = "10m:every,1h:1m,7d:1h,90d:1d"

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw]?)$")
_EVERY = ("every", "all", "0")


# ---------------------------------------------------------------------- the tiers


@dataclass(frozen=True)
class Tier:
    """Points younger than ``age`` seconds keep one per ``every`` seconds (0: every one)."""

    age: float
    every: float


def _duration(text: str, what: str) -> float:
    match = _DURATION.match(text.strip().lower())
    if not match:
        raise ValueError(f"{what} {text!r} is not a duration (30s, 10m, 2h, 7d, 1w or seconds)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def _duration_text(seconds: float) -> str:
    for unit in ("d", "h", "m"):
        size = _UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True)
class Retention:
    """Which history points compaction keeps. ``tiers`` None: every update forever; ``()``:
    none (compaction forgets the history it replaces, as before retention existed)."""

    tiers: tuple[Tier, ...] | None = ()

    @classmethod
    def parse(cls, value: Any) -> Retention:
        """From a setting: None (keep everything), 0 / "" / "0" (keep nothing), a spec
        ``"10m:every,1h:1m,7d:1h,90d:1d"`` (each ``AGE:INTERVAL``, ages increasing) or a
        sequence of ``(age seconds, interval seconds)`` pairs."""
        if value is None:
            return cls(None)
        if isinstance(value, Retention):
            return value
        if value == 0 or (isinstance(value, str) and value.strip().lower() in ("", "0", "none")):
            return cls(())
        pairs: list[tuple[float, float]] = []
        if isinstance(value, str):
            for part in value.split(","):
                age, sep, every = part.partition(":")
                if not sep:
                    raise ValueError(f"tier {part.strip()!r} is not AGE:INTERVAL (e.g. 1h:1m)")
                interval = every.strip().lower()
                pairs.append(
                    (
                        _duration(age, "the age"),
                        0.0 if interval in _EVERY else _duration(interval, "the interval"),
                    )
                )
        else:
            try:
                pairs = [(float(age), float(every)) for age, every in value]
            except (TypeError, ValueError):
                raise ValueError(
                    f"retention must be a spec string or (age, interval) pairs, got {value!r}"
                ) from None
        tiers = tuple(Tier(age, every) for age, every in pairs)
        previous = 0.0
        for tier in tiers:
            if not (math.isfinite(tier.age) and math.isfinite(tier.every)):
                raise ValueError("tier ages and intervals must be finite")
            if tier.age <= previous:
                raise ValueError("tier ages must be > 0 and increasing")
            if tier.every < 0:
                raise ValueError("tier intervals must be >= 0")
            previous = tier.age
        return cls(tiers)

    @property
    def keeps_all(self) -> bool:
        return self.tiers is None

    @property
    def keeps_nothing(self) -> bool:
        return self.tiers == ()

    @property
    def horizon(self) -> float | None:
        """Seconds back the history reaches at most (None: forever; 0: not at all)."""
        if self.tiers is None:
            return None
        return self.tiers[-1].age if self.tiers else 0.0

    def spec(self) -> str | None:
        """The setting's canonical text (None: keep everything)."""
        if self.tiers is None:
            return None
        return ",".join(
            f"{_duration_text(t.age)}:{_duration_text(t.every) if t.every else 'every'}"
            for t in self.tiers
        )

    def describe(self) -> str:
        """In words, for ``jupyter ystore info`` and logs."""
        if self.tiers is None:
            return "every update, forever"
        if not self.tiers:
            return "none (only the current state and named versions)"
        parts = []
        for tier in self.tiers:
            age = _duration_text(tier.age)
            if tier.every:
                parts.append(f"one point per {_duration_text(tier.every)} for {age}")
            else:
                parts.append(f"every update for {age}")
        return ", then ".join(parts)

    def key(self, end: float, now: float) -> Any:
        """The bucket of a point ending at ``end``: equal keys of neighbours merge; ``None``:
        past the last tier (dropped); a fresh object: kept as it is."""
        if self.tiers is None:
            return object()
        age = now - end
        for index, tier in enumerate(self.tiers):
            if age <= tier.age:
                if tier.every <= 0:
                    return object()
                return (index, math.floor(end / tier.every))
        return None


class RetentionTrait(TraitType):  # type: ignore[type-arg]
    """A retention setting: a spec string, 0 (keep nothing) or None (keep everything).

    Stored as the canonical spec (``Retention.parse`` reads it)."""

    default_value = DEFAULT_RETENTION
    info_text = "retention tiers 'AGE:INTERVAL,...' ('10m:every,1h:1m,7d:1h,90d:1d'), 0 or None"

    def __init__(self, default_value: Any = DEFAULT_RETENTION, **kwargs: Any) -> None:
        kwargs.setdefault("allow_none", True)
        super().__init__(default_value, **kwargs)

    def validate(self, obj: Any, value: Any) -> Any:
        try:
            return Retention.parse(value).spec()
        except ValueError as exc:
            owner = f"{type(obj).__name__}." if obj is not None else ""
            raise TraitError(f"{owner}{self.name}: {exc}") from None

    def from_string(self, s: str) -> Any:
        if s == "None":
            return None
        return s


# ---------------------------------------------------------------------- points and rows


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


def quantize(timestamp: float) -> float:
    """A point's time: ``timestamp`` rounded up to the microsecond (stored as an integer
    count of microseconds; rounding up keeps every update a point holds at or before it)."""
    return math.ceil(timestamp * 1_000_000) / 1_000_000


def _micros(timestamp: float) -> int:
    return round(timestamp * 1_000_000)


@dataclass
class Row:
    """Consecutive points stored together (a database row, a record of the file sidecar).

    ``meta`` holds the points' metadata (``encode_points``), decoded on first use, so that
    planning reads rows it leaves alone by their times only; ``deltas`` their deltas, read
    only for rows a compaction rewrites. ``upto`` is backend data: the newest log position
    the points cover (SQLite rowid, PostgreSQL id), copied as it is."""

    seq: int
    first_ts: float
    last_ts: float
    upto: int = 0
    meta: bytes = b""
    deltas: bytes | None = None
    _points: list[Point] | None = field(default=None, repr=False)

    @classmethod
    def of(cls, seq: int, points: list[Point], upto: int = 0) -> Row:
        """A new row of ``points`` (with their deltas)."""
        return cls(
            seq,
            min(point.start for point in points),
            max(point.end for point in points),
            upto,
            encode_points(points),
            encode_deltas(points),
            points,
        )

    @property
    def points(self) -> list[Point]:
        """The points, with their deltas when the row was read with them."""
        if self._points is None:
            self._points = decode_points(self.meta, self.deltas)
        return self._points


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


def encode_points(points: Sequence[Point]) -> bytes:
    """Points' metadata, compactly (a keystroke's point: ~6 bytes): an author table, the
    first end in microseconds, then per point flags, the end as a difference from the one
    before, the start when it differs, counts and author indexes."""
    authors: dict[str, int] = {}
    for point in points:
        for author in point.authors:
            if author not in authors:
                authors[author] = len(authors)
    previous = _micros(points[0].end) if points else 0
    out = [_uint(_FORMAT), _uint(len(authors))]
    out += [write_var_string(author) for author in authors]
    out += [write_var_uint(previous), write_var_uint(len(points))]
    append = out.append
    for point in points:
        end = round(point.end * 1_000_000)
        start = round(point.start * 1_000_000) if point.start != point.end else end
        flags = (
            (_HAS_START if start != end else 0)
            | (_HAS_NAME if point.name is not None else 0)
            | (_HAS_SAVER if point.saved_by is not None else 0)
            | (_BACKWARDS if end < previous else 0)
            | (_MANY if point.updates != 1 else 0)
        )
        append(_SMALL[flags])
        append(_uint(abs(end - previous)))
        previous = end
        if flags & _HAS_START:
            append(_uint(end - start))
        if flags & _MANY:
            append(_uint(point.updates))
        append(_uint(point.size))
        append(_uint(len(point.authors)))
        for author in point.authors:
            append(_uint(authors[author]))
        if point.name is not None:
            append(write_var_string(point.name))
        if point.saved_by is not None:
            append(write_var_string(point.saved_by))
    body = b"".join(out[1:])
    if len(body) >= _COMPRESS_FROM:  # a compaction's row of keystrokes: about 2× smaller
        packed = zlib.compress(body, 6)
        if len(packed) < len(body):
            return _uint(_FORMAT_COMPRESSED) + packed
    return out[0] + body


def encode_deltas(points: Sequence[Point]) -> bytes:
    """The deltas of a row, length-prefixed, zlib-compressed when that saves bytes.

    Keystroke deltas repeat their client id and structure: a row of a compaction's 1,000
    updates shrinks about 4× (measured on the benchmark's typing stream), which is most of a
    store's size while the every-update tier holds a burst of typing. Only compactions write
    rows (in a worker thread) and only history readers read deltas, so loading never pays."""
    out = []
    for point in points:
        if point.delta is None:
            raise ValueError("a history row is stored with every delta")
        out.append(_uint(len(point.delta)))
        out.append(point.delta)
    raw = b"".join(out)
    ambiguous = raw[:1] == _COMPRESSED  # an empty first delta: stored compressed whatever
    if ambiguous or len(raw) >= _COMPRESS_FROM:
        packed = zlib.compress(raw, 6)
        if ambiguous or len(packed) + 1 < len(raw):
            return _COMPRESSED + packed
    return raw


def decode_points(data: bytes, deltas: bytes | None = None) -> list[Point]:
    """``encode_points`` read back, with the deltas of ``encode_deltas`` when given.
    ValueError for bytes we did not write."""
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
    previous, pos = read_var_uint(data, pos)
    count, pos = read_var_uint(data, pos)
    points = []
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
        who = []
        for _ in range(n):
            index, pos = read_var_uint(data, pos)
            who.append(authors[index])
        name = saved_by = None
        if flags & _HAS_NAME:
            name, pos = read_var_string(data, pos)
        if flags & _HAS_SAVER:
            saved_by, pos = read_var_string(data, pos)
        points.append(
            Point(start / 1_000_000, end / 1_000_000, updates, size, tuple(who), name, saved_by)
        )
    if pos != len(data):
        raise ValueError("trailing bytes after a history row")
    if deltas is not None:
        points = attach_deltas(points, deltas)
    return points


def attach_deltas(points: list[Point], deltas: bytes) -> list[Point]:
    """``points`` (decoded without deltas) with the deltas of their row."""
    if deltas[:1] == _COMPRESSED:
        try:
            deltas = zlib.decompress(deltas[1:])
        except zlib.error as exc:
            raise ValueError(f"history row deltas cannot be decompressed ({exc})") from None
    pos = 0
    out = []
    for point in points:
        delta, pos = read_var_bytes(deltas, pos)
        out.append(replace(point, delta=delta))
    if pos != len(deltas):
        raise ValueError("history row deltas do not match its points")
    return out


def point_of_record(
    update: bytes, metadata: bytes, timestamp: float, *, base: bool = False
) -> Point:
    """A stored update as a point of its own (``base``: a snapshot, whose metadata does not
    say who wrote what it holds)."""
    from jupyter_ystore.core.history import describe_metadata  # (it imports the stores)

    author = "" if base else describe_metadata(metadata)
    at = quantize(timestamp)
    return Point(at, at, 1, len(update), (author,) if author else (), delta=update)


# ---------------------------------------------------------------------- versions

_NAME_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f]")
MAX_NAME_LENGTH = 200


def check_version_name(name: Any) -> str:
    """A version's name: 1 to 200 characters, no control characters, not only spaces."""
    if not isinstance(name, str):
        raise TypeError(f"a version name is a str, got {type(name).__name__}")
    if not name.strip() or len(name) > MAX_NAME_LENGTH or _NAME_FORBIDDEN.search(name):
        raise ValueError(
            f"invalid version name {name!r}: 1 to {MAX_NAME_LENGTH} characters, "
            "no control characters"
        )
    return name


class VersionExists(ValueError):
    """A version of that name exists already (names are unique per document)."""


class VersionNotFound(KeyError):
    """No version of that name."""

    def __str__(self) -> str:
        return f"no version named {self.args[0]!r}"


# ---------------------------------------------------------------------- planning


@dataclass
class _Entry:
    point: Point
    row: int | None  # seq of the stored row holding it; None: new in this compaction
    index: int = 0


@dataclass
class ChainChange:
    """What a compaction does to the stored points: delete rows, insert rows."""

    delete: list[int]
    insert: list[Row]

    @property
    def empty(self) -> bool:
        return not self.delete and not self.insert


@dataclass
class ChainPlan:
    """Which groups of points become one, and which stored rows survive untouched."""

    groups: list[list[_Entry]]
    rows: dict[int, Row]  # the stored rows planned over (frozen ones left out)
    kept: set[int]
    next_seq: int
    upto: int
    squash_first: bool = False
    document: str = ""

    @property
    def needs(self) -> set[int]:
        """seqs of stored rows whose deltas ``build`` needs (rows rewritten)."""
        return set(self.rows) - self.kept

    def build(self, deltas: Mapping[int, bytes]) -> ChainChange:
        """The rows to delete and insert (CPU work: run it in a worker thread).

        ``deltas`` maps each seq of ``needs`` to that row's stored deltas blob."""
        loaded = {
            seq: attach_deltas(self.rows[seq].points, deltas[seq]) for seq in self.needs
        }
        out: list[list[Point]] = []
        run: list[Point] = []
        for position, group in enumerate(self.groups):
            first = group[0]
            if len(group) == 1 and first.row in self.kept:
                if run:
                    out.append(run)
                    run = []
                continue
            points = [
                entry.point if entry.row is None else loaded[entry.row][entry.index]
                for entry in group
            ]
            run.append(self._merge(points, squash=position == 0 and self.squash_first))
        if run:
            out.append(run)
        inserted: list[Row] = []
        seq = self.next_seq
        for points in out:
            for chunk in _chunks(points):
                inserted.append(Row.of(seq, chunk, self.upto))
                seq += 1
        return ChainChange(sorted(self.needs), inserted)

    def _merge(self, points: list[Point], *, squash: bool) -> Point:
        last = points[-1]
        if len(points) == 1:
            return last
        deltas = [point.delta or EMPTY_UPDATE for point in points]
        if squash:
            from jupyter_ystore.stores.compaction import squash as squash_updates

            delta, _clean = squash_updates(deltas, self.document)
        else:
            delta = _ydoc.merge_updates(deltas)
        authors: dict[str, None] = {}
        for point in points:
            authors.update(dict.fromkeys(point.authors))
        return Point(
            start=min(point.start for point in points),
            end=last.end,
            updates=sum(point.updates for point in points),
            size=sum(point.size for point in points),
            authors=tuple(authors),
            name=last.name,
            saved_by=last.saved_by,
            delta=delta,
        )


#: Points and delta bytes per stored row (a larger single point gets a row of its own).
ROW_POINTS = 1024
ROW_BYTES = 1 << 20


def _chunks(points: list[Point]) -> Iterable[list[Point]]:
    chunk: list[Point] = []
    size = 0
    for point in points:
        length = len(point.delta or b"")
        if chunk and (len(chunk) >= ROW_POINTS or size + length > ROW_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(point)
        size += length
    if chunk:
        yield chunk


def sorted_points(rows: Iterable[Row]) -> list[tuple[Point, int, int]]:
    """Every point of ``rows`` with its row and index, oldest first (by end time; rows as
    stored break ties)."""
    found = [
        (point, row.seq, index)
        for row in sorted(rows, key=lambda r: (r.last_ts, r.seq))
        for index, point in enumerate(row.points)
    ]
    found.sort(key=lambda item: item[0].end)
    return found


def thin(points: Sequence[Point], now: float, retention: Retention) -> list[list[int]]:
    """Group ``points`` (oldest first) into the points to keep: indexes of each group, whose
    deltas merge into its last point. Empty when nothing is to be kept."""
    n = len(points)
    if not n:
        return []
    named = [point.name is not None for point in points]
    if retention.keeps_nothing and not any(named):
        return []
    keys: list[Any] = []
    key = retention.key
    for i, point in enumerate(points):
        if named[i] or i == n - 1:
            keys.append(object())  # never merged away (into the next) nor dropped
        elif retention.keeps_nothing:
            keys.append(None)
        else:
            keys.append(key(point.end, now))
    groups: list[list[int]] = []
    carry: list[int] = []
    for i in range(n):
        if i < n - 1 and (keys[i] is None or keys[i] == keys[i + 1]):
            carry.append(i)
            continue
        groups.append(carry + [i])
        carry = []
    return groups


def frozen_rows(rows: Iterable[Row], now: float, retention: Retention) -> set[int]:
    """Rows whose every point keeps a key of its own (every point of the first tier, or of
    every tier when everything is kept): a compaction leaves them as they are, so it needs
    neither their points nor their deltas. Decided from the rows' times alone."""
    if retention.keeps_all:
        return {row.seq for row in rows}
    tiers = retention.tiers or ()
    if not tiers or tiers[0].every > 0:
        return set()
    return {row.seq for row in rows if now - row.first_ts <= tiers[0].age}


def plan_chain(
    rows: Sequence[Row],
    new: Sequence[Point],
    now: float,
    retention: Retention,
    *,
    upto: int = 0,
    name: str | None = None,
    saved_by: str | None = None,
    document: str = "",
) -> ChainPlan:
    """The plan of one compaction: the stored ``rows`` (without deltas), the ``new`` points
    of the updates it replaces (with deltas), and, for a version save, a point named
    ``name`` at ``now`` (after everything else). Raises ``VersionExists`` when ``name`` is
    taken. Only rows that may change are decoded (see ``frozen_rows``)."""
    if name is not None and any(point.name == name for row in rows for point in row.points):
        raise VersionExists(name)
    frozen = frozen_rows(rows, now, retention)
    plan = _plan(rows, frozen, new, now, retention, name, saved_by)
    if plan is None:  # a drop would reach past frozen rows: plan over every row
        frozen = set()
        plan = _plan(rows, frozen, new, now, retention, name, saved_by)
    assert plan is not None
    groups, kept = plan
    first_changed = (
        bool(groups)
        and not (len(groups[0]) == 1 and groups[0][0].row in kept)
        # the chain's first point (frozen rows are newer than any point planned over)
        and not any(row.first_ts <= groups[0][0].point.end for row in rows if row.seq in frozen)
    )
    return ChainPlan(
        groups=groups,
        rows={row.seq: row for row in rows if row.seq not in frozen},
        kept=kept,
        next_seq=max((row.seq for row in rows), default=0) + 1,
        upto=upto,
        squash_first=first_changed and len(groups[0]) > 1,
        document=document,
    )


def _plan(
    rows: Sequence[Row],
    frozen: set[int],
    new: Sequence[Point],
    now: float,
    retention: Retention,
    name: str | None,
    saved_by: str | None,
) -> tuple[list[list[_Entry]], set[int]] | None:
    """Groups and kept rows, frozen rows left out; None when a group would merge points
    from both sides of frozen rows (their states would then change)."""
    active = [row for row in rows if row.seq not in frozen]
    entries = [_Entry(point, seq, index) for point, seq, index in sorted_points(active)]
    # New points follow the stored ones in log order, each strictly later than the one
    # before (a microsecond later where clocks tie or disagree): merging forward then never
    # passes a point of the same time, whose state would change.
    last = max((row.last_ts for row in rows), default=-math.inf)
    for point in new:
        if point.end <= last:
            end = (_micros(last) + 1) / 1_000_000
            point = replace(point, start=min(point.start, end), end=end)
        last = point.end
        entries.append(_Entry(point, None))
    if name is not None:
        at = quantize(now) if now > last else (_micros(last) + 1) / 1_000_000
        entries.append(_Entry(Point(at, at, 0, 0, (), name, saved_by, EMPTY_UPDATE), None))
    indexes = thin([entry.point for entry in entries], now, retention)
    groups = [[entries[i] for i in group] for group in indexes]
    if frozen:
        edge = min(row.first_ts for row in rows if row.seq in frozen)
        if any(g[0].point.end < edge <= g[-1].point.end and len(g) > 1 for g in groups):
            return None
    singletons = {(g[0].row, g[0].index) for g in groups if len(g) == 1 and g[0].row is not None}
    kept = {
        row.seq
        for row in active
        if all((row.seq, index) in singletons for index in range(len(row.points)))
    }
    return groups, kept


def rename_version(
    rows: Sequence[Row], name: str, new_name: str | None, next_seq: int
) -> ChainChange:
    """Remove (``new_name`` None) or change a version's name: the row holding it is
    replaced by a copy (rows are immutable). ``VersionNotFound`` when no point has ``name``;
    ``VersionExists`` when ``new_name`` is taken. The rows need their deltas."""
    target = None
    for row in rows:
        for index, point in enumerate(row.points):
            if point.name == name:
                target = (row, index)
            elif new_name is not None and point.name == new_name:
                raise VersionExists(new_name)
    if target is None:
        raise VersionNotFound(name)
    row, index = target
    points = list(row.points)
    points[index] = replace(
        points[index], name=new_name, saved_by=points[index].saved_by if new_name else None
    )
    return ChainChange([row.seq], [Row.of(next_seq, points, row.upto)])


# ---------------------------------------------------------------------- what readers get


@dataclass
class StoredHistory:
    """A document's history as stored, read in one consistent view.

    ``points``: the retained points, oldest first, with deltas. ``records``: the log
    records the points do not cover (``read()``'s, minus a snapshot the points hold),
    ``snapshots`` of them leading snapshots (a history compacted before retention, or with
    retention off, starts at its snapshot)."""

    points: list[Point]
    records: list[tuple[bytes, bytes, float]]
    snapshots: int = 0

    @property
    def empty(self) -> bool:
        return not self.points and not self.records


def points_of(rows: Iterable[Row]) -> list[Point]:
    """Every point of ``rows`` (with deltas), oldest first."""
    return [point for point, _seq, _index in sorted_points(rows)]


def history_bytes(history: StoredHistory) -> int:
    """What the retained points cost in delta bytes (metadata excluded)."""
    return sum(len(point.delta or b"") for point in history.points)


def new_points(
    records: Sequence[tuple[bytes, bytes, float]], *, snapshot_first: bool = False
) -> list[Point]:
    """The points of log records a compaction replaces (a leading snapshot included as the
    chain's base when ``snapshot_first``)."""
    from jupyter_ystore.core.history import describe_metadata  # (it imports the stores)

    described: dict[bytes, tuple[str, ...]] = {}  # consecutive updates share their author
    points = []
    for i, (update, metadata, timestamp) in enumerate(records):
        if snapshot_first and i == 0:
            points.append(point_of_record(update, metadata, timestamp, base=True))
            continue
        authors = described.get(metadata)
        if authors is None:
            author = describe_metadata(metadata)
            authors = described[metadata] = (author,) if author else ()
        at = math.ceil(timestamp * 1_000_000) / 1_000_000
        points.append(Point(at, at, 1, len(update), authors, None, None, update))
    return points


Clock = Callable[[], float]


def apply_change(rows: Iterable[Row], change: ChainChange) -> list[Row]:
    """``rows`` after ``change`` (for stores that hold every row in memory)."""
    gone = set(change.delete)
    return [row for row in rows if row.seq not in gone] + list(change.insert)


def compact_rows(
    rows: Sequence[Row],
    new: Sequence[Point],
    now: float,
    retention: Retention,
    *,
    upto: int = 0,
    name: str | None = None,
    saved_by: str | None = None,
    document: str = "",
) -> ChainChange:
    """``plan_chain`` and ``build`` at once, for rows read with their deltas (any thread)."""
    plan = plan_chain(
        rows, new, now, retention, upto=upto, name=name, saved_by=saved_by, document=document
    )
    by_seq = {row.seq: row for row in rows}
    return plan.build({seq: by_seq[seq].deltas or b"" for seq in plan.needs})
