"""The SQLite thread's queue: a keystroke's commit does not wait behind work that gives the
same result later (a watch catching up, a compaction's check and replace), and nothing
crosses any other call."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import anyio
import pycrdt
import pytest

from _server_helpers import wait_until
from jupyter_ystore import SQLiteYStore
from jupyter_ystore.stores.sqlite.bridge import Waiter
from jupyter_ystore.stores.sqlite.db import _Call, _Close, _Write, writes_first
from jupyter_ystore.stores.compaction import Policy

pytestmark = pytest.mark.anyio


def update(text: str) -> bytes:
    doc = pycrdt.Doc()
    doc.get("t", type=pycrdt.Text).insert(0, text)
    return doc.get_update()


def test_writes_move_ahead_of_yielding_calls_only() -> None:
    def call(name: str, yields: bool) -> _Call:
        return _Call(Waiter(), lambda conn, schema: None, name, yields=yields)

    def write(name: str) -> _Write:
        return _Write(Waiter(), name, b"", b"", 0.0, Policy(), None)

    y1, y2, barrier = call("y1", True), call("y2", True), call("barrier", False)
    w1, w2, w3 = write("w1"), write("w2"), write("w3")
    close = _Close(Waiter())
    ordered = writes_first([y1, w1, barrier, y2, w2, w3, close])
    assert ordered == [w1, y1, barrier, w2, w3, y2, close]
    assert writes_first([barrier, w1]) == [barrier, w1]
    assert writes_first([w1, y1]) == [w1, y1]


@pytest.mark.parametrize("yields", [True, False])
async def test_a_write_queued_behind_a_yielding_call_commits_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, yields: bool
) -> None:
    async with SQLiteYStore("doc", db_path=str(tmp_path / "y.db"), commit_interval=0) as store:
        shared = store._db
        assert shared is not None
        order: list[str] = []
        commit = shared._commit_writes

        def recorded(batch: list[Any]) -> Any:
            order.append("write")
            return commit(batch)

        monkeypatch.setattr(shared, "_commit_writes", recorded)
        busy, release = threading.Event(), threading.Event()

        def block(conn: Any, schema: Any) -> None:
            busy.set()
            release.wait(10)
            order.append("block")

        def queued(conn: Any, schema: Any) -> None:
            order.append("call")

        keystroke = update("keystroke")
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: shared.call(block, "blocking the thread", fold=False))
            await wait_until(busy.is_set)
            tg.start_soon(lambda: shared.call(queued, "queued", fold=False, yields=yields))
            await wait_until(lambda: shared._queue.qsize() == 1)
            tg.start_soon(store.write, keystroke)
            await wait_until(lambda: shared._queue.qsize() == 2)
            release.set()
        assert order == (["block", "write", "call"] if yields else ["block", "call", "write"])
        assert [u async for u, _, _ in store.read()] == [keystroke]
