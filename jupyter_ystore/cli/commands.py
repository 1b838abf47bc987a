"""The `jupyter ystore` subcommands that look at documents and change them.

Each subcommand is a small JupyterApp (so ``--help`` and config work per subcommand); the
work is in ``run``, which returns the exit status. Errors are raised as ``CliError`` and
printed as one line by ``jupyter_ystore.cli.main``.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import anyio
from traitlets import Bool, Float, Integer, Unicode

from jupyter_ystore.cli.base import (
    CliError,
    StoreCommand,
    aliases,
    flags,
    human_bytes,
    os_user,
    table,
    usage_error,
)
from jupyter_ystore.core import content as cli_content
from jupyter_ystore.core.history import (
    History,
    HistoryError,
    Record,
    format_time,
    group_points,
    parse_time,
    read_history,
)
from jupyter_ystore.stores.base import BaseYStore, DocumentInfo
from jupyter_ystore.stores.retention import Retention, VersionExists, VersionNotFound


def info_json(info: DocumentInfo, path: str | None) -> dict[str, Any]:
    return {
        "key": info.path,
        "path": path,
        "updates": info.updates,
        "bytes": info.bytes,
        "snapshots": info.snapshots,
        "first_timestamp": info.first_timestamp,
        "last_timestamp": info.last_timestamp,
        "first": format_time(info.first_timestamp) if info.first_timestamp is not None else None,
        "last": format_time(info.last_timestamp) if info.last_timestamp is not None else None,
    }


class DocCommand(StoreCommand):
    """A subcommand about one document (DOC: its key, mapped file path, or file id)."""

    at = Unicode(
        None,
        allow_none=True,
        config=True,
        help="A time: ISO 8601 (2026-11-28T09:30, local time without an offset), epoch "
        "seconds, or relative to now (-10m, -2h, -1d).",
    )

    def at_time(self, required: bool = False) -> float | None:
        if self.at is None:
            if required:
                raise usage_error("--at TIME is required")
            return None
        try:
            return parse_time(self.at)
        except ValueError as exc:
            raise usage_error(str(exc)) from None

    #: The history retention of the store ``load`` opened (for what history says it keeps).
    retention: Retention | None = None

    async def load(self, doc: str) -> tuple[DocumentInfo, History]:
        info = await self.find_document(doc)
        async with self.open_store(info.path) as store:
            self.retention = _retention_of(store)
            return info, await read_history(store, info.snapshots)

    def state_at(self, history: History, at: float | None) -> bytes:
        try:
            return history.state_at(at)
        except HistoryError as exc:
            raise CliError(str(exc)) from None

    def which(self, history: History, at: float | None) -> str:
        """What ``--at`` reached: the nearest retained point or update at or before it."""
        record = history.nearest(at)
        if at is None or record is None:
            return ""
        return f"the nearest at or before {format_time(at)}: {record.describe()}"

    async def write_restore(
        self, info: DocumentInfo, target: Any, metadata: dict[str, Any]
    ) -> tuple[bytes | None, bool]:
        """Make the document's content ``target(history)`` as ONE new update on top
        (history kept, so restoring again undoes it); returns the update and whether the
        store has live updates (a server with the document open sees the change)."""
        data = json.dumps({"username": os_user(), "origin": "jupyter ystore restore", **metadata})
        async with self.open_store(info.path, metadata_callback=lambda: data.encode()) as store:
            history = await read_history(store, info.snapshots)
            wanted = target(history)
            current = history.state_at(None)
            try:
                update = await anyio.to_thread.run_sync(cli_content.reset_update, current, wanted)
            except cli_content.ContentError as exc:
                raise CliError(f"{info.path}: {exc}") from None
            if update is not None:
                await store.write(update)
            live = bool(getattr(store, "supports_live_updates", False))
        if update is not None and not live:
            # A running server keeps an open document in memory and would not see this write.
            self.note(
                f"note: {self.store_class.__name__} has no live updates: if a server has this "
                "document open, close it there first (or restore again once it is closed)"
            )
        return update, live


def _retention_of(store: BaseYStore) -> Retention | None:
    try:
        return Retention.parse(getattr(store, "history_retention", 0))
    except ValueError:
        return None


def history_summary(history: History, retention: Retention | None) -> dict[str, Any]:
    """How far back the history reaches and what it costs (``info``, ``history``)."""
    oldest = history.oldest
    points = [r for r in history.records if r.kind == "point"]
    log = [r for r in history.records if r.kind != "point"]
    return {
        "reaches_back_to": oldest.timestamp if oldest else None,
        "reaches_back_to_at": format_time(oldest.timestamp) if oldest else None,
        "oldest": oldest.describe() if oldest else None,
        "retained_points": len(points),
        "retained_updates": sum(r.updates for r in points),
        "retained_bytes": sum(r.size for r in points),
        "log_records": len(log),
        "log_bytes": sum(r.size for r in log),
        "versions": [
            {"name": r.name, "time": r.timestamp, "at": format_time(r.timestamp), "saved_by": r.saved_by}
            for r in history.records
            if r.name is not None
        ],
        "retention": retention.spec() if retention is not None else None,
        "retention_text": retention.describe() if retention is not None else None,
    }


# ---------------------------------------------------------------------------- list


class ListApp(StoreCommand):
    description = "Every document in the store: key, file path, updates, bytes, first/last time."

    async def run(self) -> int:
        infos = await self.list_documents()
        mapper = self.file_ids()
        rows = [info_json(info, mapper.path_of(info.path)) for info in self.progress_bar(infos, unit="doc")]
        if self.json:
            self.emit_json(rows)
            return 0
        if not rows:
            self.note(f"no documents in the store ({self.store_class.__name__})")
            return 0
        lines = [("KEY", "PATH", "UPDATES", "SIZE", "FIRST", "LAST")]
        for row in rows:
            lines.append(
                (
                    row["key"],
                    row["path"] or "-",
                    str(row["updates"]),
                    human_bytes(row["bytes"]),
                    row["first"] or "-",
                    row["last"] or "-",
                )
            )
        for line in table(lines, right=(2, 3)):
            print(line)
        return 0


# ---------------------------------------------------------------------------- info


class InfoApp(DocCommand):
    description = "One document: key, file path, size, snapshots and its newest updates."
    aliases = {**aliases, "last": "InfoApp.last"}
    last = Integer(10, config=True, help="How many of the newest updates to show.")

    async def run(self) -> int:
        info, history = await self.load(self.one_doc())
        path = self.file_ids().path_of(info.path)
        summary = info_json(info, path)
        summary["kind"] = cli_content.detect_kind(info.path, history.state_at(None))
        summary["snapshot_records"] = [
            {"index": r.index, "timestamp": r.timestamp, "time": format_time(r.timestamp), "bytes": r.size}
            for r in history.records
            if r.snapshot
        ]
        summary["history"] = history_summary(history, self.retention)
        recent = history.records[-self.last :] if self.last > 0 else []
        summary["recent"] = [
            {
                "index": r.index,
                "timestamp": r.timestamp,
                "time": format_time(r.timestamp),
                "bytes": r.size,
                "metadata": r.metadata.decode("utf-8", "replace"),
                "author": ", ".join(r.who()),
                "snapshot": r.snapshot,
                "kind": r.kind,
                "updates": r.updates,
                "name": r.name,
            }
            for r in recent
        ]
        if self.json:
            self.emit_json(summary)
            return 0
        print(f"key:        {info.path}")
        print(f"path:       {path or '-'}")
        print(f"kind:       {summary['kind']}")
        print(f"updates:    {info.updates}")
        print(f"size:       {human_bytes(info.bytes)} ({info.bytes} bytes)")
        print(f"first:      {summary['first'] or '-'}")
        print(f"last:       {summary['last'] or '-'}")
        print(f"snapshots:  {info.snapshots}")
        for snap in summary["snapshot_records"]:
            print(f"  #{snap['index']}  {snap['time']}  {human_bytes(snap['bytes'])}")
        hist = summary["history"]
        print(f"history:    reaches back to {hist['reaches_back_to_at'] or '-'} ({hist['oldest'] or '-'})")
        print(
            f"            {hist['retained_points']} retained points "
            f"({hist['retained_updates']} updates, {human_bytes(hist['retained_bytes'])}) + "
            f"{hist['log_records']} records in the log ({human_bytes(hist['log_bytes'])})"
        )
        if hist["retention_text"]:
            print(f"            kept: {hist['retention_text']}")
        for version in hist["versions"]:
            by = f" by {version['saved_by']}" if version["saved_by"] else ""
            print(f"  version {version['name']!r}  {version['at']}{by}")
        if recent:
            print(f"newest {len(recent)} records:")
            rows = [
                (
                    f"#{r['index']}",
                    r["time"],
                    human_bytes(r["bytes"]),
                    r["author"] or "-",
                    f"{r['updates']} updates" if r["kind"] == "point" and r["updates"] != 1 else "",
                )
                for r in summary["recent"]
            ]
            for line in table(rows, right=(0, 2)):
                print("  " + line)
        return 0


# ---------------------------------------------------------------------------- history


class HistoryApp(DocCommand):
    description = "The points in time a document can go back to (grouped; see --resolution)."
    aliases = {
        **aliases,
        "max-points": "HistoryApp.max_points",
        "resolution": "HistoryApp.resolution",
    }
    flags = {
        **flags,
        "all": ({"HistoryApp": {"resolution": 0.0}}, "One line per stored update."),
    }
    max_points = Integer(
        40, config=True, help="Group updates into time buckets until at most this many lines."
    )
    resolution = Float(
        None,
        allow_none=True,
        config=True,
        help="Bucket width in seconds (0: every update); chosen from max_points when unset.",
    )

    async def run(self) -> int:
        info, history = await self.load(self.one_doc())
        if self.max_points < 1:
            raise usage_error("--max-points must be at least 1")
        points, width = group_points(
            history.records, max_points=self.max_points, resolution=self.resolution
        )
        summary = history_summary(history, self.retention)
        if self.json:
            self.emit_json(
                {
                    "key": info.path,
                    "resolution": width,
                    "points": [p.to_json() for p in points],
                    "history": summary,
                }
            )
            return 0
        updates = sum(r.updates for r in history.records)
        print(
            f"{info.path}: {updates} stored updates in {len(points)} points"
            + (f" ({_width_text(width)} buckets)" if width else "")
            + f", back to {summary['reaches_back_to_at']}"
        )
        if summary["retention_text"]:
            print(f"history kept: {summary['retention_text']}")
        print("restore any point with: jupyter ystore restore DOC --at AT")
        rows = [("AT", "UPDATES", "SIZE", "SINCE", "BY", "VERSION")]
        for point in points:
            rows.append(
                (
                    format_time(point.end),
                    "snapshot" if point.snapshot else str(point.updates),
                    human_bytes(point.bytes),
                    format_time(point.start) if point.updates > 1 else "",
                    ", ".join(point.authors) or "-",
                    repr(point.name) if point.name is not None else "",
                )
            )
        for line in table(rows, right=(1, 2)):
            print(line)
        return 0


def _width_text(width: float) -> str:
    for unit, seconds in (("d", 86400), ("h", 3600), ("min", 60)):
        if width >= seconds and width % seconds == 0:
            return f"{int(width // seconds)} {unit}"
    return f"{width:g} s"


# ---------------------------------------------------------------------------- export


class ExportApp(DocCommand):
    description = "The document as it was at --at TIME (default: now), as .ipynb, text or JSON."
    aliases = {
        **aliases,
        "at": "DocCommand.at",
        ("o", "output"): "ExportApp.output",
        "format": "ExportApp.format",
    }
    flags = {**flags, "force": ({"ExportApp": {"force": True}}, "Overwrite the output file.")}
    output = Unicode("", config=True, help="Write to this file instead of standard output.")
    format = Unicode(
        "auto",
        config=True,
        help="auto (from the document key and content), notebook, text, blob or json.",
    )
    force = Bool(False, config=True, help="Overwrite an existing output file.")

    async def run(self) -> int:
        doc = self.one_doc()
        if self.format != "auto" and self.format not in cli_content.KINDS:
            raise usage_error(
                f"--format must be auto or one of {', '.join(cli_content.KINDS)}, not {self.format!r}"
            )
        at = self.at_time()
        if self.output and os.path.exists(self.output) and not self.force:
            raise CliError(f"{self.output} exists: nothing written (use --force to overwrite)")
        info, history = await self.load(doc)
        state = self.state_at(history, at)
        kind = self.format
        if kind == "auto":
            # From the whole document, so that every --at exports the same format (from the
            # state at --at when a damaged newer record makes the whole unreadable).
            try:
                whole = history.state_at(None)
            except HistoryError:
                whole = state
            kind = cli_content.detect_kind(info.path, whole)
        try:
            data = await anyio.to_thread.run_sync(cli_content.export, state, kind)
        except cli_content.ContentError as exc:
            raise CliError(f"{info.path}: {exc}") from None
        if not self.output or self.output == "-":
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
            if at is not None:
                self.note(f"{info.path} as of {self.which(history, at)}")
            return 0
        tmp = f"{self.output}.jupyter-ystore.tmp"
        with open(tmp, "wb") as out:
            out.write(data)
        os.replace(tmp, self.output)
        when = format_time(at) if at is not None else "now"
        self.note(f"wrote {info.path} as of {when} ({kind}, {len(data)} bytes) to {self.output}")
        if at is not None:
            self.note(self.which(history, at))
        return 0


# ---------------------------------------------------------------------------- restore


class RestoreApp(DocCommand):
    description = (
        "Make a document be as it was at --at TIME, as one new update on top (history is kept)."
    )
    aliases = {**aliases, "at": "DocCommand.at"}

    async def run(self) -> int:
        doc = self.one_doc()
        at = self.at_time(required=True)
        info = await self.find_document(doc)
        reached: list[str] = []

        def target(history: History) -> bytes:
            state = self.state_at(history, at)
            reached.append(self.which(history, at))
            return state

        update, live = await self.write_restore(info, target, {"restored_to": at})
        result = {
            "key": info.path,
            "at": at,
            "written": update is not None,
            "bytes": len(update) if update is not None else 0,
            "live": live,
            "reached": reached[0] if reached else "",
        }
        if self.json:
            self.emit_json(result)
        elif update is None:
            print(f"{info.path} already has the content it had at {format_time(at)}: nothing written")
        else:
            print(
                f"restored {info.path} to its content at {format_time(at)} "
                f"with one new update ({len(update)} bytes); earlier history is kept"
            )
        if reached and not self.json:
            print(f"  ({reached[0]})")
        return 0


# ---------------------------------------------------------------------------- compact


class CompactApp(StoreCommand):
    description = "Replace a document's history (or every document's, --all) by one snapshot."
    flags = {**flags, "all": ({"CompactApp": {"all": True}}, "Compact every document.")}
    all = Bool(False, config=True, help="Compact every document in the store.")

    async def run(self) -> int:
        if self.all == bool(self.extra_args):
            raise usage_error("compact takes one document, or --all")
        if self.all:
            infos = await self.list_documents()
        else:
            infos = [await self.find_document(self.extra_args[0], partial=False)]
        results = []
        for info in self.progress_bar(infos, unit="doc", desc="compacting"):
            async with self.open_store(info.path) as store:
                try:
                    await store.compact()
                except NotImplementedError as exc:
                    raise CliError(str(exc)) from None
            after = await self._info(info.path)
            results.append(
                {
                    "key": info.path,
                    "updates_before": info.updates,
                    "bytes_before": info.bytes,
                    "updates_after": after.updates if after else 0,
                    "bytes_after": after.bytes if after else 0,
                }
            )
        if self.json:
            self.emit_json(results)
            return 0
        for r in results:
            print(
                f"{r['key']}: {r['updates_before']} updates, {human_bytes(r['bytes_before'])} → "
                f"{r['updates_after']} updates, {human_bytes(r['bytes_after'])}"
            )
        if not results:
            self.note("no documents in the store")
        return 0

    async def _info(self, key: str) -> DocumentInfo | None:
        return next((i for i in await self.list_documents() if i.path == key), None)


# ---------------------------------------------------------------------------- delete


class DeleteApp(StoreCommand):
    description = "Forget everything stored for a document (asks first; --yes to skip)."
    flags = {
        **flags,
        "yes": ({"JupyterApp": {"answer_yes": True}}, "Do not ask for confirmation."),
    }

    async def run(self) -> int:
        info = await self.find_document(self.one_doc(), partial=False)
        question = (
            f"Delete {info.path} ({info.updates} updates, {human_bytes(info.bytes)}, last "
            f"changed {format_time(info.last_timestamp)})? Its whole history is lost."
        )
        if not self.confirm(question):
            self.note("nothing deleted")
            return 1
        async with self.open_store(info.path) as store:
            try:
                await store.delete()
            except NotImplementedError as exc:
                raise CliError(str(exc)) from None
        print(f"deleted {info.path}")
        return 0




# ---------------------------------------------------------------------------- versions


class VersionApp(DocCommand):
    description = (
        "Named versions: `version save DOC NAME` names the current state (never dropped by "
        "history retention), `version list DOC`, `version restore DOC NAME` (a new update on "
        "top: history kept, restoring again undoes it), `version delete DOC NAME` (the name "
        "only: the point is then kept as retention says)."
    )
    actions = ("save", "list", "restore", "delete")

    async def run(self) -> int:
        args = list(self.extra_args)
        wanted = {"save": 3, "list": 2, "restore": 3, "delete": 3}
        if not args or args[0] not in wanted or len(args) != wanted[args[0]]:
            raise usage_error(
                "version takes: save DOC NAME | list DOC | restore DOC NAME | delete DOC NAME"
            )
        action, doc = args[0], args[1]
        if action == "list":
            return await self._list(doc)
        name = args[2]
        if action == "restore":
            return await self._restore(doc, name)
        info = await self.find_document(doc, partial=action == "save")
        async with self.open_store(info.path) as store:
            try:
                if action == "save":
                    point = await store.save_version(name, saved_by=os_user() or None)
                else:
                    await store.delete_version(name)
            except NotImplementedError as exc:
                raise CliError(str(exc)) from None
            except VersionExists:
                raise CliError(
                    f"{info.path} has a version named {name!r} already: choose another name "
                    "(or `jupyter ystore version delete` it first)"
                ) from None
            except VersionNotFound:
                raise CliError(f"{info.path} has no version named {name!r}") from None
            except (TypeError, ValueError) as exc:
                raise usage_error(str(exc)) from None
        if action == "delete":
            result = {"key": info.path, "deleted": name}
            text = f"{info.path}: the name {name!r} is gone; its point is kept as retention says"
        else:
            result = {"key": info.path, "name": name, "time": point.end, "at": format_time(point.end)}
            text = f"saved {info.path} as version {name!r} ({format_time(point.end)})"
        if self.json:
            self.emit_json(result)
        else:
            print(text)
        return 0

    async def _list(self, doc: str) -> int:
        info, history = await self.load(doc)
        versions = [r for r in history.records if r.name is not None]
        rows = [
            {"name": r.name, "time": r.timestamp, "at": format_time(r.timestamp), "saved_by": r.saved_by}
            for r in sorted(versions, key=lambda r: r.timestamp)
        ]
        if self.json:
            self.emit_json({"key": info.path, "versions": rows})
            return 0
        if not rows:
            self.note(f"{info.path} has no named versions (jupyter ystore version save DOC NAME)")
            return 0
        lines = [("NAME", "SAVED", "BY")] + [
            (str(r["name"]), str(r["at"]), str(r["saved_by"] or "-")) for r in rows
        ]
        for line in table(lines):
            print(line)
        return 0

    async def _restore(self, doc: str, name: str) -> int:
        info = await self.find_document(doc)
        found: list[Record] = []

        def target(history: History) -> bytes:
            try:
                version = history.version(name)
            except HistoryError as exc:
                raise CliError(str(exc)) from None
            found.append(version)
            return history.state_of(version)

        update, live = await self.write_restore(
            info, target, {"reason": "restore", "version": name}
        )
        at = found[0].timestamp
        result = {
            "key": info.path,
            "name": name,
            "at": at,
            "written": update is not None,
            "bytes": len(update) if update is not None else 0,
            "live": live,
        }
        if self.json:
            self.emit_json(result)
        elif update is None:
            print(f"{info.path} already has the content of version {name!r}: nothing written")
        else:
            print(
                f"restored {info.path} to version {name!r} ({format_time(at)}) with one new "
                f"update ({len(update)} bytes); earlier history is kept"
            )
        return 0


# ---------------------------------------------------------------------------- blame


class BlameApp(DocCommand):
    description = (
        "Who last changed each cell, and each line of its source, and when (from the "
        "authors stored with the history; as precise as the history kept)."
    )

    async def run(self) -> int:
        from jupyter_ystore.core.blame import BlameError, blame

        info, history = await self.load(self.one_doc())
        try:
            result = await anyio.to_thread.run_sync(blame, history)
        except BlameError as exc:
            raise CliError(str(exc)) from None
        if self.json:
            self.emit_json({"key": info.path, **result.to_json()})
            return 0
        path = self.file_ids().path_of(info.path)
        since = format_time(result.since) if result.since is not None else "-"
        print(f"{path or info.path}: {len(result.cells)} cells; history back to {since}")
        for cell in result.cells:
            if result.kind == "notebook":
                who = _who(cell.change)
                print(f"[{cell.index + 1}] {cell.cell_type or '?'} {cell.id or ''}  last changed {who}")
            rows = [
                (f"{line.number}", _who_short(line.change), line.text)
                for line in cell.lines
            ]
            for line in table(rows, right=(0,)):
                print("    " + line)
        return 0


def _who(change: Any) -> str:
    if change is None:
        return "before the history (unknown)"
    return f"{format_time(change.time)} by {', '.join(change.authors) or 'unknown'}"


def _who_short(change: Any) -> str:
    if change is None:
        return "?"
    return f"{', '.join(change.authors) or '?'}  {format_time(change.time)[:19]}"
