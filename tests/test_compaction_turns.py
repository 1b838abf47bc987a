"""Automatic compactions of one event loop take turns, with a rest after each.

Rooms typed at the same pace pass their threshold together; compacting them all at once kept
the event loop from the GIL (keystrokes relayed 0.36 s late at 48 rooms of ten typists). Each
store's background compaction now waits for the others (``compaction.turn``), every document
is still compacted, and a store stopped while it waits still compacts before it closes.
"""

from __future__ import annotations

import time
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import anyio
import pytest
from _compacting_stores import MAKER_IDS, MAKERS, THRESHOLD, content, records, sqlite_maker, typed

from jupyter_ystore import BaseYStore, SQLiteYStore
from jupyter_ystore.stores import compaction

pytestmark = pytest.mark.anyio

ROOMS = 6


@pytest.fixture(params=MAKERS, ids=MAKER_IDS)
def make(request: Any, tmp_path: Path) -> Callable[[str], BaseYStore]:
    return request.param(tmp_path, request)


@asynccontextmanager
async def running(stores: list[BaseYStore]) -> AsyncIterator[None]:
    """Every store started, and stopped again at the end."""
    async with AsyncExitStack() as stack:
        for store in stores:
            await stack.enter_async_context(store)
        yield


class Overlap:
    """Wraps a store class's ``_compact_once``: how many ran at once, and when each ran."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, cls: type[BaseYStore]) -> None:
        self.running = 0
        self.most = 0
        self.spans: list[tuple[float, float]] = []
        original = cls._compact_once

        async def counted(store: BaseYStore) -> None:
            self.running += 1
            self.most = max(self.most, self.running)
            started = time.monotonic()
            try:
                await anyio.sleep(0.02)  # long enough for every other store to try
                await original(store)
            finally:
                self.running -= 1
                self.spans.append((started, time.monotonic()))

        monkeypatch.setattr(cls, "_compact_once", counted)

    async def wait_for(self, count: int) -> None:
        """Until ``count`` compactions ended (10 s at most)."""
        with anyio.fail_after(10):
            while len(self.spans) < count:
                await anyio.sleep(0.02)


async def test_stores_passing_their_threshold_together_compact_one_at_a_time(
    make: Callable[[str], BaseYStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    stores = [make(f"doc{i}") for i in range(ROOMS)]
    overlap = Overlap(monkeypatch, type(stores[0]))
    async with running(stores):
        typing = [typed(THRESHOLD + 1, letters="abcdef"[i]) for i in range(ROOMS)]
        for keystroke in zip(*typing):  # every store a keystroke in turn
            for store, update in zip(stores, keystroke):
                await store.write(update)
        await overlap.wait_for(ROOMS)
        assert overlap.most == 1
        for i, store in enumerate(stores):
            assert await records(store) <= 2  # a snapshot (and the write that came after)
            assert await content(store) == "abcdef"[i] * (THRESHOLD + 1)


async def test_the_next_compaction_waits_a_rest_proportional_to_the_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compaction, "REST", 2.0)
    monkeypatch.setattr(compaction, "LONGEST_REST", 60.0)  # (a slow machine: no cap reached)
    make = sqlite_maker(tmp_path)
    stores = [make(f"doc{i}") for i in range(3)]
    overlap = Overlap(monkeypatch, SQLiteYStore)
    async with running(stores):
        for i, store in enumerate(stores):
            for update in typed(THRESHOLD, letters="xyz"[i]):
                await store.write(update)
        await overlap.wait_for(3)
    spans = sorted(overlap.spans)
    for (start, end), (next_start, _) in zip(spans, spans[1:]):
        assert next_start - end >= 2.0 * (end - start) * 0.9


async def test_a_store_stopped_while_waiting_its_turn_compacts_as_it_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make = sqlite_maker(tmp_path)
    holding = anyio.Event()
    release = anyio.Event()
    original = SQLiteYStore._compact_once

    async def slow_for_first(store: BaseYStore) -> None:
        if store.path == "first":
            holding.set()
            await release.wait()
        await original(store)

    monkeypatch.setattr(SQLiteYStore, "_compact_once", slow_for_first)
    first, second = make("first"), make("second")
    async with first:
        for update in typed(THRESHOLD, letters="a"):
            await first.write(update)
        with anyio.fail_after(10):
            await holding.wait()  # first holds the turn
            async with second:
                for update in typed(THRESHOLD, letters="b"):
                    await second.write(update)
                await anyio.sleep(0.1)  # second's background task now waits for its turn
            # second stopped while waiting
        release.set()
    async with make("second") as again:
        assert await records(again) == 1
        assert await content(again) == "b" * THRESHOLD
    async with make("first") as again:
        assert await content(again) == "a" * THRESHOLD
