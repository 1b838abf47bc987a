"""Time travel over a stored document: its state at a time, and its history in readable points.

Everything here is computed from ``store.read_history()``: the retained history points
compaction keeps (``stores/retention.py``: every update of the last minutes, then one point
a minute, an hour, a day...) followed by the log records after them (``read()``'s), so it
works the same on every backend and on stores written by older libraries. A point is a
record like an update: its delta merged with every delta and update before it gives the
document at its time. Nothing older than the oldest point (or, without points, the
snapshot) can be reached, and asking for it is an error rather than an empty document.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Iterable, Sequence

from jupyter_ystore.core import ydoc as _ydoc
from jupyter_ystore.errors import YDocNotFound
from jupyter_ystore.stores.base import BaseYStore
from jupyter_ystore.stores.retention import StoredHistory


class HistoryError(ValueError):
    """A point in time the stored history cannot give (before the document or its snapshot)."""


@dataclass(frozen=True)
class Record:
    """One stored update or retained point, without its bytes (what listings and history
    need). A point (``kind == "point"``) stands for ``updates`` updates from ``start`` to
    ``timestamp`` by ``authors``; ``name`` is set on a named version."""

    index: int
    timestamp: float
    size: int
    metadata: bytes
    snapshot: bool = False
    kind: str = "update"  # "update", "snapshot" or "point"
    authors: tuple[str, ...] | None = None  # a point's; an update's come from its metadata
    updates: int = 1
    start: float | None = None
    name: str | None = None
    saved_by: str | None = None

    def who(self) -> list[str]:
        """Who made what this record holds (``describe_metadata``), possibly nobody known."""
        if self.authors is not None:
            return list(self.authors)
        author = describe_metadata(self.metadata)
        return [author] if author else []

    def describe(self) -> str:
        """What this record is, in a few words (said by export/restore --at)."""
        if self.name is not None:
            by = f" by {self.saved_by}" if self.saved_by else ""
            return f"version {self.name!r} (saved{by} {format_time(self.timestamp)})"
        who = ", ".join(self.who()) or "unknown authors"
        if self.kind == "point":
            if self.updates == 1:
                return f"the update of {format_time(self.timestamp)} by {who}"
            return (
                f"the retained point of {format_time(self.timestamp)} ({self.updates} updates "
                f"since {format_time(self.start)} by {who})"
            )
        if self.snapshot:
            return f"the snapshot of {format_time(self.timestamp)} (older history was compacted)"
        return f"the update of {format_time(self.timestamp)} by {who}"


@dataclass
class History:
    """Every stored update of one document, oldest first, read once.

    ``snapshots`` is how many leading records are snapshots (compaction results); the
    backends report it in ``DocumentInfo.snapshots``.
    """

    path: str
    updates: list[bytes]
    records: list[Record]

    @classmethod
    def from_rows(
        cls, path: str, rows: Iterable[tuple[bytes, bytes, float]], snapshots: int = 0
    ) -> History:
        updates: list[bytes] = []
        records: list[Record] = []
        for index, (update, metadata, timestamp) in enumerate(rows):
            updates.append(bytes(update))
            snapshot = index < snapshots
            records.append(
                Record(
                    index,
                    float(timestamp),
                    len(update),
                    bytes(metadata),
                    snapshot,
                    kind="snapshot" if snapshot else "update",
                )
            )
        return cls(path, updates, records)

    @classmethod
    def from_stored(cls, path: str, stored: StoredHistory) -> History:
        """The retained points (oldest first), then the log records after them."""
        history = cls.from_rows(path, [], 0)
        for point in stored.points:
            delta = point.delta or b"\x00\x00"
            history.updates.append(delta)
            history.records.append(
                Record(
                    len(history.records),
                    point.end,
                    len(delta),  # what it costs stored (its updates were point.size)
                    b"",
                    kind="point",
                    authors=tuple(point.authors),
                    updates=point.updates,
                    start=point.start,
                    name=point.name,
                    saved_by=point.saved_by,
                )
            )
        tail = cls.from_rows(path, stored.records, stored.snapshots)
        offset = len(history.records)
        history.updates += tail.updates
        history.records += [replace(r, index=r.index + offset) for r in tail.records]
        return history

    def state_of(self, record: Record) -> bytes:
        """The document as of ``record`` (a retained point, a version, an update): every
        record up to it in time, ties broken by storage order (points come before the log),
        so that an update written in the same microsecond as a version is not part of it."""
        key = (record.timestamp, record.index)
        return self._merge(
            [
                (update, r)
                for update, r in zip(self.updates, self.records)
                if (r.timestamp, r.index) <= key
            ]
        )

    def nearest(self, at: float | None) -> Record | None:
        """The newest record (update, point or version) at or before ``at`` (None: the
        newest of all): what ``state_at(at)`` ends with."""
        chosen = [r for r in self.records if at is None or r.timestamp <= at]
        return max(chosen, key=lambda r: (r.timestamp, r.index)) if chosen else None

    def version(self, name: str) -> Record:
        """The named version ``name`` (HistoryError when there is none)."""
        for record in self.records:
            if record.name == name:
                return record
        names = ", ".join(repr(r.name) for r in self.records if r.name is not None)
        raise HistoryError(
            f"{self.path}: no version named {name!r}" + (f" (versions: {names})" if names else "")
        )

    @property
    def oldest(self) -> Record | None:
        """The oldest state the history reaches."""
        return min(self.records, key=lambda r: (r.timestamp, r.index)) if self.records else None

    def state_at(self, at: float | None = None) -> bytes:
        """The document as it was at ``at`` (epoch seconds), as one merged Yjs update.

        Every record written at or before ``at`` counts, wherever it is stored: a
        pycrdt-store checkpoint comes first yet is newer than the rows it covers, which stay
        stored and so still give the states before it. Raises ``HistoryError`` when no record
        is that old (before the document existed, or before the snapshot that replaced the
        older history).
        """
        if not self.records:
            raise HistoryError(f"{self.path}: nothing is stored")
        selected = [
            (update, record)
            for update, record in zip(self.updates, self.records)
            if at is None or record.timestamp <= at
        ]
        if not selected:
            oldest = min(self.records, key=lambda record: record.timestamp)
            why = ""
            if oldest.snapshot:
                why = ", a snapshot: older history was compacted"
            elif oldest.kind == "point":
                why = ", the oldest retained point: see history_retention"
            raise HistoryError(
                f"{self.path}: {format_time(at)} is before the oldest stored record "
                f"({format_time(oldest.timestamp)}{why})"
            )
        return self._merge(selected)

    def _merge(self, selected: list[tuple[bytes, Record]]) -> bytes:
        try:
            return _ydoc.merge_updates([update for update, _record in selected])
        except Exception:  # pycrdt raises ValueError (or worse) for bytes that are not Yjs
            bad = [record.index for update, record in selected if not _ydoc.is_valid_update(update)]
            which = f"record #{bad[0]}" if bad else "a record"
            raise HistoryError(
                f"{self.path}: {which} does not decode as a Yjs update "
                "(see `jupyter ystore verify` for what is recoverable)"
            ) from None


async def read_history(store: BaseYStore, snapshots: int = 0) -> History:
    """Read the retained points and every record of ``store`` (a started store); raises
    ``YDocNotFound`` when empty. ``snapshots``: leading snapshots the listing counted, for
    a backend whose ``read_history`` does not say."""
    stored = await store.read_history()
    if stored.empty:
        raise YDocNotFound(store.path)
    if not stored.points and not stored.snapshots and snapshots:
        stored = StoredHistory([], stored.records, snapshots)
    return History.from_stored(store.path, stored)


# ---------------------------------------------------------------------------- grouping


@dataclass
class HistoryPoint:
    """A group of consecutive updates; restoring to ``end`` gives the state after all of them."""

    start: float
    end: float
    first_index: int
    last_index: int
    updates: int = 0
    bytes: int = 0
    authors: list[str] = field(default_factory=list)
    snapshot: bool = False
    name: str | None = None  # a named version (always a point of its own)
    saved_by: str | None = None
    retained: bool = False  # made of retained points (compacted history), not raw updates

    def to_json(self) -> dict:
        return {
            "start": self.start,
            "end": self.end,
            "at": format_time(self.end),
            "first_index": self.first_index,
            "last_index": self.last_index,
            "updates": self.updates,
            "bytes": self.bytes,
            "authors": self.authors,
            "snapshot": self.snapshot,
            "name": self.name,
            "saved_by": self.saved_by,
            "retained": self.retained,
        }


#: Bucket widths tried in order until the history fits in ``max_points`` lines.
RESOLUTIONS: tuple[float, ...] = (
    0, 1, 10, 60, 5 * 60, 15 * 60, 3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400, 365 * 86400
)


def group_points(
    records: Sequence[Record], *, max_points: int = 40, resolution: float | None = None
) -> tuple[list[HistoryPoint], float]:
    """Group records into history points; return them and the bucket width used.

    Updates whose times fall in the same bucket of ``resolution`` seconds (aligned to the
    epoch) form one point; a snapshot is always a point of its own. Without ``resolution``,
    the smallest width of ``RESOLUTIONS`` giving at most ``max_points`` points is chosen
    (0 = one point per update), so a day of typing shows as hours, not 50,000 lines.
    """
    if resolution is not None:
        return _group(records, resolution), resolution
    points: list[HistoryPoint] = []
    for width in RESOLUTIONS:
        points = _group(records, width)
        if len(points) <= max_points:
            return points, width
    return points, RESOLUTIONS[-1]


def _bucket(timestamp: float, width: float) -> float:
    return math.floor(timestamp / width) if width > 0 else timestamp


def _group(records: Sequence[Record], width: float) -> list[HistoryPoint]:
    points: list[HistoryPoint] = []
    current: HistoryPoint | None = None
    current_bucket: float | None = None
    # Chronological (a legacy checkpoint is stored first but is newer than the rows after it).
    for record in sorted(records, key=lambda r: (r.timestamp, r.index)):
        bucket = _bucket(record.timestamp, width)
        alone = record.snapshot or record.name is not None
        if (
            alone
            or current is None
            or current.snapshot
            or current.name is not None
            or bucket != current_bucket
            or width == 0
        ):
            start = record.start if record.start is not None else record.timestamp
            current = HistoryPoint(
                start=start,
                end=record.timestamp,
                first_index=record.index,
                last_index=record.index,
                snapshot=record.snapshot,
                name=record.name,
                saved_by=record.saved_by,
            )
            current_bucket = bucket
            points.append(current)
        current.end = max(current.end, record.timestamp)
        if record.start is not None:
            current.start = min(current.start, record.start)
        current.last_index = record.index
        current.updates += record.updates
        current.bytes += record.size
        current.retained = current.retained or record.kind == "point"
        for author in record.who():
            if author not in current.authors:
                current.authors.append(author)
    return points


def describe_metadata(metadata: bytes) -> str:
    """A short human form of an update's metadata (who made it), or ``""`` when none.

    Metadata is free-form bytes (ypy-websocket's ``metadata_callback``); JSON objects with a
    user name, origin and reason (what the room manager stores: ``{"origin": "client",
    "user": "alice"}``, ``{"origin": "server", "reason": "load"}``) are shown as
    ``alice (client)``, ``server (load)``, ``alice (client, restore)``; other text as is,
    binary as hex.
    """
    if not metadata:
        return ""
    try:
        text = metadata.decode("utf-8")
    except UnicodeDecodeError:
        return "0x" + metadata[:16].hex() + ("…" if len(metadata) > 16 else "")
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if isinstance(value, dict):
        name = next(
            (str(value[k]) for k in ("username", "user", "name", "author") if value.get(k)), ""
        )
        origin = next((str(value[k]) for k in ("origin", "source") if value.get(k)), "")
        reason = str(value["reason"]) if value.get("reason") else ""
        if name:
            details = ", ".join(part for part in (origin, reason) if part)
            return f"{name} ({details})" if details else name
        if origin:
            return f"{origin} ({reason})" if reason else origin
    return text


# ---------------------------------------------------------------------------- times

_RELATIVE = re.compile(r"^-\s*(\d+(?:\.\d+)?)\s*([smhdw])$")
_EPOCH = re.compile(r"^\d+(?:\.\d+)?$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(text: str, now: float | None = None) -> float:
    """Epoch seconds from ISO 8601 (local time when no offset), epoch seconds, ``now`` or a
    relative time back from now (``-30s``, ``-10m``, ``-2h``, ``-1d``, ``-1w``)."""
    value = text.strip()
    if value.lower() == "now":
        return time.time() if now is None else now
    if _EPOCH.match(value):
        return float(value)
    match = _RELATIVE.match(value.lower())
    if match:
        base = time.time() if now is None else now
        return base - float(match.group(1)) * _UNITS[match.group(2)]
    iso = value[:-1] + "+00:00" if value[-1:] in "zZ" and value else value
    try:
        parsed = datetime.fromisoformat(iso)
    except ValueError:
        raise ValueError(
            f"cannot read the time {text!r}: use ISO 8601 (2026-11-28T09:30:00), "
            "epoch seconds (1795844705.7) or a relative time (-10m, -2h, -1d)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.astimezone()  # naive means the local time zone
    return parsed.timestamp()


def format_time(timestamp: float | None) -> str:
    """ISO 8601 in the local time zone, rounded UP to the millisecond.

    Rounding up means that passing the printed time back as ``--at`` includes the update it
    names (a truncated time would be a fraction of a millisecond before it).
    """
    if timestamp is None:
        return "-"
    ceiled = math.ceil(timestamp * 1000) / 1000
    moment = datetime.fromtimestamp(ceiled, tz=timezone.utc).astimezone()
    return moment.isoformat(timespec="milliseconds")
