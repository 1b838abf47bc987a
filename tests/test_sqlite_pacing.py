"""SQLiteYStore's commit pacing: under load, writes of other documents wait (at most
``commit_interval``) to share a commit; a quiet server, a single writer and anything asked of
the database after a held write pay nothing and see everything."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Any

import anyio
import pycrdt
import pytest
from traitlets import TraitError

from jupyter_ystore import SQLiteYStore
from jupyter_ystore.stores.sqlite import db as _sqlite_db

pytestmark = pytest.mark.anyio


def store(db: Path, path: str, **traits: Any) -> SQLiteYStore:
    return SQLiteYStore(path, db_path=str(db), compact_after_updates=0, compact_after_bytes=0, **traits)


def update(text: str) -> bytes:
    doc = pycrdt.Doc()
    doc.get("t", type=pycrdt.Text).insert(0, text)
    return doc.get_update()


def stored_paths(db: Path) -> list[str]:
    """What another connection sees committed (pending rows included)."""
    with sqlite3.connect(db) as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        paths = [p for (p,) in conn.execute("SELECT path FROM yupdates")]
        if "ystore_pending" in tables:
            paths += [p for (p,) in conn.execute("SELECT path FROM ystore_pending")]
        return sorted(paths)


async def timed_write(st: SQLiteYStore, data: bytes) -> float:
    started = time.monotonic()
    await st.write(data)
    return time.monotonic() - started


@pytest.mark.parametrize("interval", [0.0, 1.0])
async def test_a_write_of_another_document_waits_for_the_next_commit(tmp_path: Path, interval: float) -> None:
    db = tmp_path / "y.db"
    async with store(db, "a", commit_interval=interval) as a, store(db, "b", commit_interval=interval) as b:
        # quiet: the first write goes at once (whatever the interval)
        assert await timed_write(a, update("a")) < 0.5
        waited = await timed_write(b, update("b"))
        if interval:
            assert 0.5 < waited < 10  # held for the next batch, about ``interval`` after a's
        else:
            assert waited < 0.5
        assert stored_paths(db) == ["a", "b"]


async def test_writes_arriving_together_share_one_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "y.db"
    stores = [store(db, f"d{i}", commit_interval=0.5) for i in range(6)]
    async with stores[0], stores[1], stores[2], stores[3], stores[4], stores[5]:
        shared = stores[0]._db
        assert shared is not None
        commits: list[list[str]] = []
        commit = shared._commit_writes

        def recorded(batch: list[Any]) -> Any:
            commits.append([job.path for job in batch])
            return commit(batch)

        monkeypatch.setattr(shared, "_commit_writes", recorded)
        await stores[0].write(update("first"))  # a batch went out: the others are held
        async with anyio.create_task_group() as tg:
            for st in stores[1:]:
                tg.start_soon(st.write, update(st.path))
        assert commits == [["d0"], ["d1", "d2", "d3", "d4", "d5"]]
        assert stored_paths(db) == [f"d{i}" for i in range(6)]


async def test_a_single_writer_is_not_slowed(tmp_path: Path) -> None:
    """Each write of one document awaited in turn (a migration, a script): none waits."""
    db = tmp_path / "y.db"
    async with store(db, "doc", commit_interval=5.0) as st:
        started = time.monotonic()
        for i in range(20):
            await st.write(update(str(i)))
        assert time.monotonic() - started < 2.5  # paced, it would take 95 s
        doc = pycrdt.Doc()
        await st.apply_updates(doc)
        assert len(str(doc.get("t", type=pycrdt.Text))) == sum(len(str(i)) for i in range(20))


async def test_writers_side_by_side_are_not_slowed(tmp_path: Path) -> None:
    """Twenty documents each written in turn, concurrently (a bulk import): after their
    first batch each goes on at once (it was written in this interval or the last)."""
    db = tmp_path / "y.db"
    stores = [store(db, f"d{i}", commit_interval=0.5) for i in range(20)]
    async with contextlib.AsyncExitStack() as stack:
        for st in stores:
            await stack.enter_async_context(st)

        async def write_all(st: SQLiteYStore) -> None:
            for i in range(30):
                await st.write(update(str(i)))

        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            for st in stores:
                tg.start_soon(write_all, st)
        assert time.monotonic() - started < 3.0  # one 0.5 s wait; paced each round: 15 s
        assert sorted(set(stored_paths(db))) == sorted(st.path for st in stores)
        assert len(stored_paths(db)) == 600


async def test_a_read_does_not_overtake_a_held_write(tmp_path: Path) -> None:
    db = tmp_path / "y.db"
    async with store(db, "a", commit_interval=5.0) as a, store(db, "b", commit_interval=5.0) as b:
        await a.write(update("a"))
        done = anyio.Event()

        async def write_b() -> None:
            await b.write(update("held"))
            done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(write_b)
            await anyio.sleep(0.05)
            assert not done.is_set()  # held for the next batch
            started = time.monotonic()
            async with store(db, "b", commit_interval=5.0) as reader:
                doc = pycrdt.Doc()
                await reader.apply_updates(doc)
            assert str(doc.get("t", type=pycrdt.Text)) == "held"
            with anyio.fail_after(2.5):  # sent ahead of the read, not after 5 s
                await done.wait()
            assert time.monotonic() - started < 2.5


async def test_stopping_the_last_store_commits_what_is_held(tmp_path: Path) -> None:
    db = tmp_path / "y.db"
    a = store(db, "a", commit_interval=5.0)
    b = store(db, "b", commit_interval=5.0)
    async with anyio.create_task_group() as tg:
        await tg.start(a.start)
        await tg.start(b.start)
        await a.write(update("a"))
        tg.start_soon(b.write, update("b"))
        await anyio.sleep(0.05)
        assert stored_paths(db) == ["a"]
        await a.stop()
        started = time.monotonic()
        await b.stop()  # the database closes: the held write is committed first
        assert time.monotonic() - started < 2.5
    assert stored_paths(db) == ["a", "b"]
    assert _sqlite_db.open_connections() == 0


async def test_commit_interval_is_checked() -> None:
    with pytest.raises(TraitError, match="commit_interval"):
        SQLiteYStore("doc", db_path=":memory:", commit_interval=-0.1)


class _Clock:
    """A loop's ``time`` and ``call_at``, moved by hand."""

    def __init__(self) -> None:
        self.now = 100.0
        self.timers: list[tuple[float, Any]] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Any) -> Any:
        clock = self

        class Handle:
            def cancel(self) -> None:
                clock.timers = [t for t in clock.timers if t[1] is not callback]

        self.timers.append((when, callback))
        return Handle()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        due = [t for t in self.timers if t[0] <= self.now]
        self.timers = [t for t in self.timers if t[0] > self.now]
        for _, callback in due:
            callback()


class _Job:
    def __init__(self, path: str) -> None:
        self.path = path


def test_the_pacer_rules() -> None:
    from jupyter_ystore.stores.sqlite.pacing import CommitPacer

    clock = _Clock()
    sent: list[list[str]] = []
    pacer = CommitPacer(
        clock,  # type: ignore[arg-type]
        0.01,
        lambda jobs: sent.append([job.path for job in (jobs if isinstance(jobs, list) else [jobs])]),
    )

    def add(path: str) -> None:
        pacer.add(path, _Job(path))

    add("a")  # quiet: at once
    assert sent == [["a"]]
    clock.advance(0.002)
    add("a")  # its own document again: at once
    add("b")  # another document: the next batch, with what comes meanwhile
    add("a")  # behind the held one, never before it
    assert sent == [["a"], ["a"]] and pacer.holding == 2
    clock.advance(0.007)
    assert pacer.holding == 2
    clock.advance(0.002)  # the interval is over
    assert sent[-1] == ["b", "a"] and pacer.holding == 0
    clock.advance(0.012)  # a new interval: its first write goes at once...
    add("c")
    add("b")  # ...and so does a document of the interval before (writers side by side)
    assert sent[-2:] == [["c"], ["b"]]
    add("d")
    assert pacer.holding == 1
    pacer.release()  # a read or a close sends what is held first
    assert sent[-1] == ["d"] and pacer.holding == 0 and clock.timers == []
    clock.advance(0.5)  # long quiet: nothing is recent any more
    add("e")
    add("c")
    assert sent[-1] == ["e"] and pacer.holding == 1
