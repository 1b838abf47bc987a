"""MemoryYStore: keeps updates in the process only (tests, and users who opt out)."""

from __future__ import annotations

from typing import Any, AsyncIterator, ClassVar

from jupyter_ystore.errors import YDocNotFound
from jupyter_ystore.stores import compaction, upstream_names
from jupyter_ystore.stores import retention as _retention
from jupyter_ystore.stores.base import BaseYStore, DocumentInfo
from jupyter_ystore.stores.compaction import Policy
from jupyter_ystore.stores.retention import Point, Row, StoredHistory

Record = tuple[bytes, bytes, float]


class MemoryYStore(BaseYStore):
    """Nothing is persisted: every document's history lives as long as the process.

    Stores of the same class and ``path`` share one history, like documents of a database;
    each subclass gets a database of its own.
    """

    _documents: ClassVar[dict[str, list[Record]]] = {}
    # path -> attributes, shared exactly as ``_documents`` is (one per class)
    _attributes: ClassVar[dict[str, dict[str, bytes]]] = {}
    # path -> (retained history rows, leading records of _documents they cover)
    _history: ClassVar[dict[str, tuple[list[Row], int]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "_documents" not in cls.__dict__:
            cls._documents = {}
        if "_attributes" not in cls.__dict__:
            cls._attributes = {}
        if "_history" not in cls.__dict__:
            cls._history = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        upstream_names.apply(self)  # a foreign ``version`` is reported, not ignored silently

    async def write(self, data: bytes, *, metadata: bytes | None = None) -> None:
        await self._ensure_running()
        data = self._checked_update(data)
        metadata = await self._metadata_for(metadata)
        self._documents.setdefault(self.path, []).append((data, metadata, self.clock()))

    async def read(self) -> AsyncIterator[Record]:
        await self._ensure_running()
        records = self._documents.get(self.path)
        if not records:
            raise YDocNotFound(self.path)
        for record in list(records):
            yield record

    async def list_documents(self) -> list[DocumentInfo]:
        await self._ensure_running()
        return [
            DocumentInfo(
                path=path,
                updates=len(records),
                bytes=sum(len(r[0]) for r in records),
                first_timestamp=records[0][2],
                last_timestamp=records[-1][2],
            )
            for path, records in sorted(self._documents.items())
            if records
        ]

    async def compact(self) -> None:
        await self._ensure_running()
        records = self._documents.get(self.path)
        if not records or len(records) == 1:
            return
        self._compact(records)

    def _compact(
        self, records: list[Record], name: str | None = None, saved_by: str | None = None
    ) -> None:
        """Snapshot and history points at once (no await: other tasks see all or nothing)."""
        rows, covered = self._history.get(self.path, ([], 0))
        uncovered = records[covered:] if rows else records
        change = _retention.compact_rows(
            rows,
            _retention.new_points(uncovered, snapshot_first=not rows and covered > 0),
            self.clock(),
            Policy.of(self).retention,
            name=name,
            saved_by=saved_by,
            document=self.path,
        )
        squashed, _clean = compaction.squash([r[0] for r in records], self.path)
        _update, metadata, timestamp = records[-1]
        self._documents[self.path] = [(squashed, metadata, timestamp)]
        rows = _retention.apply_change(rows, change)
        self._history[self.path] = (rows, 1)
        compaction.report(type(self).__name__)

    async def read_history(self) -> StoredHistory:
        await self._ensure_running()
        records = self._documents.get(self.path)
        if not records:
            raise YDocNotFound(self.path)
        rows, covered = self._history.get(self.path, ([], 1))
        if rows:
            return StoredHistory(_retention.points_of(rows), list(records[covered:]), 0)
        # compacted without points: the snapshot leads (a lone record written once is not one)
        snapshots = 1 if self.path in self._history else 0
        return StoredHistory([], list(records), snapshots)

    async def save_version(self, name: str, saved_by: str | None = None) -> Point:
        await self._ensure_running()
        name = _retention.check_version_name(name)
        records = self._documents.get(self.path)
        if not records:
            raise YDocNotFound(self.path)
        self._compact(records, name, saved_by)
        rows, _covered = self._history[self.path]
        return next(p for p in _retention.points_of(rows) if p.name == name)

    async def delete_version(self, name: str) -> None:
        await self._ensure_running()
        rows, covered = self._history.get(self.path, ([], 1))
        seq = max((row.seq for row in rows), default=0) + 1
        change = _retention.rename_version(rows, name, None, seq)
        self._history[self.path] = (_retention.apply_change(rows, change), covered)

    async def delete(self) -> None:
        await self._ensure_running()
        self._documents.pop(self.path, None)
        self._attributes.pop(self.path, None)
        self._history.pop(self.path, None)

    async def _read_attributes(self) -> dict[str, bytes]:
        return dict(self._attributes.get(self.path, {}))

    async def _write_attributes(self, values: dict[str, bytes | None]) -> None:
        # no await in between: other tasks see all of the change or none of it
        current = self._attributes.setdefault(self.path, {})
        for name, value in values.items():
            if value is None:
                current.pop(name, None)
            else:
                current[name] = value
        if not current:
            del self._attributes[self.path]
