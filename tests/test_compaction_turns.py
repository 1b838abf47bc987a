"""Automatic compactions of one event loop take turns, with a rest after each.

Rooms typed at the same pace pass their threshold together; compacting them all at once kept
the event loop from the GIL (keystrokes relayed 0.36 s late at 48 rooms of ten typists). Each
store's background compaction now waits for the others (``compaction.turn``), every document
is still compacted, and a store stopped while it waits still compacts before it closes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import anyio
import pycrdt
import pytest

from jupyter_ystore import BaseYStore, FileYStore, SQLiteYStore
from jupyter_ystore.stores import compaction

pytestmark = pytest.mark.anyio

THRESHOLD = 20
ROOMS = 6


def _sqlite(tmp_path: Path, request: Any) -> Callable[[str], BaseYStore]:
    return lambda path: SQLiteYStore(
        path, db_path=str(tmp_path / "y.db"), compact_after_updates=THRESHOLD
    )


def _file(tmp_path: Path, request: Any) -> Callable[[str], BaseYStore]:
    return lambda path: FileYStore(
        path, root_dir=str(tmp_path / "files"), compact_after_updates=THRESHOLD
    )


def _postgres(tmp_path: Path, request: Any) -> Callable[[str], BaseYStore]:
    from postgres_helpers import fresh_config

    from jupyter_ystore import PostgresYStore

    config = fresh_config(request)
    return lambda path: PostgresYStore(path, compact_after_updates=THRESHOLD, **config)


@pytest.fixture(params=[_sqlite, _file, _postgres], ids=["sqlite", "file", "postgres"])
def make(request: Any, tmp_path: Path) -> Callable[[str], BaseYStore]:
    return request.param(tmp_path, request)


def typed(count: int, letter: str) -> list[bytes]:
    doc = pycrdt.Doc()
    text = doc.get("source", type=pycrdt.Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    for _ in range(count):
        text += letter
    return updates


async def records(store: BaseYStore) -> int:
    return len([record async for record in store.read()])


async def content(store: BaseYStore) -> str:
    doc = pycrdt.Doc()
    await store.apply_updates(doc)
    return str(doc.get("source", type=pycrdt.Text))


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


async def test_stores_passing_their_threshold_together_compact_one_at_a_time(
    make: Callable[[str], BaseYStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    stores = [make(f"doc{i}") for i in range(ROOMS)]
    overlap = Overlap(monkeypatch, type(stores[0]))
    async with anyio.create_task_group() as tg:
        for store in stores:
            await tg.start(store.start)
        for n, update_batch in enumerate(zip(*(typed(THRESHOLD + 1, "abcdef"[i]) for i in range(ROOMS)))):
            for store, update in zip(stores, update_batch):
                await store.write(update)
        with anyio.fail_after(30):
            while len(overlap.spans) < ROOMS:
                await anyio.sleep(0.02)
        assert overlap.most == 1
        for i, store in enumerate(stores):
            assert await records(store) <= 2  # a snapshot (and the write that came after)
            assert await content(store) == "abcdef"[i] * (THRESHOLD + 1)
        for store in stores:
            await store.stop()
        tg.cancel_scope.cancel()


async def test_the_next_compaction_waits_a_rest_proportional_to_the_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compaction, "REST", 2.0)
    monkeypatch.setattr(compaction, "LONGEST_REST", 60.0)  # (a slow machine: no cap reached)
    stores = [_sqlite(tmp_path, None)(f"doc{i}") for i in range(3)]
    overlap = Overlap(monkeypatch, SQLiteYStore)
    async with anyio.create_task_group() as tg:
        for store in stores:
            await tg.start(store.start)
        for i, store in enumerate(stores):
            for update in typed(THRESHOLD, "xyz"[i]):
                await store.write(update)
        with anyio.fail_after(30):
            while len(overlap.spans) < 3:
                await anyio.sleep(0.02)
        spans = sorted(overlap.spans)
        for (start, end), (next_start, _) in zip(spans, spans[1:]):
            assert next_start - end >= 2.0 * (end - start) * 0.9
        for store in stores:
            await store.stop()
        tg.cancel_scope.cancel()


async def test_a_store_stopped_while_waiting_its_turn_compacts_as_it_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make = _sqlite(tmp_path, None)
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
    async with anyio.create_task_group() as tg:
        await tg.start(first.start)
        await tg.start(second.start)
        for update in typed(THRESHOLD, "a"):
            await first.write(update)
        with anyio.fail_after(10):
            await holding.wait()  # first holds the turn
        for update in typed(THRESHOLD, "b"):
            await second.write(update)
        await anyio.sleep(0.1)  # second's background task now waits for its turn
        with anyio.fail_after(10):
            await second.stop()
        release.set()
        await first.stop()
        tg.cancel_scope.cancel()
    async with make("second") as again:
        assert await records(again) == 1
        assert await content(again) == "b" * THRESHOLD
    async with make("first") as again:
        assert await content(again) == "a" * THRESHOLD
