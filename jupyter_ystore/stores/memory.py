"""MemoryYStore: keeps updates in the process only (tests, and users who opt out)."""

from __future__ import annotations

import time
from typing import Any, AsyncIterator, ClassVar

from jupyter_ystore.errors import YDocNotFound
from jupyter_ystore.stores import compaction, upstream_names
from jupyter_ystore.stores.base import BaseYStore, DocumentInfo

Record = tuple[bytes, bytes, float]


class MemoryYStore(BaseYStore):
    """Nothing is persisted: every document's history lives as long as the process.

    Stores of the same class and ``path`` share one history, like documents of a database;
    each subclass gets a database of its own.
    """

    _documents: ClassVar[dict[str, list[Record]]] = {}
    # path -> attributes, shared exactly as ``_documents`` is (one per class)
    _attributes: ClassVar[dict[str, dict[str, bytes]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "_documents" not in cls.__dict__:
            cls._documents = {}
        if "_attributes" not in cls.__dict__:
            cls._attributes = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        upstream_names.apply(self)  # a foreign ``version`` is reported, not ignored silently

    async def write(self, data: bytes, *, metadata: bytes | None = None) -> None:
        await self._ensure_running()
        data = self._checked_update(data)
        metadata = await self._metadata_for(metadata)
        self._documents.setdefault(self.path, []).append((data, metadata, time.time()))

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
        squashed = compaction.squash([r[0] for r in records], self.path)
        _update, metadata, timestamp = records[-1]
        self._documents[self.path] = [(squashed, metadata, timestamp)]
        compaction.report(type(self).__name__)

    async def delete(self) -> None:
        await self._ensure_running()
        self._documents.pop(self.path, None)
        self._attributes.pop(self.path, None)

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
