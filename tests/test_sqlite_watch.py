"""SQLiteYStore.watch(): updates other writers commit to the file reach a running store, in
commit order, without gaps and without the store's own writes; across compaction and
deletion; from other store instances here and from other processes (a plain store, a
writer using ypy-websocket's INSERT, and a second room manager)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, AsyncIterator

import anyio
import pycrdt
import pytest

from _server_helpers import append, wait_until, write_notebook
from jupyter_ystore import SQLiteYStore
from jupyter_ystore.server import protocol as sync
from jupyter_ystore.server.rooms import RoomManager

pytestmark = pytest.mark.anyio

TESTS = Path(__file__).parent


def edit(doc: pycrdt.Doc, name: str, text: str) -> bytes:
    """Append ``text`` to the Text ``name`` of ``doc``; the update that does it."""
    before = doc.get_state()
    shared = doc.get(name, type=pycrdt.Text)
    shared.insert(len(shared), text)
    return doc.get_update(before)


def text(doc: pycrdt.Doc, name: str) -> str:
    return str(doc.get(name, type=pycrdt.Text))


class Collector:
    """Runs ``store.watch()`` in a task and keeps what it yields."""

    def __init__(self, store: SQLiteYStore):
        self.store = store
        self.updates: list[bytes] = []
        self.ended = False

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        watcher = self.store.watch()
        task_status.started()
        async for update in watcher:
            self.updates.append(update)
        self.ended = True

    def doc(self) -> pycrdt.Doc:
        doc = pycrdt.Doc()
        for update in self.updates:
            doc.apply_update(update)
        return doc


def store(db: Path, path: str = "doc", **kwargs: Any) -> SQLiteYStore:
    return SQLiteYStore(path, db_path=str(db), **kwargs)


async def test_other_stores_updates_arrive_in_order_and_own_ones_do_not(tmp_path: Path) -> None:
    db = tmp_path / "ystore.db"
    mine, theirs = pycrdt.Doc(), pycrdt.Doc()
    async with store(db, poll_interval=60) as a, store(db) as b, store(db, "other") as c:
        await a.write(edit(mine, "a", "loaded "))
        await a.apply_updates(pycrdt.Doc())  # the watch starts after this load
        expected = []
        collector = Collector(a)
        async with anyio.create_task_group() as tg:
            await tg.start(collector.run)
            for i in range(20):
                update = edit(theirs, "b", f"{i},")
                expected.append(update)
                await b.write(update)
                await a.write(edit(mine, "a", f"{i},"))  # a's own: never yielded
                await c.write(edit(pycrdt.Doc(), "c", "x"))  # another document
            # poll_interval is 60 s: only the direct in-process signal can deliver these
            await wait_until(lambda: len(collector.updates) >= len(expected))
            await a.write(edit(mine, "a", "end"))
            last = edit(theirs, "b", "end")
            expected.append(last)
            await b.write(last)
            await wait_until(lambda: len(collector.updates) >= len(expected))
            tg.cancel_scope.cancel()
    assert collector.updates == expected


async def test_a_write_between_loading_and_watching_is_not_missed(tmp_path: Path) -> None:
    db = tmp_path / "ystore.db"
    theirs = pycrdt.Doc()
    async with store(db) as a, store(db) as b:
        await b.write(edit(theirs, "b", "before load,"))
        doc = pycrdt.Doc()
        await a.apply_updates(doc)
        between = edit(theirs, "b", "between,")
        await b.write(between)  # after a's load, before its watch
        collector = Collector(a)
        async with anyio.create_task_group() as tg:
            await tg.start(collector.run)
            await wait_until(lambda: collector.updates)
            tg.cancel_scope.cancel()
    assert collector.updates == [between]


async def test_a_record_written_by_another_process_reaches_watch(tmp_path: Path) -> None:
    """A second process writing through its own SQLiteYStore (e.g. `jupyter ystore restore`
    while a server has the room open)."""
    db = tmp_path / "ystore.db"
    writer = textwrap.dedent(
        """
        import sys, anyio, pycrdt
        from jupyter_ystore import SQLiteYStore

        async def main():
            doc = pycrdt.Doc()
            text = doc.get("t", type=pycrdt.Text)
            async with SQLiteYStore("doc", db_path=sys.argv[1]) as store:
                for i in range(10):
                    before = doc.get_state()
                    text.insert(len(text), f"{i},")
                    await store.write(doc.get_update(before))

        anyio.run(main)
        """
    )
    async with store(db, poll_interval=0.05) as a:
        await a.write(edit(pycrdt.Doc(), "a", "mine"))
        await a.apply_updates(pycrdt.Doc())  # the watch starts after this load
        collector = Collector(a)
        async with anyio.create_task_group() as tg:
            await tg.start(collector.run)
            result = await anyio.run_process([sys.executable, "-c", writer, str(db)], check=False)
            assert result.returncode == 0, result.stderr.decode()[-2000:]
            await wait_until(lambda: len(collector.updates) == 10)
            tg.cancel_scope.cancel()
    assert text(collector.doc(), "t") == "".join(f"{i}," for i in range(10))
    assert text(collector.doc(), "a") == ""  # its own write was not handed back


async def test_another_process_compacting_while_it_writes_loses_nothing_for_the_watcher(
    tmp_path: Path,
) -> None:
    """The other process compacts every 10 updates, so the watcher (polling every 20 ms) is
    usually behind a compaction (measured: ~40 updates yielded for 300 written): the
    snapshots must bring what it had not read yet. (The deterministic case is
    test_a_watcher_behind_a_compaction_gets_the_snapshot.)"""
    db = tmp_path / "ystore.db"
    writer = textwrap.dedent(
        """
        import sys, anyio, pycrdt
        from jupyter_ystore import SQLiteYStore

        async def main():
            doc = pycrdt.Doc()
            text = doc.get("t", type=pycrdt.Text)
            async with SQLiteYStore("doc", db_path=sys.argv[1], compact_after_updates=10,
                                    compact_after_bytes=0) as store:
                for i in range(300):
                    before = doc.get_state()
                    text.insert(len(text), f"{i},")
                    await store.write(doc.get_update(before))
                    if i % 50 == 49:
                        await store.compact()

        anyio.run(main)
        """
    )
    expected = "".join(f"{i}," for i in range(300))
    async with store(db, poll_interval=0.02) as a:
        await a.write(edit(pycrdt.Doc(), "a", "mine"))
        await a.apply_updates(pycrdt.Doc())
        collector = Collector(a)
        async with anyio.create_task_group() as tg:
            await tg.start(collector.run)
            result = await anyio.run_process([sys.executable, "-c", writer, str(db)], check=False)
            assert result.returncode == 0, result.stderr.decode()[-2000:]
            await wait_until(lambda: text(collector.doc(), "t") == expected, timeout=20)
            tg.cancel_scope.cancel()
    doc = collector.doc()
    assert text(doc, "t") == expected
    # Nothing missing: what the watcher was handed makes a whole document, with no part
    # waiting for an update it never got. (Checked on a fresh copy: the collecting document
    # itself, fed a snapshot after rows it partly had, sometimes keeps a part pending that
    # y-crdt could integrate; about 1 run in 12, before and after the pending table.)
    whole = pycrdt.Doc()
    whole.apply_update(doc.get_update())
    assert text(whole, "t") == expected
    assert whole.get_state() == _applied(whole)


def _applied(doc: pycrdt.Doc) -> bytes:
    """The state vector of a fresh document given ``doc``'s full state (no pending parts)."""
    copy = pycrdt.Doc()
    copy.apply_update(doc.get_update())
    return copy.get_state()


async def test_rows_inserted_as_ypy_websocket_does_reach_watch(tmp_path: Path) -> None:
    """Another connection using ypy-websocket's positional INSERT (no jupyter_ystore at
    all): seen through data_version polling, in commit order."""
    db = tmp_path / "ystore.db"
    theirs = pycrdt.Doc()
    async with store(db, poll_interval=0.02) as a:
        await a.write(edit(pycrdt.Doc(), "a", "mine"))
        await a.apply_updates(pycrdt.Doc())  # the watch starts after this load
        collector = Collector(a)
        async with anyio.create_task_group() as tg:
            await tg.start(collector.run)
            conn = sqlite3.connect(db)
            try:
                for i in range(30):
                    conn.execute(
                        "INSERT INTO yupdates VALUES (?, ?, ?, ?)",
                        ("doc", edit(theirs, "t", f"{i},"), b"", time.time()),
                    )
                    if i % 3 == 2:
                        conn.commit()
                        await anyio.sleep(0.01)
                conn.commit()
            finally:
                conn.close()
            await wait_until(lambda: text(collector.doc(), "t").count(",") == 30)
            tg.cancel_scope.cancel()
    # in order: each update depends on the one before, so none was pending or doubled
    assert len(collector.updates) == 30
    assert text(collector.doc(), "t") == "".join(f"{i}," for i in range(30))


async def test_a_watcher_behind_a_compaction_gets_the_snapshot(tmp_path: Path) -> None:
    """Rows another connection wrote are compacted before the watcher read them: the
    snapshot (which keeps the rowid of the newest row it covers) brings their content."""
    db = tmp_path / "ystore.db"
    theirs = pycrdt.Doc()
    async with store(db, poll_interval=3600) as a, store(db) as b:
        await a.write(edit(pycrdt.Doc(), "a", "mine"))
        await a.apply_updates(pycrdt.Doc())  # the watch starts after this load
        collector = Collector(a)
        async with anyio.create_task_group() as tg:
            await tg.start(collector.run)
            await wait_until(lambda: a._watches and next(iter(a._watches)).waiter is not None)
            conn = sqlite3.connect(db)  # not polled for an hour: the watcher stays behind
            for i in range(5):
                conn.execute(
                    "INSERT INTO yupdates VALUES (?, ?, ?, ?)",
                    ("doc", edit(theirs, "t", f"{i},"), b"", time.time()),
                )
                conn.commit()
            conn.close()
            await b.compact()  # the five rows are gone, a snapshot holds them
            await b.write(edit(theirs, "t", "after"))  # wakes the watcher (same process)
            await wait_until(lambda: text(collector.doc(), "t").endswith("after"))
            tg.cancel_scope.cancel()
    assert text(collector.doc(), "t") == "0,1,2,3,4,after"
    assert len(collector.updates) == 2  # the snapshot, then the update after it


async def test_a_watcher_whose_store_wrote_what_was_compacted_does_not_read_it_back(
    tmp_path: Path,
) -> None:
    """Every row a compaction covered past the watcher is its own store's: the snapshot
    holds nothing new to it, so it is not handed back (a room would apply its whole
    document again after every compaction) and the record of own rows is let go."""
    db = tmp_path / "ystore.db"
    mine, theirs = pycrdt.Doc(), pycrdt.Doc()
    async with store(db, poll_interval=3600, compact_after_updates=0) as a, store(db) as b:
        await a.write(edit(mine, "a", "loaded"))
        await a.apply_updates(pycrdt.Doc())  # the watch starts after this load
        collector = Collector(a)
        async with anyio.create_task_group() as tg:
            await tg.start(collector.run)
            await wait_until(lambda: a._watches and next(iter(a._watches)).waiter is not None)
            for i in range(20):
                await a.write(edit(mine, "a", f" {i}"))
            assert len(a._owner.own) == 20
            await a.compact()
            assert len(a._owner.own) == 0
            after = edit(theirs, "t", "theirs")
            await b.write(after)  # wakes the watcher (same process)
            await wait_until(lambda: collector.updates)
            await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
    assert collector.updates == [after]


async def test_a_watcher_behind_another_stores_compacted_row_gets_the_snapshot(
    tmp_path: Path,
) -> None:
    """The watcher has not read a row another store of this process wrote when a
    compaction covers it with the watcher's own rows: the snapshot brings that row, so the
    watcher still reads it."""
    db = tmp_path / "ystore.db"
    mine, theirs = pycrdt.Doc(), pycrdt.Doc()
    async with store(db, poll_interval=3600, compact_after_updates=0) as a, store(db) as b:
        await a.write(edit(mine, "a", "loaded"))
        await a.apply_updates(pycrdt.Doc())
        watcher = a.watch()
        await b.write(edit(theirs, "t", "first,"))
        with anyio.fail_after(5):
            assert await watcher.__anext__()  # the watcher stops right after this row
        for i in range(3):
            await a.write(edit(mine, "a", f" {i}"))
        await b.write(edit(theirs, "t", "second"))  # not read: the watcher is not iterated
        await a.write(edit(mine, "a", " last"))
        await b.compact()
        with anyio.fail_after(5):
            snapshot = await watcher.__anext__()
        await watcher.aclose()
    doc = pycrdt.Doc()
    doc.apply_update(snapshot)
    assert text(doc, "t") == "first,second"


async def test_a_deleted_document_rewritten_from_scratch_reaches_the_watcher(
    tmp_path: Path,
) -> None:
    db = tmp_path / "ystore.db"
    async with store(db) as a, store(db) as b:
        await b.write(edit(pycrdt.Doc(), "old", "old"))
        await a.apply_updates(pycrdt.Doc())
        collector = Collector(a)
        async with anyio.create_task_group() as tg:
            await tg.start(collector.run)
            await b.delete()
            fresh = edit(pycrdt.Doc(), "new", "new")
            await b.write(fresh)  # may reuse the deleted rows' rowids
            await wait_until(lambda: collector.updates)
            tg.cancel_scope.cancel()
    assert collector.updates == [fresh]


async def test_a_lone_watching_writer_does_not_hoard_its_own_rows(tmp_path: Path) -> None:
    """Nobody else writes, so nothing wakes the watch: the record of the store's own rows
    (kept so that they are not handed back) must still stay bounded."""
    db = tmp_path / "ystore.db"
    doc = pycrdt.Doc()
    async with store(db, poll_interval=3600, compact_after_updates=0) as a:
        await a.write(edit(doc, "a", "first"))
        await a.apply_updates(pycrdt.Doc())
        collector = Collector(a)
        async with anyio.create_task_group() as tg:
            await tg.start(collector.run)
            await wait_until(lambda: a._watches)
            for i in range(2500):
                await a.write(edit(doc, "a", "."))
            await wait_until(lambda: len(a._owner.own) < 1000)
            tg.cancel_scope.cancel()
    assert collector.updates == []


async def test_watch_ends_when_the_store_stops(tmp_path: Path) -> None:
    db = tmp_path / "ystore.db"
    a = store(db)
    collector = Collector(a)
    async with anyio.create_task_group() as tg:
        async with a:
            tg.start_soon(collector.run)
            await wait_until(lambda: a._watches)
        await wait_until(lambda: collector.ended)


ROOM = "json:notebook:id-1"

SECOND_SERVER = textwrap.dedent(
    """
    import logging, sys
    import anyio
    from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager
    from jupyter_ystore import SQLiteYStore
    from jupyter_ystore.server import protocol as sync
    from jupyter_ystore.server.rooms.files import DocumentFile
    from jupyter_ystore.server.rooms import RoomManager, RoomSettings
    from test_sqlite_watch import FileIds, NullClient, client_edit

    root, db = sys.argv[1], sys.argv[2]
    log = logging.getLogger("second-server")

    async def main():
        contents = AsyncLargeFileManager(root_dir=root)
        ids = FileIds()
        manager = RoomManager(
            lambda t, i: SQLiteYStore(f".{t}:{i}.y", db_path=db, poll_interval=0.05, log=log),
            lambda fmt, t, i: DocumentFile(i, fmt, t, file_id_manager=ids, contents_manager=contents),
            RoomSettings(save_delay=None, cleanup_delay=None, poll_interval=0),
            log,
        )
        async with anyio.create_task_group() as tg:
            await tg.start(manager.run)
            room = await manager.get_room(sys.argv[3])
            client = NullClient()
            room.join(client)
            print("ready", flush=True)
            while True:
                line = (await anyio.to_thread.run_sync(sys.stdin.readline)).rstrip("\\n")
                command, _, arg = line.partition(" ")
                if command == "edit":
                    await room.handle(client, sync.SyncUpdate(client_edit(room, arg)))
                    await room.flush()
                elif command == "wait":
                    with anyio.fail_after(20):
                        while room.document.get()["cells"][0]["source"] != arg:
                            await anyio.sleep(0.02)
                else:
                    break
                print("ok", flush=True)
            await manager.close_all()
            tg.cancel_scope.cancel()

    anyio.run(main)
    """
)


class FileIds:
    def get_path(self, file_id: str) -> str | None:
        return {"id-1": "nb.ipynb"}.get(file_id)


class NullClient:
    username = "someone"
    can_write = True

    def send(self, frame: bytes) -> None:
        pass


def client_edit(room: Any, suffix: str) -> bytes:
    """A client's update appending ``suffix`` to the first cell."""
    from jupyter_ydoc import YNotebook

    doc = pycrdt.Doc()
    doc.apply_update(room.ydoc.get_update())
    before = doc.get_state()
    append(YNotebook(doc).ycells[0]["source"], suffix)
    return doc.get_update(before)


class Child:
    """The second server: a room manager in another process, driven line by line."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc

    def ask(self, line: str) -> None:
        self.say(line)
        assert self.proc.stdout is not None
        answer = self.proc.stdout.readline().strip()
        assert answer == "ok", (answer, self._stderr())

    def say(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def _stderr(self) -> str:
        self.proc.kill()
        return self.proc.stderr.read()[-3000:] if self.proc.stderr else ""


async def test_two_servers_in_two_processes_share_a_document_through_sqlite(
    tmp_path: Path,
) -> None:
    """Two room managers, one in another process, on one SQLite file: each sees the other's
    edits through watch(), and neither writes the other's back."""
    from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager

    from jupyter_ystore.server.rooms.files import DocumentFile
    from jupyter_ystore.server.rooms import RoomSettings
    import logging

    write_notebook(tmp_path / "nb.ipynb", ["shared"])
    db = tmp_path / "ystore.db"
    log = logging.getLogger("test_sqlite_watch")
    contents = AsyncLargeFileManager(root_dir=str(tmp_path))
    ids = FileIds()
    stores: list[SQLiteYStore] = []

    def make_store(file_type: str, file_id: str) -> SQLiteYStore:
        stores.append(SQLiteYStore(f".{file_type}:{file_id}.y", db_path=str(db), poll_interval=0.05, log=log))
        return stores[-1]

    manager = RoomManager(
        make_store,
        lambda fmt, t, i: DocumentFile(i, fmt, t, file_id_manager=ids, contents_manager=contents),
        RoomSettings(save_delay=None, cleanup_delay=None, poll_interval=0),
        log,
    )

    async def count() -> int:
        return len([record async for record in stores[0].read()])

    async with anyio.create_task_group() as tg:
        await tg.start(manager.run)
        room = await manager.get_room(ROOM)
        room.join(NullClient())
        await room.flush()
        proc = subprocess.Popen(
            [sys.executable, "-c", SECOND_SERVER, str(tmp_path), str(db), ROOM],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=TESTS,
        )
        child = Child(proc)
        try:
            ready = await anyio.to_thread.run_sync(proc.stdout.readline)  # type: ignore[union-attr]
            assert ready.strip() == "ready", child._stderr()
            stored = await count()
            await anyio.to_thread.run_sync(child.ask, "edit  by child")
            await wait_until(lambda: room.document.get()["cells"][0]["source"] == "shared by child")
            await room.handle(NullClient(), sync.SyncUpdate(client_edit(room, ", parent")))
            await room.flush()
            await anyio.to_thread.run_sync(child.ask, "wait shared by child, parent")
            assert await count() == stored + 2  # each edit stored once, by its own server
            child.say("quit")
            await anyio.to_thread.run_sync(proc.wait, 30)
            assert proc.returncode == 0, child._stderr()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        await manager.close_all()
        tg.cancel_scope.cancel()
