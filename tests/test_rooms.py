"""The room manager without a web server: a real contents manager on a temporary folder, a
dictionary for file ids, in-memory stores (one private database per test) and fake clients."""

from __future__ import annotations

import dataclasses
import errno
import gc
import json
import logging
import os
import time
import weakref
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import anyio
import nbformat
import pytest
from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager
from jupyter_ydoc import YNotebook
from pycrdt import Doc

from _server_helpers import append, read_sources, wait_until, write_notebook
from postgres_helpers import pg_config  # noqa: F401  (fixture)
from jupyter_ystore import MemoryYStore, YStoreCorruptError
from jupyter_ystore.server import protocol as sync
from jupyter_ystore.server.rooms import filesync
from jupyter_ystore.server.rooms.files import DocumentFile, FileChanged, FileGone
from jupyter_ystore.server.rooms import RoomError, RoomManager, RoomSettings

pytestmark = pytest.mark.anyio

LOG = logging.getLogger("test_rooms")
ROOM = "json:notebook:id-1"


class FileIds:
    def __init__(self, paths: dict[str, str]):
        self.paths = paths

    def get_path(self, file_id: str) -> str | None:
        return self.paths.get(file_id)


class FakeClient:
    def __init__(self, username: str = "alice", can_write: bool = True):
        self.username = username
        self.can_write = can_write
        self.frames: list[Any] = []
        self.doc = Doc()

    def send(self, frame: bytes) -> None:
        message = sync.parse_message(frame)
        self.frames.append(message)
        if isinstance(message, (sync.SyncStep2, sync.SyncUpdate)):
            self.doc.apply_update(message.update)

    def raw(self) -> list[dict]:
        return [json.loads(m.text) for m in self.frames if isinstance(m, sync.RawMessage)]


class Setup:
    def __init__(self, tmp_path: Path, store_class: type[MemoryYStore], **settings: Any):
        self.root = tmp_path
        self.nb = tmp_path / "nb.ipynb"
        self.contents = AsyncLargeFileManager(root_dir=str(tmp_path))
        self.ids = FileIds({"id-1": "nb.ipynb"})
        self.store_class = store_class
        self.stores: list[MemoryYStore] = []
        self.settings = RoomSettings(
            **{"save_delay": 0.05, "cleanup_delay": None, "poll_interval": 0, **settings}
        )

    def add_notebooks(self, names: list[str]) -> list[str]:
        """Notebooks ``names`` (the i-th holding one cell ``x = i``), each with a file id;
        their room ids."""
        for i, name in enumerate(names):
            write_notebook(self.root / name, [f"x = {i}"])
            self.ids.paths[f"id-{i}"] = name
        return [f"json:notebook:id-{i}" for i in range(len(names))]

    def make_store(self, file_type: str, file_id: str) -> MemoryYStore:
        store = self.store_class(path=f".{file_type}:{file_id}.y", log=LOG)
        self.stores.append(store)
        return store

    def make_file(self, fmt: str, file_type: str, file_id: str) -> DocumentFile:
        return DocumentFile(
            file_id, fmt, file_type, file_id_manager=self.ids, contents_manager=self.contents
        )

    def manager(self) -> RoomManager:
        return RoomManager(self.make_store, self.make_file, self.settings, LOG)

    def records(self) -> list[tuple[bytes, bytes, float]]:
        return list(self.store_class._documents.get(".notebook:id-1.y", []))

    def replay(self) -> dict:
        doc = Doc()
        for update, _meta, _ts in self.records():
            doc.apply_update(update)
        return YNotebook(doc).get()


def fresh_store_class() -> type[MemoryYStore]:
    return type("PrivateMemoryYStore", (MemoryYStore,), {})


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    s = Setup(tmp_path, fresh_store_class())
    write_notebook(s.nb, ["a = 1", "b = 2"])
    return s


async def run_manager(manager: RoomManager, tg: Any) -> None:
    await tg.start(manager.run)


def edited_elsewhere(path: Path) -> None:
    """Give a file written behind the server's back a modification time it cannot have seen
    (5 s ahead: a same-second rewrite could keep the time the server recorded)."""
    future = time.time() + 5
    os.utime(path, (future, future))


def client_update(room: Any, edit: Any) -> bytes:
    """An update made by a client from the room's current state."""
    doc = Doc()
    doc.apply_update(room.ydoc.get_update())
    nb = YNotebook(doc)
    before = doc.get_state()
    edit(nb)
    return doc.get_update(before)


@asynccontextmanager
async def open_room(setup: Setup) -> AsyncIterator[tuple[Any, FakeClient, Any]]:
    """``ROOM`` opened by a running manager with alice in it, and the task group around it;
    every room closed after."""
    manager = setup.manager()
    async with anyio.create_task_group() as tg:
        await run_manager(manager, tg)
        room = await manager.get_room(ROOM)
        alice = FakeClient("alice")
        room.join(alice)
        yield room, alice, tg
        await manager.close_all()
        tg.cancel_scope.cancel()


async def type_into(room: Any, client: FakeClient, cell: int, text: str) -> None:
    """``client`` appends ``text`` to the source of cell ``cell``."""
    update = client_update(room, lambda nb: append(nb.ycells[cell]["source"], text))
    await room.handle(client, sync.SyncUpdate(update))


def after_the_next_look(room: Any, action: Callable[[], Awaitable[Any]]) -> list[Any]:
    """Run ``action`` once, right after the next stat of ``room``'s file that reads its hash
    (a save's look at the file, before it writes); the list returned holds its result."""
    file = room.files.file
    stat = file.stat
    done: list[Any] = []

    async def stat_then_act(*, with_hash: bool = True) -> Any:
        state = await stat(with_hash=with_hash)
        if with_hash and not done:
            done.append(await action())
        return state

    file.stat = stat_then_act
    return done


async def test_loading_goes_through_the_store(setup: Setup) -> None:
    manager = setup.manager()
    async with anyio.create_task_group() as tg:
        await run_manager(manager, tg)
        room = await manager.get_room(ROOM)
        records = setup.records()
        assert records, "the server's own loading change must be stored"
        assert json.loads(records[0][1]) == {"origin": "server", "reason": "load"}
        assert setup.replay() == room.document.get()
        assert [c["source"] for c in room.document.get()["cells"]] == ["a = 1", "b = 2"]
        model = await setup.contents.get("nb.ipynb", content=False, require_hash=True)
        assert room.document.hash == model["hash"]
        await manager.close_all()


async def test_client_changes_are_stored_with_their_author_before_the_save(setup: Setup) -> None:
    async with open_room(setup) as (room, alice, _tg):
        update = client_update(room, lambda nb: append(nb.ycells[0]["source"], "  # alice"))
        await room.handle(alice, sync.SyncUpdate(update))
        await room.handle(alice, sync.SaveRequest(7))
        await wait_until(lambda: any(r.get("responseTo") == 7 for r in alice.raw()))
        assert {"type": "save", "responseTo": 7, "status": "success"} in alice.raw()
        assert read_sources(setup.nb) == ["a = 1  # alice", "b = 2"]
        metas = [json.loads(meta) for _u, meta, _t in setup.records()]
        assert {"origin": "client", "user": "alice"} in metas
        assert {"origin": "server", "reason": "save"} in metas  # hash and dirty after the save
        assert setup.replay() == room.document.get()
        assert room.document.ystate.get("dirty") is False


async def test_a_users_metadata_callback_keeps_working(tmp_path: Path) -> None:
    class Signed(MemoryYStore):
        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.metadata_callback = lambda: b"signed"

    setup = Setup(tmp_path, type("SignedPrivate", (Signed,), {}))
    write_notebook(setup.nb, ["x"])
    manager = setup.manager()
    async with anyio.create_task_group() as tg:
        await run_manager(manager, tg)
        await manager.get_room(ROOM)
        assert {meta for _u, meta, _t in setup.records()} == {b"signed"}
        await manager.close_all()


async def test_store_newer_than_file_wins_after_a_crash(setup: Setup) -> None:
    setup.settings.save_delay = None  # nothing reaches the file before the "crash"
    manager = setup.manager()
    async with anyio.create_task_group() as tg:
        await run_manager(manager, tg)
        room = await manager.get_room(ROOM)
        client = FakeClient()
        room.join(client)
        update = client_update(room, lambda nb: append(nb.ycells[1]["source"], "\nc = 3"))
        await room.handle(client, sync.SyncUpdate(update))
        await room.flush()
        tg.cancel_scope.cancel()  # a crash: no save, no close
    assert read_sources(setup.nb) == ["a = 1", "b = 2"]
    stored = len(setup.records())

    setup.settings.save_delay = 0.05
    manager = setup.manager()
    async with anyio.create_task_group() as tg:
        await run_manager(manager, tg)
        room = await manager.get_room(ROOM)
        assert [c["source"] for c in room.document.get()["cells"]] == ["a = 1", "b = 2\nc = 3"]
        await wait_until(lambda: read_sources(setup.nb) == ["a = 1", "b = 2\nc = 3"])
        await manager.close_all()
    assert setup.replay()["cells"][1]["source"] == "b = 2\nc = 3"
    assert len(setup.records()) > stored  # the save's hash went in; nothing was reset


async def test_file_changed_on_disk_later_goes_in_as_an_update(setup: Setup) -> None:
    manager = setup.manager()
    async with anyio.create_task_group() as tg:
        await run_manager(manager, tg)
        await manager.get_room(ROOM)
        await manager.close_all()
    stored = len(setup.records())
    nb = nbformat.read(str(setup.nb), as_version=4)
    nb.cells.append(nbformat.v4.new_markdown_cell("edited elsewhere"))
    nbformat.write(nb, str(setup.nb))
    edited_elsewhere(setup.nb)

    manager = setup.manager()
    async with anyio.create_task_group() as tg:
        await run_manager(manager, tg)
        room = await manager.get_room(ROOM)
        cells = room.document.get()["cells"]
        assert [c["source"] for c in cells] == ["a = 1", "b = 2", "edited elsewhere"]
        await room.flush()
        records = setup.records()
        assert len(records) > stored  # appended, the history before it kept
        assert json.loads(records[stored][1]) == {"origin": "server", "reason": "file-changed"}
        assert setup.replay() == room.document.get()
        await manager.close_all()


async def test_a_broken_store_fails_the_room_and_leaves_the_file(tmp_path: Path) -> None:
    class Broken(MemoryYStore):
        async def read(self) -> AsyncIterator[tuple[bytes, bytes, float]]:
            raise YStoreCorruptError("cannot decode record 3", path=self.path, hint="restore a backup")
            yield  # pragma: no cover

    setup = Setup(tmp_path, type("BrokenPrivate", (Broken,), {}))
    write_notebook(setup.nb, ["keep me"])
    before = setup.nb.read_bytes()
    manager = setup.manager()
    async with anyio.create_task_group() as tg:
        await run_manager(manager, tg)
        with pytest.raises(RoomError) as err:
            await manager.get_room(ROOM)
        assert err.value.code == 4500
        assert "cannot decode record 3" in str(err.value)
        assert ROOM not in manager.rooms
        assert not setup.stores[0]._running  # stopped, not left open
        assert setup.records() == []  # never treated as empty and rebuilt from the file
        await manager.close_all()
    assert setup.nb.read_bytes() == before


async def test_unknown_rooms_are_refused(setup: Setup) -> None:
    manager = setup.manager()
    async with anyio.create_task_group() as tg:
        await run_manager(manager, tg)
        for room_id, code in [
            ("nonsense", 4400),
            ("json:spreadsheet:id-1", 4400),
            ("json:notebook:no-such-id", 4404),
            ("json:notebook:../../../etc/passwd", 4404),
        ]:
            with pytest.raises(RoomError) as err:
                await manager.get_room(room_id)
            assert err.value.code == code, room_id
        assert setup.stores == []  # no store was even created
        assert manager._locks == {}  # nor anything kept for them
        await manager.close_all()


async def test_failed_writes_are_retried_and_nothing_is_lost(tmp_path: Path) -> None:
    class Flaky(MemoryYStore):
        failures = 0

        async def write(self, data: bytes) -> None:
            if type(self).failures > 0:
                type(self).failures -= 1
                raise OSError("disk full")
            await super().write(data)

    store_class = type("FlakyPrivate", (Flaky,), {})
    setup = Setup(tmp_path, store_class, store_retry_delay=0.01, save_delay=None)
    write_notebook(setup.nb, ["a"])
    manager = setup.manager()
    async with anyio.create_task_group() as tg:
        await run_manager(manager, tg)
        room = await manager.get_room(ROOM)
        client = FakeClient()
        room.join(client)
        store_class.failures = 3
        update = client_update(room, lambda nb: append(nb.ycells[0]["source"], "b"))
        await room.handle(client, sync.SyncUpdate(update))
        with pytest.raises(OSError):
            await room.flush()  # a save would not be acknowledged now
        await wait_until(lambda: store_class.failures == 0)
        await room.flush()
        assert setup.replay()["cells"][0]["source"] == "ab"
        await manager.close_all()


def live_store_class() -> tuple[Any, type[MemoryYStore]]:
    """A memory store with live updates (like a store shared by several servers): what is
    sent on the returned stream reaches the room as another server's committed update."""
    send, receive = anyio.create_memory_object_stream[bytes](10)

    class Live(MemoryYStore):
        supports_live_updates = True

        async def watch(self) -> AsyncIterator[bytes]:
            async for update in receive:
                yield update

    return send, type("LivePrivate", (Live,), {})


async def test_live_updates_are_applied_and_not_written_back(tmp_path: Path) -> None:
    send, store_class = live_store_class()
    setup = Setup(tmp_path, store_class)
    write_notebook(setup.nb, ["a"])
    manager = setup.manager()
    async with anyio.create_task_group() as tg:
        await run_manager(manager, tg)
        room = await manager.get_room(ROOM)
        client = FakeClient()
        room.join(client)
        await room.flush()
        stored = len(setup.records())
        other_server = client_update(room, lambda nb: append(nb.ycells[0]["source"], " # remote"))
        await send.send(other_server)
        await wait_until(lambda: room.document.get()["cells"][0]["source"] == "a # remote")
        assert any(isinstance(m, sync.SyncUpdate) for m in client.frames)  # broadcast
        await room.flush()
        assert len(setup.records()) == stored  # not written back
        send.close()
        await manager.close_all()


async def test_a_write_by_another_server_is_known_even_when_its_hash_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two servers sharing a store save at once: both set the state's hash, and only one
    value survives the CRDT's merge. The loser's write is still known to the winner by its
    record, so the winner does not take the file for an edit made on disk (importing it
    again, after a wait for a hash that never comes)."""
    from jupyter_ystore.server.rooms.filesync import synced_key

    send, store_class = live_store_class()
    setup = Setup(tmp_path, store_class, save_delay=None, shared_file_grace=0.5)
    write_notebook(setup.nb, ["a", "b"])
    manager = setup.manager()
    caplog.set_level(logging.INFO, logger=LOG.name)
    async with anyio.create_task_group() as tg:
        await run_manager(manager, tg)
        room = await manager.get_room(ROOM)
        client = FakeClient()
        room.join(client)
        # the other server: the same document, with a client id that loses a conflict
        other = Doc(client_id=1)
        other.apply_update(room.ydoc.get_update())
        since = other.get_state()
        other_nb = YNotebook(other)
        # this server saves an edit of its client ...
        update = client_update(room, lambda nb: append(nb.ycells[0]["source"], " by alice"))
        await room.handle(client, sync.SyncUpdate(update))
        assert await room.files.save(reason="test")
        # ... and the other server, not having seen it yet, saves an edit of its own
        append(other_nb.ycells[1]["source"], " by bob")
        written = await room.file.save(other_nb.get())
        other_nb.ystate["hash"] = written.hash
        other_nb.ystate[synced_key(written)] = time.time()
        await send.send(other.get_update(since))
        await wait_until(lambda: room.document.get()["cells"][1]["source"] == "b by bob")
        assert room.document.hash != written.hash  # this server's hash won
        started = time.perf_counter()
        await room.files.save(reason="test")  # finds the file changed since its own save
        assert time.perf_counter() - started < 0.4  # no wait for the hash
        await room.files.save(reason="test")
        assert read_sources(setup.nb) == ["a by alice", "b by bob"]
        assert room.document.get()["cells"][1]["source"] == "b by bob"  # not imported twice
        send.close()
        await manager.close_all()
    assert "changed on disk" not in caplog.text
    keys = [key for key in room.document.ystate.keys() if key.startswith("synced:")]
    assert len(keys) == 4  # loaded, saved, the other's save, saved again


async def test_a_save_crossing_another_servers_save_waits_for_its_edits(tmp_path: Path) -> None:
    """Two servers sharing a store save at the same moment (the CI failure of 2026-12-05):
    this server looks at the file, the other writes it with an edit this one has not
    received yet, then this one writes. Writing its own content then would drop the other's
    edit from the file, and neither server would save again (the other takes the file for
    one it knows). The save must see the other's write, wait for its edit and save both."""
    from jupyter_ystore.server.rooms.filesync import synced_key

    send, store_class = live_store_class()
    setup = Setup(tmp_path, store_class, save_delay=None, shared_file_grace=5.0)
    write_notebook(setup.nb, ["a", "b"])
    async with open_room(setup) as (room, alice, tg):
        other = Doc(client_id=1)  # the other server's document
        other.apply_update(room.ydoc.get_update())
        since = other.get_state()
        other_nb = YNotebook(other)
        append(other_nb.ycells[1]["source"], " by bob")  # not here yet
        await type_into(room, alice, 0, " by alice")

        async def edits_arrive_later() -> None:
            await anyio.sleep(0.2)  # through the other server's store write and our watch
            await send.send(other.get_update(since))

        async def the_other_server_saves() -> Any:
            written = await room.files.file.save(other_nb.get())
            other_nb.ystate["hash"] = written.hash
            other_nb.ystate[synced_key(written)] = time.time()
            tg.start_soon(edits_arrive_later)
            return written

        crossed = after_the_next_look(room, the_other_server_saves)
        assert await room.files.save(reason="test")
        assert crossed
        await wait_until(lambda: room.document.get()["cells"][1]["source"] == "b by bob")
        assert read_sources(setup.nb) == ["a by alice", "b by bob"]
        send.close()


async def test_most_messages_are_handled_before_handle_now_returns(setup: Setup) -> None:
    """Keystrokes and cursors are handled at once (the websocket then needs no task per
    frame); a big update (read in a thread) and a sync step 1 (answered once the store has
    caught up) come back as an awaitable that does the work, and refusals raise at once."""
    from pycrdt import Awareness

    from jupyter_ystore.core.update_guard import READ_IN_THREAD, BadUpdate

    manager = setup.manager()
    async with anyio.create_task_group() as tg:
        await run_manager(manager, tg)
        room = await manager.get_room(ROOM)
        client = FakeClient()
        room.join(client)
        first = client_update(room, lambda nb: append(nb.ycells[0]["source"], "!"))
        pending = room.handle_now(client, sync.SyncUpdate(first))
        assert pending is not None  # the first one builds the guard's index
        await pending
        await room.flush()
        assert await room.files.save(reason="test")  # a change of the server's own, noted
        update = client_update(room, lambda nb: append(nb.ycells[0]["source"], "!"))
        assert room.handle_now(client, sync.SyncUpdate(update)) is None
        assert room.document.get()["cells"][0]["source"] == "a = 1!!"

        awareness = Awareness(client.doc)
        awareness.set_local_state({"user": {"name": "alice"}})
        frame = sync.awareness_message(awareness, [client.doc.client_id])
        sent = len(client.frames)
        assert room.handle_now(client, sync.parse_message(frame)) is None
        await room.flush()
        assert any(isinstance(m, sync.AwarenessMessage) for m in client.frames[sent:])

        big = client_update(room, lambda nb: append(nb.ycells[1]["source"], "x" * READ_IN_THREAD))
        pending = room.handle_now(client, sync.SyncUpdate(big))
        assert pending is not None
        assert room.document.get()["cells"][1]["source"] == "b = 2"  # not before it is awaited
        await pending
        assert room.document.get()["cells"][1]["source"] == "b = 2" + "x" * READ_IN_THREAD

        pending = room.handle_now(client, sync.SyncStep1(b"\x00"))
        assert pending is not None
        sent = len(client.frames)
        await pending
        assert any(isinstance(m, sync.SyncStep2) for m in client.frames[sent:])

        with pytest.raises(BadUpdate):
            room.handle_now(client, sync.SyncUpdate(b"\x01\x05garbage"))
        with pytest.raises(PermissionError):
            room.handle_now(FakeClient("reader", can_write=False), sync.SyncUpdate(update))
        await room.flush()
        assert setup.replay()["cells"][1]["source"] == "b = 2" + "x" * READ_IN_THREAD
        await manager.close_all()


async def test_the_checks_index_is_built_when_someone_who_may_edit_joins(setup: Setup) -> None:
    """Not at the first keystroke, which would wait for it (every room of a class opening
    its notebooks at once queued their first edits behind each other's builds)."""
    manager = setup.manager()
    async with anyio.create_task_group() as tg:
        await run_manager(manager, tg)
        room = await manager.get_room(ROOM)
        room.join(FakeClient("viewer", can_write=False))
        await anyio.sleep(0.05)
        assert not room.guard.prepared  # a viewer never edits: no index held for it
        editor = FakeClient("editor")
        room.join(editor)
        await wait_until(lambda: room.guard._index is not None)
        update = client_update(room, lambda nb: append(nb.ycells[0]["source"], "!"))
        assert room.handle_now(editor, sync.SyncUpdate(update)) is None  # no wait for a build
        assert room.document.get()["cells"][0]["source"] == "a = 1!"
        await manager.close_all()


async def test_a_rooms_document_keeps_no_undo_history(setup: Setup, monkeypatch: Any) -> None:
    """jupyter_ydoc's undo manager records every change made without an origin: in a room,
    every user's keystroke, kept until the room closes (and an undo there would revert other
    people's typing). No undo manager may be left tracking a room's document."""
    import jupyter_ydoc.ybasedoc as ybasedoc

    made: list[weakref.ref] = []

    class Recorded(ybasedoc.UndoManager):  # type: ignore[misc,name-defined]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.tracked: list[Any] = []
            made.append(weakref.ref(self))

        def expand_scope(self, scope: Any) -> None:
            super().expand_scope(scope)
            self.tracked.append(scope.doc)

    monkeypatch.setattr(ybasedoc, "UndoManager", Recorded)
    async with open_room(setup) as (room, alice, _tg):
        for _ in range(20):
            update = client_update(room, lambda nb: append(nb.ycells[0]["source"], "x"))
            await room.handle(alice, sync.SyncUpdate(update))
        assert room.document.get()["cells"][0]["source"] == "a = 1" + "x" * 20
        gc.collect()
        assert made, "jupyter_ydoc made no undo manager: this test no longer sees them"
        tracking = [m for m in (ref() for ref in made) if m is not None and room.ydoc in m.tracked]
        assert tracking == [], f"undo stacks of {[len(m.undo_stack) for m in tracking]} items"


async def test_last_client_gone_closes_the_room_after_the_delay(setup: Setup) -> None:
    setup.settings.cleanup_delay = 0.05
    setup.settings.save_delay = None  # only the close saves
    manager = setup.manager()
    async with anyio.create_task_group() as tg:
        await run_manager(manager, tg)
        room = await manager.get_room(ROOM)
        client = FakeClient()
        room.join(client)
        update = client_update(room, lambda nb: append(nb.ycells[0]["source"], "!"))
        await room.handle(client, sync.SyncUpdate(update))
        room.leave(client)
        with anyio.fail_after(10):
            await room.closed.wait()
        assert ROOM not in manager.rooms
        assert not setup.stores[0]._running
        assert read_sources(setup.nb) == ["a = 1!", "b = 2"]
        # a new client reopens it from the store
        room2 = await manager.get_room(ROOM)
        assert room2 is not room
        assert room2.document.get()["cells"][0]["source"] == "a = 1!"
        await manager.close_all()


async def test_poller_applies_out_of_band_edits(setup: Setup) -> None:
    setup.settings.poll_interval = 0.05
    manager = setup.manager()
    async with anyio.create_task_group() as tg:
        await run_manager(manager, tg)
        room = await manager.get_room(ROOM)
        client = FakeClient()
        room.join(client)
        write_notebook(setup.nb, ["a = 1", "b = 2", "c = 3"])
        edited_elsewhere(setup.nb)
        await wait_until(lambda: len(room.document.get()["cells"]) == 3)
        await room.flush()
        assert setup.replay() == room.document.get()
        await manager.close_all()


async def test_a_file_save_does_not_write_over_a_change_it_was_not_shown(setup: Setup) -> None:
    """``DocumentFile.save(expected=...)`` writes only over the file its caller looked at: a
    change since (by time, or by content within one tick of the file system's clock) fails
    the save and is kept."""
    file = setup.make_file("json", "notebook", "id-1")
    ours = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("ours")])

    seen = await file.stat()
    write_notebook(setup.nb, ["theirs"])
    edited_elsewhere(setup.nb)
    with pytest.raises(FileChanged):
        await file.save(ours, expected=seen)
    assert read_sources(setup.nb) == ["theirs"]

    seen = await file.stat()
    mtime = os.stat(setup.nb).st_mtime_ns
    write_notebook(setup.nb, ["theirs, again"])
    os.utime(setup.nb, ns=(mtime, mtime))  # the same modification time
    with pytest.raises(FileChanged):
        await file.save(ours, expected=seen)
    assert read_sources(setup.nb) == ["theirs, again"]

    state = await file.save(ours, expected=await file.stat())
    assert read_sources(setup.nb) == ["ours"]
    now = await file.stat()
    assert (state.last_modified, state.hash) == (now.last_modified, now.hash)


async def test_a_file_renamed_as_it_is_saved_is_looked_for_again(setup: Setup) -> None:
    """Another server renames the file while a save runs (no lock keeps a rename out):
    jupyter_server writes it, then fails to copy it to its first checkpoint ("not
    writable"). That is ``FileChanged`` (the room looks again), not a failing disk; nothing
    is made again at the old path, and the next save writes the file at its new one."""
    file = setup.make_file("json", "notebook", "id-1")
    ours = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("ours")])
    real_checkpoint = setup.contents.create_checkpoint

    async def renamed_first(path: str) -> Any:
        os.rename(setup.nb, setup.root / "moved.ipynb")
        setup.ids.paths["id-1"] = "moved.ipynb"
        return await real_checkpoint(path)

    setup.contents.create_checkpoint = renamed_first  # type: ignore[method-assign]
    try:
        with pytest.raises(FileChanged, match="went away"):
            await file.save(ours, expected=await file.stat())
    finally:
        setup.contents.create_checkpoint = real_checkpoint  # type: ignore[method-assign]
    assert not setup.nb.exists()
    assert read_sources(setup.root / "moved.ipynb") == ["ours"]  # written, then moved
    again = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("ours, again")])
    await file.save(again, expected=await file.stat())
    assert read_sources(setup.root / "moved.ipynb") == ["ours, again"]
    assert not setup.nb.exists()

    async def disk_full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    setup.contents._save_notebook = disk_full  # type: ignore[method-assign]
    try:  # a save that fails with the file still there is still an error
        with pytest.raises(Exception, match="No space left") as failed:
            await file.save(ours, expected=await file.stat())
        assert not isinstance(failed.value, FileChanged)
    finally:
        del setup.contents._save_notebook


async def test_a_room_whose_file_is_renamed_as_it_saves_keeps_its_save_and_merges_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another server renames the file while this room saves it (after the write, before
    jupyter_server's first checkpoint). The room looks again, finds its own write at the
    new path, and goes on as saved: no error, no merge of the file as a change made on disk,
    and its next edit is saved at the new path."""
    setup = Setup(tmp_path, fresh_store_class(), save_delay=None)
    write_notebook(setup.nb, ["a = 1", "b = 2"])
    caplog.set_level(logging.INFO, logger=LOG.name)
    real_checkpoint = setup.contents.create_checkpoint
    renames = []

    async def renamed_first(path: str) -> Any:
        if not renames:
            renames.append(path)
            os.rename(setup.nb, setup.root / "moved.ipynb")
            setup.ids.paths["id-1"] = "moved.ipynb"
        return await real_checkpoint(path)

    setup.contents.create_checkpoint = renamed_first  # type: ignore[method-assign]
    async with open_room(setup) as (room, alice, _tg):
        update = client_update(room, lambda nb: append(nb.ycells[0]["source"], " # one"))
        await room.handle(alice, sync.SyncUpdate(update))
        await room.files.save(reason="test")
        assert renames == ["nb.ipynb"]
        assert not setup.nb.exists()
        assert read_sources(tmp_path / "moved.ipynb") == ["a = 1 # one", "b = 2"]
        assert room.files._save_failure is None
        update = client_update(room, lambda nb: append(nb.ycells[1]["source"], " # two"))
        await room.handle(alice, sync.SyncUpdate(update))
        await room.files.save(reason="test")
        assert read_sources(tmp_path / "moved.ipynb") == ["a = 1 # one", "b = 2 # two"]
        assert room.document.get()["cells"][0]["source"] == "a = 1 # one"
    assert "went away as it was saved; looking again" in caplog.text
    assert "changed on disk" not in caplog.text and "cannot save" not in caplog.text
    assert not setup.nb.exists()


@pytest.mark.parametrize("how", ["autosave", "request"])
async def test_a_file_renamed_by_another_server_is_saved_at_its_new_path_once_the_ids_know_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    """Another server renames the file on disk, then tells the shared file ids: for a
    moment this server's id still names the old path, where no file is. A save in that
    moment waits for the rename to arrive and saves at the new path, logging no error
    (three servers on PostgreSQL logged "cannot save the file" for it, retried 2 s later)."""
    setup = Setup(tmp_path, fresh_store_class(), save_delay=0.05 if how == "autosave" else None)
    write_notebook(setup.nb, ["a = 1", "b = 2"])
    caplog.set_level(logging.INFO, logger=LOG.name)
    async with open_room(setup) as (room, alice, tg):
        os.rename(setup.nb, setup.root / "moved.ipynb")

        async def ids_learn_the_rename() -> None:
            await anyio.sleep(0.3)
            setup.ids.paths["id-1"] = "moved.ipynb"

        tg.start_soon(ids_learn_the_rename)
        update = client_update(room, lambda nb: append(nb.ycells[0]["source"], " # one"))
        await room.handle(alice, sync.SyncUpdate(update))
        if how == "request":
            assert await room.files.save(reason="test")
        await wait_until(lambda: read_sources(tmp_path / "moved.ipynb") == ["a = 1 # one", "b = 2"])
        assert room.files._save_failure is None
    assert "nb.ipynb was renamed to moved.ipynb as it was saved; saving there" in caplog.text
    assert "cannot save" not in caplog.text and "changed on disk" not in caplog.text
    assert not setup.nb.exists()


async def test_a_file_renamed_by_another_server_is_followed_by_the_poll_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The file poll, looking in the moment between another server's rename on disk and
    the shared file ids learning it, waits for the ids and follows the file: no warning."""
    setup = Setup(tmp_path, fresh_store_class(), save_delay=None, poll_interval=0.05)
    write_notebook(setup.nb, ["a = 1", "b = 2"])
    caplog.set_level(logging.INFO, logger=LOG.name)
    async with open_room(setup) as (room, _alice, _tg):
        await anyio.sleep(0.2)  # the poll is watching
        os.rename(setup.nb, setup.root / "moved.ipynb")
        await anyio.sleep(0.3)  # polls find the old path empty meanwhile
        setup.ids.paths["id-1"] = "moved.ipynb"
        await wait_until(lambda: room.document.ystate.get("path") == "moved.ipynb")
    assert "cannot poll" not in caplog.text and "cannot save" not in caplog.text


async def test_a_file_deleted_outside_jupyter_fails_its_save_after_the_wait_for_a_rename(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file removed outside Jupyter keeps its id and path: the wait for a rename ends
    with nothing renamed, and the save fails as before, with one error and the edits kept."""
    monkeypatch.setattr(filesync, "RENAME_WAIT", 0.2)
    setup = Setup(tmp_path, fresh_store_class(), save_delay=None)
    write_notebook(setup.nb, ["a = 1", "b = 2"])
    caplog.set_level(logging.INFO, logger=LOG.name)
    async with open_room(setup) as (room, alice, _tg):
        setup.nb.unlink()
        update = client_update(room, lambda nb: append(nb.ycells[0]["source"], " # kept"))
        await room.handle(alice, sync.SyncUpdate(update))
        started = time.monotonic()
        with pytest.raises(FileGone):
            await room.files.save(reason="test")
        assert time.monotonic() - started >= 0.2
        assert room.document.get()["cells"][0]["source"] == "a = 1 # kept"
    assert "was renamed" not in caplog.text


async def test_a_write_that_keeps_the_files_time_is_noticed_by_the_next_save(setup: Setup) -> None:
    """On a file system with a coarse clock (Linux before 6.13: a tick of a few ms), a write
    by another process just after ours keeps our modification time. The next save must still
    see it (by its hash) and merge it, not write over it."""
    async with open_room(setup) as (room, alice, _tg):
        await type_into(room, alice, 0, "  # one")
        await wait_until(lambda: read_sources(setup.nb) == ["a = 1  # one", "b = 2"])
        await room.files.save(reason="test")  # settled: nothing left to write
        ours = os.stat(setup.nb).st_mtime_ns
        write_notebook(setup.nb, ["a = 1  # one", "b = 2", "c = 3"])
        os.utime(setup.nb, ns=(ours, ours))  # the same tick as our save
        await type_into(room, alice, 1, "  # two")
        expected = ["a = 1  # one", "b = 2  # two", "c = 3"]
        await wait_until(lambda: read_sources(setup.nb) == expected)
        assert [cell["source"] for cell in room.document.get()["cells"]] == expected


async def test_a_file_written_between_a_saves_look_and_its_write_is_merged_not_overwritten(
    setup: Setup,
) -> None:
    """Another server (or ``git pull``) can write the file after a save looked at it and
    before it writes (it waits on the file's lock, not on the save's decision). Writing then
    would drop that write's content (two servers' last saves crossing left the file without
    the other's last keystrokes): the save looks again and merges it."""
    async with open_room(setup) as (room, alice, _tg):

        async def written_elsewhere() -> None:
            write_notebook(setup.nb, ["a = 1", "b = 2", "c = 3"])
            edited_elsewhere(setup.nb)

        written = after_the_next_look(room, written_elsewhere)
        await type_into(room, alice, 0, "  # alice")
        expected = ["a = 1  # alice", "b = 2", "c = 3"]
        await wait_until(lambda: read_sources(setup.nb) == expected)
        assert written
        assert [cell["source"] for cell in room.document.get()["cells"]] == expected
        await room.flush()
        assert setup.replay() == room.document.get()


class StatCountingContents(AsyncLargeFileManager):
    """Counts every ``get`` (the poller's time-only stats included)."""

    gets = 0

    async def get(self, path: str, content: bool = True, **kwargs: Any) -> Any:
        type(self).gets += 1
        return await super().get(path, content=content, **kwargs)


async def test_the_poller_asks_the_contents_manager_only_when_the_file_changed(
    setup: Setup,
) -> None:
    """An idle room's poll is one stat(2) in a thread: the contents manager's stat (a model,
    a hidden-file check, an event validated against its schema) costs the event loop ~1 ms.
    A change is still seen."""
    counting = type("Counting", (StatCountingContents,), {"gets": 0})
    setup.contents = counting(root_dir=str(setup.root))
    setup.settings.poll_interval = 0.02
    manager = setup.manager()
    async with anyio.create_task_group() as tg:
        await run_manager(manager, tg)
        room = await manager.get_room(ROOM)
        room.join(FakeClient())
        await anyio.sleep(0.2)  # the first polls confirm the file is the one loaded
        counting.gets = 0
        await anyio.sleep(0.3)  # ~15 polls
        assert counting.gets == 0

        write_notebook(setup.nb, ["a = 1", "b = 2", "c = 3"])
        edited_elsewhere(setup.nb)
        await wait_until(lambda: len(room.document.get()["cells"]) == 3)
        assert counting.gets > 0

        await manager.close_all()


async def test_a_poll_waiting_for_its_stat_does_not_hold_up_a_save(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watcher's stat runs in a worker thread without the room's save lock; a save while
    it is on its way is not held up, nor taken for a change on disk when its answer (the file
    before the save) arrives."""
    import threading

    from jupyter_ystore.server.rooms import fingerprints

    in_flight = threading.Event()
    real = fingerprints._fingerprints

    def slow(os_paths: list[str]) -> list:
        found = real(os_paths)  # the file as it was before the save
        in_flight.set()
        time.sleep(0.5)
        return found

    setup.settings.poll_interval = 0.02
    manager = setup.manager()
    async with anyio.create_task_group() as tg:
        await run_manager(manager, tg)
        room = await manager.get_room(ROOM)
        client = FakeClient()
        room.join(client)
        await anyio.sleep(0.2)  # the first polls: the file is the one loaded
        monkeypatch.setattr(fingerprints, "_fingerprints", slow)
        await wait_until(in_flight.is_set)
        assert not room.files._save_lock.locked()
        update = client_update(room, lambda nb: append(nb.ycells[0]["source"], "  # saved"))
        await room.handle(client, sync.SyncUpdate(update))
        started = time.monotonic()
        await room.handle(client, sync.SaveRequest(1))
        await wait_until(lambda: any(r.get("responseTo") == 1 for r in client.raw()))
        assert time.monotonic() - started < 0.4  # not behind the stat
        assert read_sources(setup.nb) == ["a = 1  # saved", "b = 2"]
        monkeypatch.setattr(fingerprints, "_fingerprints", real)
        await anyio.sleep(1.2)  # that poll's answer and the next ones see our own save
        assert room.document.get()["cells"][0]["source"] == "a = 1  # saved"
        assert "changed on disk" not in " ".join(str(r) for r in client.raw())
        await manager.close_all()


async def test_shutdown_saves_every_room(tmp_path: Path) -> None:
    setup = Setup(tmp_path, fresh_store_class(), save_delay=None)
    write_notebook(tmp_path / "one.ipynb", ["1"])
    write_notebook(tmp_path / "two.ipynb", ["2"])
    setup.ids.paths = {"one": "one.ipynb", "two": "two.ipynb"}
    manager = setup.manager()
    async with anyio.create_task_group() as tg:
        await run_manager(manager, tg)
        for file_id in ("one", "two"):
            room = await manager.get_room(f"json:notebook:{file_id}")
            client = FakeClient()
            room.join(client)
            update = client_update(room, lambda nb: append(nb.ycells[0]["source"], "+"))
            await room.handle(client, sync.SyncUpdate(update))
        await manager.close_all()
    assert read_sources(tmp_path / "one.ipynb") == ["1+"]
    assert read_sources(tmp_path / "two.ipynb") == ["2+"]
    assert all(not store._running for store in setup.stores)


async def test_two_servers_share_a_document_through_postgres(tmp_path: Path, pg_config: dict) -> None:
    """The live-update hook with the real backend: two managers (two servers) on one
    PostgreSQL store see each other's edits, and neither writes the other's back."""
    from jupyter_ystore import PostgresYStore

    write_notebook(tmp_path / "nb.ipynb", ["shared"])
    base = Setup(tmp_path, fresh_store_class(), save_delay=None)
    stores: list[PostgresYStore] = []

    def make_store(file_type: str, file_id: str) -> PostgresYStore:
        store = PostgresYStore(path=f".{file_type}:{file_id}.y", log=LOG, **pg_config)
        stores.append(store)
        return store

    server_a = RoomManager(make_store, base.make_file, base.settings, LOG)
    server_b = RoomManager(make_store, base.make_file, base.settings, LOG)
    async with anyio.create_task_group() as tg:
        await run_manager(server_a, tg)
        await run_manager(server_b, tg)
        room_a = await server_a.get_room(ROOM)
        room_b = await server_b.get_room(ROOM)
        alice, bob = FakeClient("alice"), FakeClient("bob")
        room_a.join(alice)
        room_b.join(bob)

        async def count() -> int:
            return len([r async for r in stores[0].read()])

        stored = await count()
        update = client_update(room_a, lambda nb: append(nb.ycells[0]["source"], " by alice"))
        await room_a.handle(alice, sync.SyncUpdate(update))
        await room_a.flush()
        await wait_until(lambda: room_b.document.get()["cells"][0]["source"] == "shared by alice")
        update = client_update(room_b, lambda nb: append(nb.ycells[0]["source"], ", bob"))
        await room_b.handle(bob, sync.SyncUpdate(update))
        await room_b.flush()
        await wait_until(lambda: room_a.document.get()["cells"][0]["source"] == "shared by alice, bob")
        await room_a.flush()
        await room_b.flush()
        assert await count() == stored + 2  # each edit stored once, by the server that got it
        await server_a.close_all()
        await server_b.close_all()


async def test_a_rename_reaches_the_state_map(setup: Setup) -> None:
    setup.settings.poll_interval = 0.05
    manager = setup.manager()
    async with anyio.create_task_group() as tg:
        await run_manager(manager, tg)
        room = await manager.get_room(ROOM)
        assert room.document.path == "nb.ipynb"
        await setup.contents.rename("nb.ipynb", "renamed.ipynb")
        setup.ids.paths["id-1"] = "renamed.ipynb"  # what jupyter-server-fileid does on a move
        await wait_until(lambda: room.document.path == "renamed.ipynb")
        client = FakeClient()
        room.join(client)
        update = client_update(room, lambda nb: append(nb.ycells[0]["source"], "!"))
        await room.handle(client, sync.SyncUpdate(update))
        await wait_until(lambda: read_sources(setup.root / "renamed.ipynb") == ["a = 1!", "b = 2"])
        assert not setup.nb.exists()
        await manager.close_all()


async def test_clients_receive_an_update_only_once_it_is_durable(tmp_path: Path) -> None:
    gate = anyio.Event()

    class Slow(MemoryYStore):
        hold = False

        async def write(self, data: bytes) -> None:
            if type(self).hold:
                await gate.wait()
            await super().write(data)

    store_class = type("SlowPrivate", (Slow,), {})
    setup = Setup(tmp_path, store_class, save_delay=None)
    write_notebook(setup.nb, ["a"])
    manager = setup.manager()
    async with anyio.create_task_group() as tg:
        await run_manager(manager, tg)
        room = await manager.get_room(ROOM)
        alice, bob = FakeClient("alice"), FakeClient("bob")
        room.join(alice)
        room.join(bob)
        store_class.hold = True
        update = client_update(room, lambda nb: append(nb.ycells[0]["source"], "b"))
        await room.handle(alice, sync.SyncUpdate(update))
        await anyio.sleep(0.05)
        relayed = [m for m in bob.frames + alice.frames if isinstance(m, sync.SyncUpdate)]
        assert relayed == []  # not durable yet: nobody has it from the server
        gate.set()
        await room.flush()
        assert any(isinstance(m, sync.SyncUpdate) for m in bob.frames)
        assert any(isinstance(m, sync.SyncUpdate) for m in alice.frames)  # the echo: an ack
        await manager.close_all()


async def test_collaboration_goes_on_while_the_store_fails(tmp_path: Path) -> None:
    class Down(MemoryYStore):
        down = False

        async def write(self, data: bytes) -> None:
            if type(self).down:
                raise OSError("database unreachable")
            await super().write(data)

    store_class = type("DownPrivate", (Down,), {})
    setup = Setup(tmp_path, store_class, save_delay=None, store_retry_delay=0.02)
    write_notebook(setup.nb, ["a"])
    manager = setup.manager()
    async with anyio.create_task_group() as tg:
        await run_manager(manager, tg)
        room = await manager.get_room(ROOM)
        alice, bob = FakeClient("alice"), FakeClient("bob")
        room.join(alice)
        room.join(bob)
        for client in (alice, bob):
            client.doc.apply_update(room.ydoc.get_update())
        store_class.down = True
        update = client_update(room, lambda nb: append(nb.ycells[0]["source"], "b"))
        await room.handle(alice, sync.SyncUpdate(update))
        await wait_until(lambda: YNotebook(bob.doc).get()["cells"][0]["source"] == "ab")
        await room.handle(alice, sync.SaveRequest(1))
        await wait_until(lambda: alice.raw())
        # saving to the file never waits for a failing store: the file has the edit
        assert alice.raw() == [{"type": "save", "responseTo": 1, "status": "success"}]
        assert read_sources(setup.nb) == ["ab"]
        assert setup.replay()["cells"][0]["source"] == "a"
        store_class.down = False
        await wait_until(lambda: setup.replay()["cells"][0]["source"] == "ab")
        await room.flush()
        await manager.close_all()


async def test_concurrent_opens_share_one_room_and_one_store(setup: Setup) -> None:
    manager = setup.manager()
    rooms: list[Any] = []
    async with anyio.create_task_group() as tg:
        await run_manager(manager, tg)

        async def open_room() -> None:
            rooms.append(await manager.get_room(ROOM))

        async with anyio.create_task_group() as openers:
            for _ in range(5):
                openers.start_soon(open_room)
        assert len(rooms) == 5 and all(room is rooms[0] for room in rooms)
        assert len(setup.stores) == 1
        assert len(setup.records()) == 1  # loaded and stored once
        await manager.close_all()


class ClosableClient(FakeClient):
    def __init__(self, username: str = "alice") -> None:
        super().__init__(username)
        self.closed_with: tuple[int, str] | None = None

    def close(self, code: int, reason: str) -> None:
        self.closed_with = (code, reason)


async def test_a_document_damaged_by_an_update_resets_its_room_only(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If an update got past the checks and still damaged the document (never seen with
    yrs; simulated here), nothing of it is stored or relayed, its room closes without saving,
    its clients are told to reconnect, and the document reopens from the store."""
    from jupyter_ystore.core.update_guard import BadUpdate, DocumentDamaged

    write_notebook(setup.root / "other.ipynb", ["other"])
    setup.ids.paths["id-2"] = "other.ipynb"
    manager = setup.manager()
    async with anyio.create_task_group() as tg:
        await run_manager(manager, tg)
        room = await manager.get_room(ROOM)
        other_room = await manager.get_room("json:notebook:id-2")
        alice, bob = ClosableClient("alice"), ClosableClient("bob")
        room.join(alice)
        room.join(bob)
        records = len(setup.records())
        bad = client_update(room, lambda nb: append(nb.ycells[0]["source"], " broken"))
        real_apply = room.guard.apply

        async def damaging(update: bytes) -> None:
            await real_apply(update)
            raise DocumentDamaged("simulated damage")

        monkeypatch.setattr(room.guard, "apply", damaging)
        with pytest.raises(BadUpdate):
            await room.handle(alice, sync.SyncUpdate(bad))
        await room.closed.wait()
        assert alice.closed_with is not None and alice.closed_with[0] == 1011
        assert bob.closed_with is not None and bob.closed_with[0] == 1011
        assert not any(isinstance(f, sync.SyncUpdate) for f in bob.frames)  # never relayed
        assert len(setup.records()) == records  # never stored
        assert read_sources(setup.nb) == ["a = 1", "b = 2"]  # never saved
        assert manager.rooms.get("json:notebook:id-2") is other_room and not other_room.closing
        reopened = await manager.get_room(ROOM)
        assert reopened is not room
        assert YNotebook(reopened.ydoc).get()["cells"][0]["source"] == "a = 1"
        await manager.close_all()


async def test_a_room_that_fails_does_not_end_the_manager(
    setup: Setup, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from jupyter_ystore.server.rooms.filesync import FileSync

    write_notebook(setup.root / "other.ipynb", ["other"])
    setup.ids.paths["id-2"] = "other.ipynb"
    manager = setup.manager()
    async with anyio.create_task_group() as tg:
        await run_manager(manager, tg)
        other_room = await manager.get_room("json:notebook:id-2")
        real_saver = FileSync.saver
        failed = anyio.Event()

        async def broken_saver(self: Any) -> None:
            failed.set()
            raise RuntimeError("a bug in a room task")

        monkeypatch.setattr(FileSync, "saver", broken_saver)
        room = await manager.get_room(ROOM)
        monkeypatch.setattr(FileSync, "saver", real_saver)
        client = ClosableClient()
        room.join(client)
        update = client_update(room, lambda nb: append(nb.ycells[0]["source"], "  # kept"))
        await room.handle(client, sync.SyncUpdate(update))
        await failed.wait()
        await room.closed.wait()
        assert "a bug in a room task" in caplog.text
        assert read_sources(setup.nb)[0] == "a = 1  # kept"  # it still saved on its way out
        assert manager.running
        assert manager.rooms.get("json:notebook:id-2") is other_room and not other_room.closing
        again = await manager.get_room(ROOM)
        assert again is not room and not again.closing
        assert YNotebook(again.ydoc).get()["cells"][0]["source"] == "a = 1  # kept"
        await manager.close_all()


class CountingContents(AsyncLargeFileManager):
    """Counts the reads that parse the file's content (not the hash-only ones)."""

    content_reads = 0

    async def get(self, path: str, content: bool = True, **kwargs: Any) -> Any:
        if content:
            type(self).content_reads += 1
        return await super().get(path, content=content, **kwargs)


async def test_reopening_a_saved_document_does_not_parse_its_file(setup: Setup) -> None:
    counting = type("Counting", (CountingContents,), {"content_reads": 0})
    setup.contents = counting(root_dir=str(setup.root))
    manager = setup.manager()
    async with anyio.create_task_group() as tg:
        await run_manager(manager, tg)
        room = await manager.get_room(ROOM)
        client = FakeClient()
        room.join(client)
        update = client_update(room, lambda nb: append(nb.ycells[0]["source"], "  # saved"))
        await room.handle(client, sync.SyncUpdate(update))
        await room.handle(client, sync.SaveRequest(1))
        await wait_until(lambda: any(r.get("responseTo") == 1 for r in client.raw()))
        await manager.close_all()
        tg.cancel_scope.cancel()
    assert read_sources(setup.nb) == ["a = 1  # saved", "b = 2"]

    counting.content_reads = 0
    manager = setup.manager()
    async with anyio.create_task_group() as tg:
        await run_manager(manager, tg)
        room = await manager.get_room(ROOM)
        assert [c["source"] for c in room.document.get()["cells"]] == ["a = 1  # saved", "b = 2"]
        assert counting.content_reads == 0  # the hash said the file is the one saved
        await manager.close_all()
        tg.cancel_scope.cancel()

    # Changed on disk while no room had it: the content is read and merged at the next open.
    write_notebook(setup.nb, ["a = 1  # saved", "b = 2", "c = 3"])
    manager = setup.manager()
    async with anyio.create_task_group() as tg:
        await run_manager(manager, tg)
        room = await manager.get_room(ROOM)
        assert [c["source"] for c in room.document.get()["cells"]] == [
            "a = 1  # saved",
            "b = 2",
            "c = 3",
        ]
        assert counting.content_reads >= 1
        await manager.close_all()
        tg.cancel_scope.cancel()


def record_conversions_and_saves(room: Any) -> tuple[list[int], list[list[str]]]:
    """Lists that grow with each conversion of ``room``'s document and with the cell sources
    of each save of its file."""
    conversions: list[int] = []
    convert = room.document.get
    room.document.get = lambda: conversions.append(1) or convert()
    convert_in_steps = getattr(room.document, "aget", None)
    if convert_in_steps is not None:

        async def counted_in_steps() -> Any:
            conversions.append(1)
            return await convert_in_steps()

        room.document.aget = counted_in_steps
    written: list[list[str]] = []
    save_file = room.files.file.save

    async def recording_save(content: Any, **kwargs: Any) -> Any:
        written.append([cell["source"] for cell in content["cells"]])
        return await save_file(content, **kwargs)

    room.files.file.save = recording_save
    return conversions, written


async def test_an_autosave_converts_the_document_once_and_saves_what_came_during_it(setup: Setup) -> None:
    """The saver converts the notebook to compare it with the last save and hands that to the
    save (20 ms of the event loop for 400 cells); an edit that arrives while the save waits
    for the store makes the save convert again, so the file never misses it."""
    async with open_room(setup) as (room, alice, _tg):
        conversions, written = record_conversions_and_saves(room)
        update = client_update(room, lambda nb: append(nb.ycells[0]["source"], "  # one"))
        await room.handle(alice, sync.SyncUpdate(update))
        await wait_until(lambda: read_sources(setup.nb) == ["a = 1  # one", "b = 2"])
        assert len(conversions) == 1 and len(written) == 1

        # an edit while the save waits for the store
        settle = room.files.writer.settle
        late = client_update(room, lambda nb: append(nb.ycells[1]["source"], "  # late"))

        async def settle_after_an_edit(timeout: Any) -> Any:
            if room.files.writer.settle is settle_after_an_edit:
                room.files.writer.settle = settle
                await room.handle(alice, sync.SyncUpdate(late))
            return await settle(timeout)

        room.files.writer.settle = settle_after_an_edit
        update = client_update(room, lambda nb: append(nb.ycells[0]["source"], "  # two"))
        await room.handle(alice, sync.SyncUpdate(update))
        await wait_until(lambda: len(written) >= 2)
        assert written[1] == ["a = 1  # one  # two", "b = 2  # late"]


@pytest.mark.parametrize("edit", ["both cells", "a cell deleted"])
async def test_an_autosave_reads_the_notebook_a_cell_at_a_time_and_never_saves_a_mix(
    setup: Setup, edit: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The saver reads the notebook a cell at a time (jupyter_ydoc's ``aget``), so that 48
    rooms' autosaves do not hold the event loop 12-15 ms each. An edit that comes in between
    two cells would make the content a mix of two states (here: the first cell before the
    edit, the second after), or fail the read (a cell deleted): the saver reads it again at
    once, and the file gets the content after the edit, whole."""
    pytest.importorskip("jupyter_ydoc", minversion="4.1")
    async with open_room(setup) as (room, alice, _tg):
        conversions, written = record_conversions_and_saves(room)
        if edit == "both cells":
            change: Any = lambda nb: (append(nb.ycells[0]["source"], "X"), append(nb.ycells[1]["source"], "X"))
            expected = ["a = 11X", "b = 2X"]
        else:
            change = lambda nb: nb.ycells.pop(1)
            expected = ["a = 11"]
        read_in_steps = room.document.aget
        cells_of = room.document._get
        first_cell_read = anyio.Event()
        edited: list[int] = []

        def cells_watched(deduplicate: bool) -> Any:
            for n, value in enumerate(cells_of(deduplicate)):
                if n == 1:  # it yields before reading each cell: the first one is read
                    first_cell_read.set()
                yield value

        async def read_with_an_edit_midway() -> Any:
            if edited:
                return await read_in_steps()
            edited.append(1)
            late = client_update(room, change)  # made after the edit that woke the saver
            room.document._get = cells_watched
            async with anyio.create_task_group() as tg:

                async def edit_midway() -> None:
                    await first_cell_read.wait()
                    await room.handle(alice, sync.SyncUpdate(late))

                tg.start_soon(edit_midway)
                try:
                    return await read_in_steps()
                finally:
                    room.document._get = cells_of

        room.document.aget = read_with_an_edit_midway
        update = client_update(room, lambda nb: append(nb.ycells[0]["source"], "1"))
        await room.handle(alice, sync.SyncUpdate(update))
        await wait_until(lambda: read_sources(setup.nb) == expected)
        assert edited == [1]
        assert written[0] == expected, written  # never a mix
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert not errors  # nor a failed read (it would close the room)
        assert len(conversions) == 2  # in steps, then at once


async def test_edits_during_the_autosave_delay_are_saved_once_and_not_converted_again(setup: Setup) -> None:
    """Typing goes on while the saver waits out its delay, so each keystroke asks for a save
    again. The save converts after all of them, so afterwards there is nothing to compare:
    no second conversion (48 rooms that stopped typing together each converted their
    notebook a second time, one after another, for nothing: the loop held 24-28 ms)."""
    setup.settings = dataclasses.replace(setup.settings, save_delay=0.3)
    async with open_room(setup) as (room, alice, _tg):
        conversions, written = record_conversions_and_saves(room)
        for typed in ("1", "2", "3"):  # within the delay of one another
            update = client_update(room, lambda nb: append(nb.ycells[0]["source"], typed))
            await room.handle(alice, sync.SyncUpdate(update))
            await anyio.sleep(0.05)
        await wait_until(lambda: read_sources(setup.nb) == ["a = 1123", "b = 2"])
        await anyio.sleep(0.8)  # past another delay: the saver has woken again by now
        assert written == [["a = 1123", "b = 2"]]
        assert len(conversions) == 1

        # a later edit is converted and saved as before
        update = client_update(room, lambda nb: append(nb.ycells[1]["source"], "4"))
        await room.handle(alice, sync.SyncUpdate(update))
        await wait_until(lambda: read_sources(setup.nb) == ["a = 1123", "b = 24"])
        assert len(conversions) == 2 and len(written) == 2


def save_answered(client: FakeClient, request_id: int) -> bool:
    return {"type": "save", "responseTo": request_id, "status": "success"} in client.raw()


async def test_a_save_or_a_close_with_nothing_new_since_the_last_save_converts_nothing(tmp_path: Path) -> None:
    """A save request (Ctrl+S) or the room's close find the document as the last save left
    it: nothing to convert (converting a 60-cell notebook at once held the event loop 12 ms
    at every close). Any update since, the state map's included, makes them convert again,
    a cell at a time where the document can, and save what is new."""
    setup = Setup(tmp_path, fresh_store_class(), save_delay=None)  # saves on request only
    write_notebook(setup.nb, ["a = 1", "b = 2"])
    async with open_room(setup) as (room, alice, _tg):
        conversions, written = record_conversions_and_saves(room)
        converted_at_once: list[int] = []
        convert = room.document.get
        room.document.get = lambda: converted_at_once.append(1) or convert()
        await type_into(room, alice, 0, "1")
        await room.handle(alice, sync.SaveRequest(1))
        await wait_until(lambda: save_answered(alice, 1))
        assert read_sources(setup.nb) == ["a = 11", "b = 2"]
        assert len(conversions) == 1 and len(written) == 1

        await room.handle(alice, sync.SaveRequest(2))
        await wait_until(lambda: save_answered(alice, 2))
        assert len(conversions) == 1 and len(written) == 1  # nothing converted, nothing written

        await type_into(room, alice, 1, "2")
        await room.handle(alice, sync.SaveRequest(3))
        await wait_until(lambda: save_answered(alice, 3))
        assert read_sources(setup.nb) == ["a = 11", "b = 22"]
        assert len(conversions) == 2 and len(written) == 2

        # an update of the state map only: converted, found equal, not written
        with room.ydoc.transaction():
            room.document.ystate["some_flag"] = True
        await room.handle(alice, sync.SaveRequest(4))
        await wait_until(lambda: save_answered(alice, 4))
        assert len(conversions) == 3 and len(written) == 2

        await room.close()  # nothing new since: the close converts nothing
        assert len(conversions) == 3 and len(written) == 2
        if getattr(room.document, "aget", None) is not None:
            assert converted_at_once == []  # a cell at a time, every time
    assert read_sources(setup.nb) == ["a = 11", "b = 22"]


async def test_a_close_after_an_autosave_converts_nothing_unless_an_edit_came_since(setup: Setup) -> None:
    """The autosave leaves the same mark: a close right after it converts nothing; a close
    with an edit the autosave has not reached yet converts it and saves it."""
    async with open_room(setup) as (room, alice, _tg):
        conversions, written = record_conversions_and_saves(room)
        await type_into(room, alice, 0, "1")
        await wait_until(lambda: read_sources(setup.nb) == ["a = 11", "b = 2"])
        await wait_until(lambda: room.files._nothing_to_save())
        assert len(conversions) == 1
        await room.close()
        assert len(conversions) == 1 and len(written) == 1

    setup.settings.save_delay = 30.0  # the edit waits for the close
    async with open_room(setup) as (room, alice, _tg):
        conversions, written = record_conversions_and_saves(room)
        await type_into(room, alice, 1, "2")
        await room.close()
        assert len(conversions) == 1 and written == [["a = 11", "b = 22"]]
    assert read_sources(setup.nb) == ["a = 11", "b = 22"]


class OverlapCountingContents(AsyncLargeFileManager):
    """Records how many saves are in progress at once (each takes a while, as on a slow disk)."""

    in_flight = 0
    most_at_once = 0
    saved: list[str] = []

    async def save(self, model: dict, path: str = "") -> dict:
        cls = type(self)
        cls.in_flight += 1
        cls.most_at_once = max(cls.most_at_once, cls.in_flight)
        try:
            await anyio.sleep(0.2)
            return await super().save(model, path)
        finally:
            cls.in_flight -= 1
            cls.saved.append(path)


async def test_rooms_that_stop_typing_together_save_a_few_at_a_time(setup: Setup) -> None:
    """Twelve rooms whose autosave delays end in the same turn: at most ``AT_ONCE`` saves
    (each converting its document on the event loop first) run at a time; all are saved."""
    from jupyter_ystore.server.rooms import save_slots

    counting = type("Overlap", (OverlapCountingContents,), {"in_flight": 0, "most_at_once": 0, "saved": []})
    setup.contents = counting(root_dir=str(setup.root))
    setup.settings = dataclasses.replace(setup.settings, save_delay=0.5)  # all due together
    names = [f"nb{i}.ipynb" for i in range(12)]
    room_ids = setup.add_notebooks(names)
    manager = setup.manager()
    async with anyio.create_task_group() as tg:
        await run_manager(manager, tg)
        rooms = [await manager.get_room(room_id) for room_id in room_ids]
        clients = [FakeClient() for _ in rooms]
        for room, client in zip(rooms, clients):
            room.join(client)
        updates = [client_update(room, lambda nb: append(nb.ycells[0]["source"], "  # typed")) for room in rooms]
        for room, client, update in zip(rooms, clients, updates):  # one edit each, together
            await room.handle(client, sync.SyncUpdate(update))
        await wait_until(lambda: len(set(counting.saved) & set(names)) == 12, timeout=20)
        assert 1 < counting.most_at_once <= save_slots.AT_ONCE
        for i, name in enumerate(names):
            assert read_sources(setup.root / name) == [f"x = {i}  # typed"]
        await manager.close_all()
        tg.cancel_scope.cancel()


async def test_saves_stuck_in_every_slot_do_not_keep_other_rooms_from_saving(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """A save hangs in every slot (a network file system gone away): one more room still
    saves, once it has waited ``LONGEST_WAIT`` for a slot."""
    from jupyter_ystore.server.rooms import save_slots

    monkeypatch.setattr(save_slots, "LONGEST_WAIT", 0.3)
    hung = anyio.Event()

    class Hanging(AsyncLargeFileManager):
        async def save(self, model: dict, path: str = "") -> dict:
            if path != "free.ipynb":
                await hung.wait()
            return await super().save(model, path)

    setup.contents = Hanging(root_dir=str(setup.root))
    names = [f"stuck{i}.ipynb" for i in range(save_slots.AT_ONCE)] + ["free.ipynb"]
    room_ids = setup.add_notebooks(names)
    manager = setup.manager()
    async with anyio.create_task_group() as tg:
        await run_manager(manager, tg)
        rooms = [await manager.get_room(room_id) for room_id in room_ids]
        for room in rooms:
            client = FakeClient()
            room.join(client)
            update = client_update(room, lambda nb: append(nb.ycells[0]["source"], "  # typed"))
            await room.handle(client, sync.SyncUpdate(update))
            await anyio.sleep(0.02)  # the stuck ones take the slots first
        free = f"x = {len(names) - 1}  # typed"
        await wait_until(lambda: read_sources(setup.root / "free.ipynb") == [free], timeout=10)
        hung.set()
        await manager.close_all()
        tg.cancel_scope.cancel()


async def test_an_open_room_at_rest_keeps_only_the_tasks_it_waits_in(setup: Setup) -> None:
    """Each waiting task is about 26 objects that every full garbage collection walks, for
    every open room: a room at rest waits in its own task (which hosts its work group), its
    store's, its writer's and its saver's; the file poll and the work group need none."""
    import asyncio

    setup.settings.poll_interval = 0.02
    manager = setup.manager()
    async with anyio.create_task_group() as tg:
        await run_manager(manager, tg)
        before = set(asyncio.all_tasks())
        room = await manager.get_room(ROOM)
        alice = FakeClient("alice")
        room.join(alice)
        await anyio.sleep(0.2)  # polls come and go; the checks' index is built
        # (anyio names a task after its function: module, class, name)
        names = sorted(".".join(task.get_name().split(".")[-2:]) for task in asyncio.all_tasks() - before)
        assert names == ["BaseYStore.start", "FileSync.saver", "RoomManager._serve_opening", "WritePipeline.run"]
        # the poll still works: a change on disk reaches the document
        write_notebook(setup.nb, ["a = 1", "b = 2", "c = 3"])
        edited_elsewhere(setup.nb)
        await wait_until(lambda: len(room.document.get()["cells"]) == 3)
        await manager.close_all()
        tg.cancel_scope.cancel()
