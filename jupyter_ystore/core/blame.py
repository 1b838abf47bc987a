"""Who wrote what: for each cell of a document, and each line of its source, who last
changed it and when, from the authors recorded with the stored history.

The history (``history.History``: retained points, then the raw updates) is replayed in time
order into one document whose changes are observed: each change says where it happened (a
cell inserted or deleted, a key of a cell set, characters inserted into or deleted from a
cell's source), so every byte of every source carries the entry that inserted it, and every
place where something was deleted carries the entry that deleted it. A line's last change is
the newest of those over its bytes; a cell's, the newest of its lines and of its other keys
(outputs, metadata, type). An entry is one update (exact time, one author) or one retained
point (its end time, the authors of the updates it summarises): attribution is as precise
as the history ``history_retention`` kept. Text files are one "cell", their ``source``.

Everything here is CPU work on bytes: run it in a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pycrdt import Array, Doc, Map, Text

from jupyter_ystore.core import content as _content
from jupyter_ystore.core.history import History, Record, format_time
from jupyter_ystore.core.ydoc import crdt_errors


@dataclass(frozen=True)
class Change:
    """Who changed something, and when (``start`` < ``time``: somewhere in between)."""

    time: float
    authors: tuple[str, ...]
    start: float
    updates: int

    def to_json(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "at": format_time(self.time),
            "since": format_time(self.start) if self.start < self.time else None,
            "authors": list(self.authors),
            "updates": self.updates,
        }


@dataclass
class LineBlame:
    number: int  # from 1
    text: str
    change: Change | None

    def to_json(self) -> dict[str, Any]:
        return {"line": self.number, "text": self.text, **_change_json(self.change)}


@dataclass
class CellBlame:
    index: int
    id: str | None
    cell_type: str | None
    change: Change | None
    lines: list[LineBlame] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "id": self.id,
            "cell_type": self.cell_type,
            **_change_json(self.change),
            "lines": [line.to_json() for line in self.lines],
        }


@dataclass
class Blame:
    """A document's cells (a text file: one), oldest history first."""

    kind: str  # "notebook" or "text"
    cells: list[CellBlame]
    since: float | None  # the oldest state the history reaches

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "since": self.since,
            "since_at": format_time(self.since) if self.since is not None else None,
            "cells": [cell.to_json() for cell in self.cells],
        }


def _change_json(change: Change | None) -> dict[str, Any]:
    if change is None:
        return {"time": None, "at": None, "since": None, "authors": [], "updates": 0}
    return change.to_json()


class BlameError(ValueError):
    """The document is neither a notebook nor a text file."""


# ---------------------------------------------------------------------- tracking


class _Source:
    """A text's bytes (pycrdt counts Text positions in UTF-8 bytes), with, per byte, the
    entry that inserted it and the newest entry that deleted something right there."""

    def __init__(self, text: str, stamp: int):
        self.data = bytearray(text.encode("utf-8"))
        self.inserted = [stamp] * len(self.data)
        self.deleted = [-1] * len(self.data)

    def apply(self, delta: list[dict[str, Any]], stamp: int) -> None:
        pos = 0
        for op in delta:
            if "retain" in op:
                pos += int(op["retain"])
            elif "insert" in op:
                value = op["insert"]
                chunk = value.encode("utf-8") if isinstance(value, str) else b"\x00"
                self.data[pos:pos] = chunk
                self.inserted[pos:pos] = [stamp] * len(chunk)
                self.deleted[pos:pos] = [-1] * len(chunk)
                pos += len(chunk)
            elif "delete" in op:
                count = int(op["delete"])
                del self.data[pos : pos + count]
                del self.inserted[pos : pos + count]
                del self.deleted[pos : pos + count]
                # the line the deletion changed: the one holding the byte before it (a
                # line's newline starts it), else the first
                mark = max(pos - 1, 0)
                if mark < len(self.data):
                    self.deleted[mark] = max(self.deleted[mark], stamp)

    def check(self, text: str, stamp: int) -> None:
        """Start again from ``text`` if the tracked bytes drifted from it (an embed, say)."""
        actual = text.encode("utf-8")
        if bytes(self.data) != actual:
            self.__init__(text, stamp)  # type: ignore[misc]

    def lines(self) -> list[tuple[str, int]]:
        """Each line's text and newest entry (-1: none known), as an editor shows them
        ("a\n" is "a" and an empty line). A line's newline is the one that starts it:
        pressing Enter at the end of a line and typing changes the new line only."""
        found = []
        data = bytes(self.data)
        start = 0
        while True:
            end = data.find(b"\n", start)
            stop = len(data) if end < 0 else end
            first = start - 1 if start > 0 else 0  # the newline before it
            newest = max(
                (max(self.inserted[i], self.deleted[i]) for i in range(first, stop)), default=-1
            )
            found.append((data[start:stop].decode("utf-8", "replace"), newest))
            if end < 0:
                break
            start = end + 1
        return found

    @property
    def newest(self) -> int:
        return max(max(self.inserted, default=-1), max(self.deleted, default=-1))


class _Cell:
    def __init__(self, cell: Any, stamp: int):
        self.stamp = stamp
        self.source: _Source | None = None
        self.reset_source(cell, stamp)

    def reset_source(self, cell: Any, stamp: int) -> None:
        source = cell.get("source") if isinstance(cell, Map) else None
        self.source = _Source(str(source), stamp) if isinstance(source, Text) else None


def _entries(history: History) -> list[tuple[Record, bytes]]:
    """Every record with its bytes, in time order (as the timeline replays them)."""
    order = sorted(
        range(len(history.records)),
        key=lambda i: (history.records[i].timestamp, history.records[i].index),
    )
    return [(history.records[i], history.updates[i]) for i in order]


def _change(record: Record) -> Change:
    start = record.start if record.start is not None else record.timestamp
    return Change(record.timestamp, tuple(record.who()), start, record.updates)


def blame(history: History) -> Blame:
    """Who last changed each cell and line of the document ``history`` ends with."""
    if not history.records:
        raise BlameError(f"{history.path}: nothing is stored")
    whole = history.state_at(None)
    types = _content.root_types(whole)
    entries = _entries(history)
    changes = [_change(record) for record, _update in entries]
    since = history.oldest.timestamp if history.oldest is not None else None
    if types.get("cells") is Array:
        cells = _replay_notebook(entries)
        return Blame("notebook", _cell_blames(cells, changes), since)
    if types.get("source") is Text:
        source = _replay_text(entries)
        cell = CellBlame(0, None, None, _lookup(changes, source.newest))
        cell.lines = _line_blames(source, changes)
        return Blame("text", [cell], since)
    raise BlameError(f"{history.path}: neither a notebook (cells) nor a text file (source)")


def _lookup(changes: list[Change], stamp: int) -> Change | None:
    return changes[stamp] if stamp >= 0 else None


def _line_blames(source: _Source, changes: list[Change]) -> list[LineBlame]:
    return [
        LineBlame(number, text, _lookup(changes, stamp))
        for number, (text, stamp) in enumerate(source.lines(), start=1)
    ]


def _cell_blames(state: tuple[Array, list[_Cell]], changes: list[Change]) -> list[CellBlame]:
    array, tracked = state
    found = []
    for index, (cell, track) in enumerate(zip(array, tracked)):
        newest = track.stamp
        lines: list[LineBlame] = []
        if track.source is not None:
            newest = max(newest, track.source.newest)
            lines = _line_blames(track.source, changes)
        cell_id = cell.get("id") if isinstance(cell, Map) else None
        cell_type = cell.get("cell_type") if isinstance(cell, Map) else None
        found.append(
            CellBlame(
                index,
                str(cell_id) if cell_id is not None else None,
                str(cell_type) if cell_type is not None else None,
                _lookup(changes, newest),
                lines,
            )
        )
    return found


def _replay_notebook(entries: list[tuple[Record, bytes]]) -> tuple[Array, list[_Cell]]:
    doc = Doc()
    cells = doc.get("cells", type=Array)
    tracked: list[_Cell] = []
    pending: list[Any] = []
    cells.observe_deep(lambda events: pending.extend(events))
    for stamp, (_record, update) in enumerate(entries):
        pending.clear()
        with crdt_errors():  # stored bytes: a yrs panic is an error for this request
            doc.apply_update(update)
        touched: set[int] = set()
        for event in sorted(pending, key=lambda e: len(e.path)):
            path = list(event.path)
            if not path:  # the cells themselves: inserted, deleted
                pos = 0
                for op in event.delta:
                    if "retain" in op:
                        pos += int(op["retain"])
                    elif "insert" in op:
                        added = [_Cell(cell, stamp) for cell in op["insert"]]
                        tracked[pos:pos] = added
                        pos += len(added)
                    elif "delete" in op:
                        del tracked[pos : pos + int(op["delete"])]
                continue
            index = path[0]
            if not isinstance(index, int) or not 0 <= index < len(tracked):
                continue
            track = tracked[index]
            track.stamp = stamp
            if path[1:] == ["source"] and hasattr(event, "delta") and track.source is not None:
                track.source.apply(event.delta, stamp)
                touched.add(index)
            elif len(path) == 1 and "source" in getattr(event, "keys", {}):
                track.reset_source(cells[index], stamp)  # a new source text
        if len(tracked) != len(cells):  # drifted (should not happen): start again from here
            tracked = [_Cell(cell, stamp) for cell in cells]
        for index in touched:
            source = tracked[index].source
            if source is not None:
                source.check(str(cells[index].get("source")), stamp)
    return cells, tracked


def _replay_text(entries: list[tuple[Record, bytes]]) -> _Source:
    doc = Doc()
    text = doc.get("source", type=Text)
    source = _Source("", -1)
    pending: list[Any] = []
    text.observe(lambda event: pending.append(event))
    for stamp, (_record, update) in enumerate(entries):
        pending.clear()
        with crdt_errors():
            doc.apply_update(update)
        for event in pending:
            source.apply(event.delta, stamp)
        if pending:
            source.check(str(text), stamp)
    return source
