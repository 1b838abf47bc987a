"""MemoryYStore: keeps updates in the process only (tests, and users who opt out)."""

from __future__ import annotations

import time
from typing import AsyncIterator

from ..errors import YDocNotFound
from .base import BaseYStore


class MemoryYStore(BaseYStore):
    """Nothing is persisted: every document's history lives as long as the process.

    Stores of the same class and ``path`` share one history, like documents of a database.
    """

    _documents: dict[str, list[tuple[bytes, bytes, float]]] = {}

    async def write(self, data: bytes) -> None:
        await self._ensure_running()
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"an update is bytes, got {type(data).__name__}")
        metadata = await self.get_metadata()
        self._documents.setdefault(self.path, []).append((bytes(data), metadata, time.time()))

    async def read(self) -> AsyncIterator[tuple[bytes, bytes, float]]:
        await self._ensure_running()
        records = self._documents.get(self.path)
        if not records:
            raise YDocNotFound(self.path)
        for record in list(records):
            yield record
