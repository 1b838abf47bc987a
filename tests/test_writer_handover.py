"""A room's writer hands a keystroke straight to SQLite (``SQLiteYStore.write_soon``) and
relays it from the commit's callback: what a client receives is still durable, in order,
exactly once; a failed commit, a refused update and every store that cannot take the hand-over
go through the writer task as before."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import anyio
import pycrdt
import pytest

from jupyter_ystore import SQLiteYStore
from jupyter_ystore.core.per_loop import PerLoop
from jupyter_ystore.server.rooms.writer import WritePipeline, client_origin
from jupyter_ystore.stores.sqlite.bridge import CallbackWaiter, deliver

pytestmark = pytest.mark.anyio

LOG = logging.getLogger("test_writer_handover")
ALICE = client_origin("alice")


def stored_count(db: Path, path: str) -> int:
    """Rows of ``path`` another connection sees committed (pending rows included)."""
    with sqlite3.connect(db) as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        count = conn.execute("SELECT count(*) FROM yupdates WHERE path = ?", (path,)).fetchone()[0]
        if "ystore_pending" in tables:
            count += conn.execute("SELECT count(*) FROM ystore_pending WHERE path = ?", (path,)).fetchone()[0]
        return int(count)


def keystrokes(count: int) -> tuple[pycrdt.Doc, list[bytes]]:
    """A document typed one character at a time, and each keystroke's update."""
    doc = pycrdt.Doc()
    text = doc.get("t", type=pycrdt.Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    for i in range(count):
        text.insert(len(text), "abcdefghij"[i % 10])
    return doc, updates


class Recorder:
    """The pipeline's relay: records what was relayed, and how many rows were durable then."""

    def __init__(self, db: Path, path: str) -> None:
        self.db, self.path = db, path
        self.relayed: list[bytes] = []
        self.durable_at_relay: list[int] = []

    def __call__(self, update: bytes) -> None:
        self.relayed.append(update)
        self.durable_at_relay.append(stored_count(self.db, self.path))


def store(db: Path, path: str = "doc", **traits: Any) -> SQLiteYStore:
    return SQLiteYStore(path, db_path=str(db), compact_after_updates=0, compact_after_bytes=0, **traits)


def received(relayed: list[bytes]) -> str:
    doc = pycrdt.Doc()
    for update in relayed:
        doc.apply_update(update)
    return str(doc.get("t", type=pycrdt.Text))


@contextlib.asynccontextmanager
async def running(st: SQLiteYStore, db: Path) -> AsyncIterator[tuple[WritePipeline, Recorder]]:
    """A pipeline writing to ``st``, its writer task parked (idle), and its relay."""
    relay = Recorder(db, st.path)
    pipeline = WritePipeline("room", st, relay, LOG)
    async with anyio.create_task_group() as tg:
        tg.start_soon(pipeline.run)
        with anyio.fail_after(5):
            while not pipeline._parked:
                await anyio.sleep(0)
        yield pipeline, relay
        tg.cancel_scope.cancel()


def type_one(pipeline: WritePipeline, update: bytes) -> None:
    """What the room does for a client's keystroke: queued while held, then released."""
    pipeline.hold()
    pipeline.queue(update, ALICE)
    pipeline.release()


async def test_a_keystroke_goes_straight_to_the_store_and_is_relayed_once_durable(tmp_path: Path) -> None:
    db = tmp_path / "y.db"
    _, updates = keystrokes(1)
    async with store(db) as st:
        calls: list[str] = []
        real = st.write_soon

        def write_soon(data: bytes, metadata: bytes, done: Callable[..., None]) -> bool:
            calls.append("write_soon")
            return real(data, metadata, done)

        st.write_soon = write_soon  # type: ignore[method-assign]
        async with running(st, db) as (pipeline, relay):
            type_one(pipeline, updates[0])
            assert calls == ["write_soon"] and pipeline._in_flight is not None
            assert not pipeline._wakeup.is_set()  # the writer task was not woken
            assert relay.relayed == []  # not durable yet
            await pipeline.flush()
            assert relay.relayed == updates and relay.durable_at_relay == [1]
            assert pipeline.written == pipeline.queued == 1 and pipeline.unstored == 0
            rows = [(u, m) async for u, m, _ in st.read()]
            assert rows == [(updates[0], ALICE.metadata())]


async def test_a_burst_is_stored_and_relayed_in_order_each_change_once(tmp_path: Path) -> None:
    db = tmp_path / "y.db"
    doc, updates = keystrokes(60)
    async with store(db) as st:
        async with running(st, db) as (pipeline, relay):
            for i, update in enumerate(updates):
                type_one(pipeline, update)  # some find one in flight: they queue for the task
                if i % 7 == 0:
                    await anyio.sleep(0)
                if i % 13 == 0:
                    await anyio.sleep(0.01)
            await pipeline.flush()
            assert pipeline.written == pipeline.queued == 60
            assert received(relay.relayed) == str(doc.get("t", type=pycrdt.Text))
            # every relay came after its commit: the rows durable then never decrease and
            # cover what was relayed so far (merged batches are one row)
            assert relay.durable_at_relay == sorted(relay.durable_at_relay)
            assert all(n >= i + 1 for i, n in enumerate(relay.durable_at_relay))
            replayed = pycrdt.Doc()
            async for update, _, _ in st.read():
                replayed.apply_update(update)
            assert str(replayed.get("t", type=pycrdt.Text)) == str(doc.get("t", type=pycrdt.Text))


async def test_a_failed_commit_goes_to_the_writer_task_and_is_written_once(tmp_path: Path) -> None:
    db = tmp_path / "y.db"
    _, updates = keystrokes(2)
    async with store(db) as st:
        real = st.write_soon
        failures = [OSError("disk I/O error")]

        def write_soon(data: bytes, metadata: bytes, done: Callable[..., None]) -> bool:
            if failures:
                error = failures.pop()
                asyncio.get_running_loop().call_soon(done, error)  # as a failed commit reports
                return True
            return real(data, metadata, done)

        st.write_soon = write_soon  # type: ignore[method-assign]
        writes: list[bytes] = []
        real_write = st.write

        async def write(data: bytes, *, metadata: bytes | None = None) -> None:
            writes.append(data)
            await real_write(data, metadata=metadata)

        st.write = write  # type: ignore[method-assign]
        async with running(st, db) as (pipeline, relay):
            type_one(pipeline, updates[0])
            await pipeline.flush()
            assert writes == [updates[0]]  # the task wrote it after the failed hand-over
            assert relay.relayed == [updates[0]] and relay.durable_at_relay == [1]
            assert pipeline.outage is None  # the retry worked: no outage
            type_one(pipeline, updates[1])  # the next one is handed over again
            assert pipeline._in_flight is not None
            await pipeline.flush()
            assert writes == [updates[0]] and relay.relayed == updates
            assert stored_count(db, "doc") == 2


async def test_a_commit_the_database_refuses_is_not_counted_as_stored(tmp_path: Path) -> None:
    """A real failed commit (another connection holds the write lock past the busy
    timeout): the handed-over change is neither relayed nor counted; the writer task takes it
    (an outage, changes kept in memory and relayed) and stores it once the lock is gone."""
    db = tmp_path / "y.db"
    _, updates = keystrokes(1)
    async with store(db, busy_timeout=0.1) as st:
        async with running(st, db) as (pipeline, relay):
            pipeline.retry_delay = 0.05
            locker = sqlite3.connect(db, timeout=10, isolation_level=None)
            locker.execute("BEGIN EXCLUSIVE")
            try:
                type_one(pipeline, updates[0])
                assert pipeline._in_flight is not None
                with anyio.fail_after(10):
                    while pipeline.outage is None:
                        await anyio.sleep(0.01)
                assert pipeline.written == 0 and relay.durable_at_relay in ([], [0])
            finally:
                locker.execute("ROLLBACK")
                locker.close()
            with anyio.fail_after(10):
                while stored_count(db, "doc") < 1 or pipeline.written < 1:
                    await anyio.sleep(0.02)
            assert received(relay.relayed) == "a" and stored_count(db, "doc") == 1


async def test_a_change_dropped_while_held_never_reaches_the_store(tmp_path: Path) -> None:
    db = tmp_path / "y.db"
    _, updates = keystrokes(2)
    async with store(db) as st:
        async with running(st, db) as (pipeline, relay):
            mark = pipeline.hold()
            pipeline.queue(updates[0], ALICE)
            pipeline.drop_since(mark)  # the room found the update damaging
            pipeline.release()
            assert pipeline._in_flight is None and pipeline.queued == 0
            await anyio.sleep(0.1)
            assert stored_count(db, "doc") == 0 and relay.relayed == []
            type_one(pipeline, updates[1])
            await pipeline.flush()
            assert relay.relayed == [updates[1]] and stored_count(db, "doc") == 1


class OwnWrite(SQLiteYStore):
    written: list[bytes]

    async def write(self, data: bytes, *, metadata: bytes | None = None) -> None:
        type(self).written.append(data)
        await super().write(data, metadata=metadata)


async def test_stores_that_cannot_take_a_hand_over_get_every_change_through_write(tmp_path: Path) -> None:
    _, updates = keystrokes(1)
    db = tmp_path / "y.db"
    OwnWrite.written = []
    async with OwnWrite("a", db_path=str(db)) as own:
        assert own.write_soon(updates[0], b"", lambda error: None) is False
        async with running(own, db) as (pipeline, relay):
            type_one(pipeline, updates[0])
            assert pipeline._in_flight is None
            await pipeline.flush()
            assert OwnWrite.written == updates and relay.relayed == updates
    async with store(db, "b", metadata_callback=lambda: b"signed") as signed:
        assert signed.write_soon(updates[0], b"", lambda error: None) is False
    stopped = store(db, "c")
    assert stopped.write_soon(updates[0], b"", lambda error: None) is False  # not running


async def test_a_failing_callback_does_not_stop_the_rest_of_its_batch() -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    calls: list[Any] = []

    def broken(result: Any, error: BaseException | None) -> None:
        raise RuntimeError("a relay failed")

    waiters = [CallbackWaiter(broken), CallbackWaiter(lambda r, e: calls.append((r, e)))]
    await anyio.to_thread.run_sync(deliver, [(waiters[0], True, None), (waiters[1], True, None)])
    await anyio.sleep(0.05)
    loop.set_exception_handler(None)
    assert calls == [(True, None)]
    assert len(reported) == 1 and isinstance(reported[0]["exception"], RuntimeError)


def test_per_loop_values_are_made_once_per_loop_and_die_with_it() -> None:
    made: list[asyncio.AbstractEventLoop] = []
    per_loop: PerLoop[list[int]] = PerLoop(lambda loop: made.append(loop) or [])
    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        assert per_loop.peek(first) is None and not per_loop
        value = per_loop.get(first)
        assert per_loop.get(first) is value and per_loop.peek(first) is value
        other = per_loop.get(second)
        assert other is not value and per_loop.get(first) is value  # not the last loop's
        assert made == [first, second]
    finally:
        first.close()
        second.close()


async def test_in_a_room_a_keystroke_that_damages_the_document_is_never_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hand-over waits for the guard: a keystroke found damaging after it was applied
    (the guard's state check) is neither stored nor relayed, on SQLite as on any store."""
    import functools

    from _server_helpers import append, write_notebook
    from test_rooms import ROOM, FakeClient, Setup, client_update, run_manager

    from jupyter_ystore.core import update_guard
    from jupyter_ystore.core.update_guard import BadUpdate, DocumentDamaged
    from jupyter_ystore.server import protocol as sync

    db = tmp_path / "y.db"
    store_class = functools.partial(SQLiteYStore, db_path=str(db))
    setup = Setup(tmp_path, store_class, save_delay=None)  # type: ignore[arg-type]
    write_notebook(setup.nb, ["a"])
    manager = setup.manager()
    async with anyio.create_task_group() as tg:
        await run_manager(manager, tg)
        room = await manager.get_room(ROOM)
        alice, bob = FakeClient("alice"), FakeClient("bob")
        room.join(alice)
        room.join(bob)
        first = client_update(room, lambda nb: append(nb.ycells[0]["source"], "!"))
        pending = room.handle_now(alice, sync.SyncUpdate(first))
        if pending is not None:  # the first one builds the guard's index
            await pending
        await room.flush()
        path = room.store.path
        before = stored_count(db, path)
        relayed = len([m for m in bob.frames if isinstance(m, sync.SyncUpdate)])
        good = client_update(room, lambda nb: append(nb.ycells[0]["source"], "b"))
        assert room.handle_now(alice, sync.SyncUpdate(good)) is None  # handled at once
        assert room.writer._in_flight is not None  # handed straight to the store
        await room.flush()
        assert stored_count(db, path) == before + 1
        assert len([m for m in bob.frames if isinstance(m, sync.SyncUpdate)]) == relayed + 1
        relayed += 1

        def damaged(*args: Any) -> Any:
            raise DocumentDamaged("simulated: the state after it is not what it said")

        # the state read back after the keystroke is not what it said (the observer's view of
        # what it integrated taken away: otherwise a keystroke's state is not read back)
        monkeypatch.setattr(update_guard, "_state_after", damaged)
        monkeypatch.setattr(update_guard.DocumentGuard, "_integrated_as", lambda self: None)
        bad = client_update(room, lambda nb: append(nb.ycells[0]["source"], "c"))
        with pytest.raises(BadUpdate):
            room.handle_now(alice, sync.SyncUpdate(bad))
        await room.closed.wait()
        await anyio.sleep(0.1)
        assert stored_count(db, path) == before + 1  # never stored
        assert len([m for m in bob.frames if isinstance(m, sync.SyncUpdate)]) == relayed  # never relayed
        await manager.close_all()
        tg.cancel_scope.cancel()
