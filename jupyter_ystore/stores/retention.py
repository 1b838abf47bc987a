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
Planning works on the points as columns (``PointTable``, ``history_points.py``), not an
object per point: see there why.

Nothing here does I/O: the backends read rows, ask ``plan_chain`` which deltas it needs, and
store the ``ChainChange`` it builds, in the transaction that replaces the history by the
snapshot.
"""

from __future__ import annotations

import math
import re
from array import array
from dataclasses import dataclass, field, replace
from itertools import repeat
from typing import Any, Callable, Iterable, Mapping, Sequence

from traitlets import TraitError, TraitType

from jupyter_ystore.core import ydoc as _ydoc
from jupyter_ystore.stores.history_points import (
    Point,
    PointTable,
    decode_table,
    encode_deltas,
    encode_points,
    micros,
    quantize,
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


# ---------------------------------------------------------------------- rows


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
    _table: PointTable | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, seq: int, points: Sequence[Point] | PointTable, upto: int = 0) -> Row:
        """A new row of ``points`` (with their deltas)."""
        table = points if isinstance(points, PointTable) else PointTable.of(points)
        return cls(
            seq,
            min(table.starts),
            max(table.ends),
            upto,
            encode_points(table),
            encode_deltas(table),
            table,
        )

    @property
    def table(self) -> PointTable:
        """The points as columns, with their deltas when the row was read with them."""
        if self._table is None:
            self._table = decode_table(self.meta, self.deltas)
        return self._table

    @property
    def points(self) -> list[Point]:
        """The points (new objects at each call: planning keeps the columns only)."""
        return self.table.points()

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
class ChainChange:
    """What a compaction does to the stored points: delete rows, insert rows."""

    delete: list[int]
    insert: list[Row]

    @property
    def empty(self) -> bool:
        return not self.delete and not self.insert


@dataclass
class ChainPlan:
    """Which runs of points become one, and which stored rows survive untouched.

    The points planned over are columns, oldest first: ``seqs[i]`` the stored row holding
    the ``i``-th (-1: the table ``new`` of this compaction's points) and ``indexes[i]`` its
    index there. ``stops`` cuts them into groups of consecutive points, each merged into its
    last: group ``k`` ends just before ``stops[k]``."""

    stops: list[int]
    seqs: array[int]
    indexes: array[int]
    new: PointTable
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
        tables = {seq: self.rows[seq].table.with_deltas(deltas[seq]) for seq in self.needs}
        tables[-1] = self.new
        out: list[PointTable] = []
        run = PointTable()
        lo = 0
        for position, hi in enumerate(self.stops):
            seq = self.seqs[lo]
            if hi - lo > 1:
                self._merge(run, tables, lo, hi, squash=position == 0 and self.squash_first)
            elif seq not in self.kept:
                run.append_from(tables[seq], self.indexes[lo])
            elif len(run):
                out.append(run)
                run = PointTable()
            lo = hi
        if len(run):
            out.append(run)
        inserted: list[Row] = []
        seq = self.next_seq
        for table in out:
            for chunk in _chunks(table):
                inserted.append(Row.of(seq, chunk, self.upto))
                seq += 1
        return ChainChange(sorted(self.needs), inserted)

    def _merge(
        self, run: PointTable, tables: Mapping[int, PointTable], lo: int, hi: int, *, squash: bool
    ) -> None:
        """Append to ``run`` the one point that the points ``lo`` to ``hi`` - 1 become."""
        deltas: list[bytes] = []
        authors: dict[str, None] = {}
        start = math.inf
        updates = size = 0
        for i in range(lo, hi):
            table, j = tables[self.seqs[i]], self.indexes[i]
            deltas.append(table.deltas[j] or EMPTY_UPDATE)
            authors.update(dict.fromkeys(table.authors[j]))
            start = min(start, table.starts[j])
            updates += table.updates[j]
            size += table.sizes[j]
        if squash:
            from jupyter_ystore.stores.compaction import squash as squash_updates

            delta, _clean = squash_updates(deltas, self.document)
        else:
            delta = _ydoc.merge_updates(deltas)
        last, j = tables[self.seqs[hi - 1]], self.indexes[hi - 1]
        run.append(
            start, last.ends[j], updates, size, tuple(authors), last.names[j], last.savers[j], delta
        )


#: Points and delta bytes per stored row (a larger single point gets a row of its own).
ROW_POINTS = 1024
ROW_BYTES = 1 << 20


def _chunks(table: PointTable) -> Iterable[PointTable]:
    lo = size = 0
    for i, delta in enumerate(table.deltas):
        length = len(delta or b"")
        if i > lo and (i - lo >= ROW_POINTS or size + length > ROW_BYTES):
            yield table.slice(lo, i)
            lo, size = i, 0
        size += length
    if lo == 0:
        yield table
    elif lo < len(table):
        yield table.slice(lo, len(table))


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


def thin(
    ends: Sequence[float], named: Sequence[bool], now: float, retention: Retention
) -> list[int]:
    """Group points (oldest first: their ``ends``, and whether each is ``named``) into the
    points to keep: runs of consecutive points whose deltas merge into the run's last,
    given as each run's stop (one past its last index). Empty when nothing is to be kept."""
    n = len(ends)
    if not n:
        return []
    if retention.keeps_nothing and not any(named):
        return []
    keys: list[Any] = []
    key = retention.key
    for i in range(n):
        if named[i] or i == n - 1:
            keys.append(object())  # never merged away (into the next) nor dropped
        elif retention.keeps_nothing:
            keys.append(None)
        else:
            keys.append(key(ends[i], now))
    stops = [i + 1 for i in range(n - 1) if keys[i] is not None and keys[i] != keys[i + 1]]
    stops.append(n)
    return stops


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
    new: Sequence[Point] | PointTable,
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
    if name is not None and any(name in row.table.names for row in rows):
        raise VersionExists(name)
    table = new if isinstance(new, PointTable) else PointTable.of(new)
    frozen = frozen_rows(rows, now, retention)
    plan = _plan(rows, frozen, table, now, retention, name, saved_by)
    if plan is None:  # a drop would reach past frozen rows: plan over every row
        frozen = set()
        plan = _plan(rows, frozen, table, now, retention, name, saved_by)
    assert plan is not None
    stops = plan.stops
    first_changed = (
        bool(stops)
        and not (stops[0] == 1 and plan.seqs[0] in plan.kept)
        # the chain's first point (frozen rows are newer than any point planned over)
        and not any(row.first_ts <= plan.ends[0] for row in rows if row.seq in frozen)
    )
    return ChainPlan(
        stops=stops,
        seqs=plan.seqs,
        indexes=plan.indexes,
        new=plan.new,
        rows={row.seq: row for row in rows if row.seq not in frozen},
        kept=plan.kept,
        next_seq=max((row.seq for row in rows), default=0) + 1,
        upto=upto,
        squash_first=first_changed and stops[0] > 1,
        document=document,
    )


@dataclass
class _Planned:
    """``_plan``'s answer: the columns of the points planned over, their groups, kept rows."""

    stops: list[int]
    seqs: array[int]
    indexes: array[int]
    ends: array[float]
    new: PointTable
    kept: set[int]


def _plan(
    rows: Sequence[Row],
    frozen: set[int],
    new: PointTable,
    now: float,
    retention: Retention,
    name: str | None,
    saved_by: str | None,
) -> _Planned | None:
    """Groups and kept rows, frozen rows left out; None when a group would merge points
    from both sides of frozen rows (their states would then change)."""
    active = sorted(
        (row for row in rows if row.seq not in frozen), key=lambda r: (r.last_ts, r.seq)
    )
    seqs, indexes, ends = array("q"), array("q"), array("d")
    named: list[bool] = []
    for row in active:
        stored = row.table
        seqs.extend(repeat(row.seq, len(stored)))
        indexes.extend(range(len(stored)))
        ends.extend(stored.ends)
        named.extend(point_name is not None for point_name in stored.names)
    if len(ends) > 1:  # oldest first (by end; rows as stored break ties)
        order = sorted(range(len(ends)), key=ends.__getitem__)
        seqs = array("q", [seqs[i] for i in order])
        indexes = array("q", [indexes[i] for i in order])
        ends = array("d", [ends[i] for i in order])
        named = [named[i] for i in order]
    # New points follow the stored ones in log order, each strictly later than the one
    # before (a microsecond later where clocks tie or disagree): merging forward then never
    # passes a point of the same time, whose state would change.
    new = new.slice(0, len(new))  # (its times change below)
    last = max((row.last_ts for row in rows), default=-math.inf)
    for i, end in enumerate(new.ends):
        if end <= last:
            end = (micros(last) + 1) / 1_000_000
            new.starts[i] = min(new.starts[i], end)
            new.ends[i] = end
        last = end
    if name is not None:
        at = quantize(now) if now > last else (micros(last) + 1) / 1_000_000
        new.append(at, at, 0, 0, (), name, saved_by, EMPTY_UPDATE)
    seqs.extend(repeat(-1, len(new)))
    indexes.extend(range(len(new)))
    ends.extend(new.ends)
    named.extend(point_name is not None for point_name in new.names)
    stops = thin(ends, named, now, retention)
    groups = list(zip([0, *stops], stops))
    if frozen:
        edge = min(row.first_ts for row in rows if row.seq in frozen)
        if any(hi - lo > 1 and ends[lo] < edge <= ends[hi - 1] for lo, hi in groups):
            return None
    singles: dict[int, int] = {}  # per stored row, its points kept as they are
    for lo, hi in groups:
        if hi - lo == 1 and seqs[lo] >= 0:
            singles[seqs[lo]] = singles.get(seqs[lo], 0) + 1
    kept = {row.seq for row in active if singles.get(row.seq, 0) == len(row.table)}
    return _Planned(stops, seqs, indexes, ends, new, kept)


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
) -> PointTable:
    """The points of log records a compaction replaces (a leading snapshot included as the
    chain's base when ``snapshot_first``: its metadata does not say who wrote what it
    holds), as columns."""
    from jupyter_ystore.core.history import describe_metadata  # (it imports the stores)

    described: dict[bytes, tuple[str, ...]] = {}  # consecutive updates share their author
    table = PointTable()
    for i, (update, metadata, timestamp) in enumerate(records):
        if snapshot_first and i == 0:
            authors: tuple[str, ...] = ()
        else:
            found = described.get(metadata)
            if found is None:
                author = describe_metadata(metadata)
                found = described[metadata] = (author,) if author else ()
            authors = found
        at = math.ceil(timestamp * 1_000_000) / 1_000_000
        table.append(at, at, 1, len(update), authors, None, None, update)
    return table


Clock = Callable[[], float]


def apply_change(rows: Iterable[Row], change: ChainChange) -> list[Row]:
    """``rows`` after ``change`` (for stores that hold every row in memory)."""
    gone = set(change.delete)
    return [row for row in rows if row.seq not in gone] + list(change.insert)


def compact_rows(
    rows: Sequence[Row],
    new: Sequence[Point] | PointTable,
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
