"""Copy every row that can still be read from a damaged SQLite database into a new one.

Rows are read by rowid ranges, never by one statement over a whole table: SQLite ends a
statement at the first page it cannot read, and Python's cursor has then already stepped
past the row before it. A batch that fails is retried smaller, down to one row; a row that
still fails is skipped by seeking further (doubling the distance, then bisecting back to the
first rowid that reads), so a bad leaf page loses the rows on it and nothing else (a bad
interior page, the rows under it).

What is copied, keeping rowids (hence each document's order), timestamps and metadata:
``yupdates`` and our ``ystore_pending`` (committed, not yet folded: folded here), pycrdt-store's
``ycheckpoints``, ``ystore_snapshots`` rows whose snapshot row survived, and the rows of every
other table of ours (``ystore_*``, e.g. ``ystore_attributes``). An update must decode as a Yjs
update; a document whose salvaged updates leave structs pending (they need an update that was
lost) keeps nothing: it opens from its file. ``keep_all`` (a read-only look at a damaged copy)
skips both checks, so that ``jupyter ystore verify`` can report what the copy holds.
"""

from __future__ import annotations

import math
import re
import sqlite3
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Iterator

from jupyter_ystore.stores.damaged import replays_cleanly, usable_update
from jupyter_ystore.stores.sqlite import compat, pending
from jupyter_ystore.stores.sqlite.errors import is_damage
from jupyter_ystore.stores.sqlite.schema import _create

_FIRST_ROWID = -(2**63)
_LAST_ROWID = 2**63 - 1
_BATCH = 512
#: Tables whose rows are handled one by one below; other ``ystore_*`` tables are copied as is.
_OWN = {compat.UPDATES_TABLE, pending.TABLE, compat.CHECKPOINTS_TABLE, compat.SNAPSHOTS_TABLE}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

Row = tuple[Any, ...]


@dataclass
class Report:
    """What a salvage found and kept."""

    documents: int = 0  # documents with something kept
    records: int = 0  # updates and checkpoints kept
    dropped: list[str] = field(default_factory=list)  # documents whose rows do not replay
    invalid: int = 0  # rows read but unusable (not a Yjs update, no path, no time)
    unreadable: int = 0  # places where SQLite could not read a page (rows lost there)
    other_rows: int = 0  # rows of our other tables (ystore_attributes, ...)
    schema: bool = True  # False: not even the list of tables could be read


def read_only_uri(path: str, *, immutable: bool = False) -> str:
    """A URI opening ``path`` without ever writing it (``immutable``: no -shm needed, the
    WAL is ignored)."""
    mode = "immutable=1" if immutable else "mode=ro"
    return f"file:{urllib.parse.quote(path)}?{mode}"


def connect_read_only(path: str) -> sqlite3.Connection:
    """A read-only connection to a damaged file: it sees the file's WAL if it can (a -shm
    can be created or exists), else the main file alone."""
    try:
        conn = sqlite3.connect(read_only_uri(path), uri=True, isolation_level=None)
    except sqlite3.Error:
        conn = None
    if conn is not None:
        try:
            conn.execute("PRAGMA schema_version").fetchone()
            return conn
        except sqlite3.DatabaseError as exc:
            if is_damage(exc):
                return conn  # every read will say so; the salvage then finds nothing
            conn.close()
    return sqlite3.connect(read_only_uri(path, immutable=True), uri=True, isolation_level=None)


def salvage(source: sqlite3.Connection, dest: sqlite3.Connection, *, keep_all: bool) -> Report:
    """Copy what ``source`` still holds into ``dest`` (empty; our tables are created in it).

    Errors other than damage (a lock, a full disk while writing ``dest``) are raised.
    """
    report = Report()
    _create(dest, "salvage")
    tables, indexes = _tables(source, report)
    dest.execute("BEGIN")
    try:
        if compat.UPDATES_TABLE in tables or pending.TABLE in tables:
            _copy_updates(source, dest, tables, report, keep_all)
        if compat.CHECKPOINTS_TABLE in tables:
            _copy_checkpoints(source, dest, report, keep_all)
        if not keep_all:
            _drop_unreplayable(dest, report)
        if compat.SNAPSHOTS_TABLE in tables:
            _copy_snapshots(source, dest, report)
        for name, sql in tables.items():
            if name.startswith("ystore_") and name not in _OWN and _NAME.match(name):
                _copy_table(source, dest, name, sql, indexes.get(name, []), report)
        dest.execute("COMMIT")
    except BaseException:
        if dest.in_transaction:
            dest.execute("ROLLBACK")
        raise
    report.documents, report.records = dest.execute(
        "SELECT count(DISTINCT path), count(*) FROM "
        "(SELECT path FROM yupdates UNION ALL SELECT path FROM ycheckpoints)"
    ).fetchone()
    return report


# ---------------------------------------------------------------------- reading


def _tables(
    source: sqlite3.Connection, report: Report
) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Each table's CREATE statement, and the CREATE INDEX statements of each table."""
    try:
        rows = source.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
    except sqlite3.DatabaseError as exc:
        if not is_damage(exc):
            raise
        report.schema = False
        report.unreadable += 1
        return {}, {}
    tables: dict[str, str] = {}
    indexes: dict[str, list[str]] = {}
    for kind, name, table, sql in rows:
        if kind == "table" and isinstance(name, str) and isinstance(sql, str):
            tables[name] = sql
        elif kind == "index" and isinstance(table, str) and isinstance(sql, str):
            indexes.setdefault(table, []).append(sql)
    return tables, indexes


def read_rows(
    source: sqlite3.Connection, table: str, columns: str, report: Report
) -> Iterator[Row]:
    """``(rowid, *columns)`` of every row of ``table`` SQLite can read, in rowid order."""
    select = f'SELECT rowid, {columns} FROM "{table}" WHERE rowid >= ? ORDER BY rowid LIMIT ?'
    pos, size = _FIRST_ROWID, 16
    while True:
        try:
            rows = source.execute(select, (pos, size)).fetchall()
        except sqlite3.DatabaseError as exc:
            if not is_damage(exc):
                raise
            if size > 1:
                size = max(1, size // 4)
                continue
            report.unreadable += 1
            after = _next_readable(source, select, pos)
            if after is None:
                return
            pos, size = after, 16
            continue
        yield from rows
        if len(rows) < size or rows[-1][0] >= _LAST_ROWID:
            return
        pos, size = rows[-1][0] + 1, min(size * 4, _BATCH)


def _next_readable(source: sqlite3.Connection, select: str, bad: int) -> int | None:
    """The smallest rowid above ``bad`` from which a row (or the table's end) reads."""

    def reads(start: int) -> bool:
        try:
            source.execute(select, (start, 1)).fetchall()
        except sqlite3.DatabaseError as exc:
            if not is_damage(exc):
                raise
            return False
        return True

    low, step = bad, 1  # ``low`` fails to read
    while True:
        high = min(bad + step, _LAST_ROWID)
        if reads(high):
            break
        if high == _LAST_ROWID:
            return None
        low, step = high, step * 2
    while high - low > 1:
        middle = (low + high) // 2
        if reads(middle):
            high = middle
        else:
            low = middle
    return high


def _scan_rows(
    source: sqlite3.Connection, table: str, columns: str, report: Report
) -> Iterator[Row]:
    """Every row a plain scan reads (for a table without rowids): up to the first bad page."""
    try:
        for row in source.execute(f'SELECT {columns} FROM "{table}"'):
            yield row
    except sqlite3.DatabaseError as exc:
        if not is_damage(exc):
            raise
        report.unreadable += 1


# ---------------------------------------------------------------------- updates


def _timestamp(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = float(value)
        return value if math.isfinite(value) else None
    return None


def _record(row: Row, keep_all: bool) -> tuple[int, str, bytes, bytes, float] | None:
    """A checked ``(rowid, path, update, metadata, timestamp)``, or None to skip it."""
    rowid, path, update, metadata, timestamp = row
    ts = _timestamp(timestamp)
    if not isinstance(path, str) or ts is None or not isinstance(update, bytes):
        return None
    if not keep_all and not usable_update(update):
        return None
    if isinstance(metadata, str):
        metadata = metadata.encode("utf-8", "replace")
    return rowid, path, update, metadata if isinstance(metadata, bytes) else b"", ts


def _copy_updates(
    source: sqlite3.Connection,
    dest: sqlite3.Connection,
    tables: dict[str, str],
    report: Report,
    keep_all: bool,
) -> None:
    columns = "path, yupdate, metadata, timestamp"
    insert = (
        "INSERT INTO yupdates (rowid, path, yupdate, metadata, timestamp) VALUES (?, ?, ?, ?, ?)"
    )
    newest = 0
    if compat.UPDATES_TABLE in tables:
        for row in read_rows(source, compat.UPDATES_TABLE, columns, report):
            record = _record(row, keep_all)
            if record is None:
                report.invalid += 1
                continue
            dest.execute(insert, record)
            newest = max(newest, record[0])
    if pending.TABLE not in tables:
        return
    waiting = []
    for row in read_rows(source, pending.TABLE, columns, report):
        record = _record(row, keep_all)
        if record is None:
            report.invalid += 1
        else:
            waiting.append(record)
    # Folded as ``_sqlite_pending.fold`` would: keeping rowids unless a legacy writer took
    # them, else after every yupdates row, in their order.
    if waiting and waiting[0][0] <= newest:
        waiting = [(newest + 1 + i, *record[1:]) for i, record in enumerate(waiting)]
    dest.executemany(insert, waiting)


def _copy_checkpoints(
    source: sqlite3.Connection, dest: sqlite3.Connection, report: Report, keep_all: bool
) -> None:
    insert = "INSERT OR REPLACE INTO ycheckpoints (path, checkpoint, timestamp) VALUES (?, ?, ?)"
    for _rowid, path, checkpoint, timestamp in read_rows(
        source, compat.CHECKPOINTS_TABLE, "path, checkpoint, timestamp", report
    ):
        ts = _timestamp(timestamp)
        if (
            not isinstance(path, str)
            or ts is None
            or not isinstance(checkpoint, bytes)
            or not (keep_all or usable_update(checkpoint))
        ):
            report.invalid += 1
            continue
        dest.execute(insert, (path, checkpoint, ts))


def _drop_unreplayable(dest: sqlite3.Connection, report: Report) -> None:
    """Forget documents whose salvaged updates need one that was lost (see the module)."""
    paths = [
        path
        for (path,) in dest.execute(
            "SELECT path FROM yupdates UNION SELECT path FROM ycheckpoints ORDER BY 1"
        ).fetchall()
    ]
    for path in paths:
        updates = [
            bytes(u)
            for (u,) in dest.execute("SELECT checkpoint FROM ycheckpoints WHERE path = ?", (path,))
        ]
        updates += [
            bytes(u)
            for (u,) in dest.execute(
                "SELECT yupdate FROM yupdates WHERE path = ? ORDER BY rowid", (path,)
            )
        ]
        if not replays_cleanly(updates):
            dest.execute("DELETE FROM yupdates WHERE path = ?", (path,))
            dest.execute("DELETE FROM ycheckpoints WHERE path = ?", (path,))
            report.dropped.append(path)


def _copy_snapshots(source: sqlite3.Connection, dest: sqlite3.Connection, report: Report) -> None:
    """Snapshot rows whose snapshot (a yupdates row of the same document) was kept."""
    for _rowid, path, row, timestamp, covered in read_rows(
        source, compat.SNAPSHOTS_TABLE, "path, row, timestamp, covered", report
    ):
        kept = dest.execute(
            "SELECT 1 FROM yupdates WHERE rowid = ? AND path = ?", (row, path)
        ).fetchone()
        if kept and _timestamp(timestamp) is not None and isinstance(covered, int):
            dest.execute(
                "INSERT OR REPLACE INTO ystore_snapshots (path, row, timestamp, covered) "
                "VALUES (?, ?, ?, ?)",
                (path, row, float(timestamp), covered),
            )


# ---------------------------------------------------------------------- other tables of ours


def _copy_table(
    source: sqlite3.Connection,
    dest: sqlite3.Connection,
    name: str,
    sql: str,
    indexes: list[str],
    report: Report,
) -> None:
    """Rows of another ``ystore_*`` table (made as it was if the layout lacks it), except
    those of documents dropped above."""
    exists = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
    if dest.execute(exists, (name,)).fetchone() is None:
        if not sql.lstrip().upper().startswith("CREATE TABLE"):
            return
        try:
            dest.execute(sql)
            for statement in indexes:
                if statement.lstrip().upper().startswith(("CREATE INDEX", "CREATE UNIQUE INDEX")):
                    dest.execute(statement)
        except sqlite3.Error:  # garbled schema text: nothing to copy it into
            report.unreadable += 1
            return
    try:
        wanted = [row[1] for row in source.execute(f'PRAGMA table_info("{name}")')]
        have = {row[1] for row in dest.execute(f'PRAGMA table_info("{name}")')}
    except sqlite3.DatabaseError as exc:
        if not is_damage(exc):
            raise
        report.unreadable += 1
        return
    columns = [c for c in wanted if c in have and _NAME.match(c)]
    if not columns:
        return
    listed = ", ".join(f'"{c}"' for c in columns)
    try:
        source.execute(f'SELECT rowid FROM "{name}" LIMIT 0')
        rows: Iterator[Row] = (row[1:] for row in read_rows(source, name, listed, report))
    except sqlite3.OperationalError:  # WITHOUT ROWID
        rows = _scan_rows(source, name, listed, report)
    dropped = set(report.dropped)
    at = columns.index("path") if "path" in columns else None
    insert = f'INSERT OR IGNORE INTO "{name}" ({listed}) VALUES ({", ".join("?" * len(columns))})'
    for row in rows:
        if at is not None and row[at] in dropped:
            continue
        try:
            dest.execute(insert, row)
        except sqlite3.IntegrityError:  # a garbled value against a constraint
            report.invalid += 1
            continue
        report.other_rows += 1
