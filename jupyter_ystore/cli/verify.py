"""`jupyter ystore verify`: read every record, report damage and what can still be used.

Verification never changes the store. That matters for file stores: opening a log repairs a
torn tail (sets the bytes aside), so their files are first scanned here read-only, by the
store's own reader of the ``VERSION:2`` format (``stores/file/format``), and opened through
the store only when intact. (A SQLite database is opened as every command opens it: a
damaged one is first moved aside and salvaged, see ``stores/sqlite/recover``;
``--SQLiteYStore.db_path=<copy>`` verifies the copy.)
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import anyio
import pycrdt
from traitlets import Bool

from jupyter_ystore.cli.base import CliError, StoreCommand, flags, usage_error
from jupyter_ystore.core import ydoc as _ydoc
from jupyter_ystore.core.codec import read_var_uint
from jupyter_ystore.core.history import format_time
from jupyter_ystore.core.ydoc import crdt_errors
from jupyter_ystore.errors import YDocNotFound, YStoreError
from jupyter_ystore.stores.damaged import is_damaged_copy
from jupyter_ystore.stores.file import FileYStore
from jupyter_ystore.stores.file import format as log_format

Row = tuple[bytes, bytes, float]


@dataclass
class Report:
    """What verification found in one document."""

    key: str
    records: int = 0  # records that could be read at all
    usable: int = 0  # records that decode as Yjs updates
    corrupt_records: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # damage that is not one record
    warnings: list[str] = field(default_factory=list)
    usable_until: float | None = None  # newest timestamp among usable records

    @property
    def ok(self) -> bool:
        return not self.corrupt_records and not self.problems

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data


def check_rows(report: Report, rows: Iterable[Row], snapshots: int = 0) -> None:
    """Check each record (update decodes, timestamp plausible) and the document as a whole
    (every update applies: none depends on a missing one). The first ``snapshots`` records
    are snapshots, whose time may be newer than the rows after them (legacy checkpoints)."""
    usable: list[bytes] = []
    previous = -math.inf
    older = 0
    doc = pycrdt.Doc()
    for index, (update, _metadata, timestamp) in enumerate(rows):
        report.records += 1
        problem = None
        if not isinstance(timestamp, float) or not math.isfinite(timestamp):
            problem = f"timestamp {timestamp!r} is not a time"
        elif not _ydoc.is_valid_update(update):
            problem = f"{len(update)} bytes that do not decode as a Yjs update"
        if problem:
            report.corrupt_records.append(
                {"index": index, "timestamp": timestamp if isinstance(timestamp, float) else None, "problem": problem}
            )
            continue
        if index >= snapshots:
            if timestamp < previous:
                older += 1
            previous = max(previous, timestamp)
        try:
            with crdt_errors():
                doc.apply_update(update)
        except Exception as exc:  # decodes, yet the document refuses it (or yrs panics)
            report.corrupt_records.append({"index": index, "timestamp": timestamp, "problem": f"cannot be applied ({exc})"})
            continue
        usable.append(update)
        report.usable += 1
        report.usable_until = timestamp if report.usable_until is None else max(report.usable_until, timestamp)
    if older:
        report.warnings.append(
            f"{older} records are older than a record stored before them (a clock moved back)"
        )
    if usable and _has_pending(usable, doc):
        report.problems.append(
            "some updates depend on updates that are not stored: their edits cannot be shown"
        )


def _has_pending(updates: list[bytes], doc: pycrdt.Doc) -> bool:
    """Whether some stored structs never made it into ``doc`` (their dependencies are missing).

    The part of the stored updates that ``doc``'s state vector does not cover starts with the
    number of client struct groups left; anything but 0 means content that cannot be shown.
    """
    with crdt_errors():
        rest = pycrdt.get_update(_ydoc.merge_updates(updates), doc.get_state())
    groups, _ = read_var_uint(rest, 0)
    return groups > 0


@dataclass
class FileScan:
    rows: list[Row]
    problem: str | None = None


def scan_log_file(path: Path) -> FileScan:
    """Decode a ``VERSION:2`` log without opening it for writing, judging it as the store
    will (``stores.file.format``): a torn last record, or damage with the intact records
    after it, which are reported as usable too."""
    buf = path.read_bytes()
    if not buf:
        return FileScan([], "the file is empty")
    if not buf.startswith(log_format.HEADER):
        line = buf.split(b"\n", 1)[0][:40].decode("ascii", "replace")
        return FileScan([], f"not a version 2 ystore log (first line {line!r})")
    found = log_format.find_intact(buf, str(path))
    rows, stop, index = found.records, found.stop, len(found.before)
    if stop >= len(buf):
        return FileScan(rows)
    if found.resumed_at is not None:
        return FileScan(
            rows,
            f"record #{index} at byte {stop} is damaged ({found.resumed_at - stop} bytes "
            f"lost); {len(found.after)} intact records follow from byte {found.resumed_at}",
        )
    if not found.damaged:
        return FileScan(
            rows,
            f"the file ends inside record #{index} ({len(buf) - stop} bytes from byte {stop}): "
            "a write cut short by a crash; the store sets these bytes aside the next time "
            "the document is opened",
        )
    return FileScan(
        rows,
        f"record #{index} at byte {stop} is damaged: the {len(buf) - stop} bytes from there "
        "cannot be read",
    )


class VerifyApp(StoreCommand):
    description = "Read every record of a document (or --all); report damage and what is usable."
    flags = {**flags, "all": ({"VerifyApp": {"all": True}}, "Verify every document.")}
    all = Bool(False, config=True, help="Verify every document in the store.")

    async def run(self) -> int:
        if self.all == bool(self.extra_args):
            raise usage_error("verify takes one document, or --all")
        self._snapshots: dict[str, int] = {}
        if self.all:
            keys = await self._all_keys()
        else:
            keys = [await self._key(self.extra_args[0])]
        reports = []
        for key in self.progress_bar(keys, unit="doc", desc="verifying"):
            reports.append(await self.verify(key))
        if self.json:
            self.emit_json([r.to_json() for r in reports])
        else:
            for report in reports:
                self._print(report)
            bad = sum(not r.ok for r in reports)
            self.note(f"{len(reports)} documents verified, {bad} damaged")
        return 0 if all(r.ok for r in reports) else 1

    async def _key(self, doc: str) -> str:
        path = self._log_file(doc)
        if path is not None and path.is_file():
            return doc  # a file store document, even one too damaged to be listed
        info = await self.find_document(doc)
        self._snapshots[info.path] = info.snapshots
        return info.path

    async def _all_keys(self) -> list[str]:
        infos = await self.list_documents()
        self._snapshots.update((info.path, info.snapshots) for info in infos)
        keys = [info.path for info in infos]
        folder = self._log_folder()
        if folder is not None:
            # Listing skips logs it cannot decode; those are exactly the ones to report.
            known = set(keys)
            for file in await anyio.to_thread.run_sync(_log_files, folder):
                key = file.relative_to(folder).as_posix()
                if key not in known:
                    keys.append(key)
        return sorted(keys)

    def _log_folder(self) -> Path | None:
        """The folder of a file store's logs (None for database stores)."""
        store = self.make_store(None)
        root = store._root() if isinstance(store, FileYStore) else None
        return Path(os.path.realpath(os.path.expanduser(root))) if root else None

    def _log_file(self, key: str) -> Path | None:
        """The log of document ``key`` in a file store (None for database stores)."""
        store = self.make_store(key)
        return store.file_path if isinstance(store, FileYStore) else None

    async def verify(self, key: str) -> Report:
        report = Report(key)
        path = self._log_file(key)
        if path is not None and path.is_file():
            scan = await anyio.to_thread.run_sync(scan_log_file, path)
            if scan.problem:
                report.problems.append(scan.problem)
                check_rows(report, scan.rows)
                return report
        try:
            async with self.open_store(key) as store:
                rows = []
                try:
                    async for row in store.read():
                        rows.append(row)
                except YDocNotFound:
                    if not rows:
                        raise
                except YStoreError as exc:
                    report.problems.append(f"reading stopped after {len(rows)} records: {exc}")
                check_rows(report, rows, self._snapshots.get(key, 0))
        except YDocNotFound:
            raise CliError(f"unknown document {key!r}: nothing is stored for it") from None
        except YStoreError as exc:
            report.problems.append(f"the store cannot open it: {exc}")
        return report

    def _print(self, report: Report) -> None:
        if report.ok:
            extra = f"; {len(report.warnings)} warnings" if report.warnings else ""
            print(f"ok       {report.key}: {report.records} records{extra}")
        else:
            print(f"DAMAGED  {report.key}:")
            for record in report.corrupt_records:
                when = format_time(record["timestamp"]) if record["timestamp"] else "?"
                print(f"  record #{record['index']} ({when}): {record['problem']}")
            for problem in report.problems:
                print(f"  {problem}")
            until = format_time(report.usable_until) if report.usable_until else "-"
            print(
                f"  recoverable: {report.usable} of {report.records} readable records "
                f"(edits up to {until})"
            )
        for warning in report.warnings[:5]:
            print(f"  warning: {warning}")


def _log_files(folder: Path) -> list[Path]:
    """Files under ``folder`` that start like a ystore log (compaction temp files and damaged
    copies set aside excluded: a copy is verified by naming it)."""
    found = []
    for dirpath, _dirnames, filenames in os.walk(folder):
        for name in filenames:
            if name.endswith(".compact.tmp") or is_damaged_copy(name):
                continue
            file = Path(dirpath) / name
            try:
                with open(file, "rb") as f:
                    if f.read(8) == b"VERSION:":
                        found.append(file)
            except OSError:
                continue
    return found
