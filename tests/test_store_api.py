"""The seed's store API, run against every backend: one suite, one list of backends.

Each backend is a factory ``(tmp_path, request) -> make(path, **kwargs) -> store``; every
store ``make`` returns for one test shares one storage location (folder, database), so a
second store of the same path is the same document reopened.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import anyio
import pycrdt
import pytest

from jupyter_ystore import (
    BaseYStore,
    FileYStore,
    MemoryYStore,
    TempFileYStore,
    YDocNotFound,
    YStoreCorruptError,
    YStoreError,
    YStoreInvalidUpdate,
)

pytestmark = pytest.mark.anyio

Make = Callable[..., BaseYStore]


def _memory(tmp_path: Path, request: Any) -> Make:
    # a class of its own per test: MemoryYStore keeps one "database" per class
    return type("MemoryYStoreForTest", (MemoryYStore,), {})


def _file(tmp_path: Path, request: Any) -> Make:
    root = str(tmp_path / "file-store")
    return lambda path, **kwargs: FileYStore(path, root_dir=root, **kwargs)


def _temp_file(tmp_path: Path, request: Any) -> Make:
    return type("TempFileYStoreForTest", (TempFileYStore,), {"base_dir": str(tmp_path / "tmp")})


def _sqlite(tmp_path: Path, request: Any) -> Make:
    from jupyter_ystore import SQLiteYStore

    # the seed's way of configuring it: a subclass naming the database file
    return type("SQLiteYStoreForTest", (SQLiteYStore,), {"db_path": str(tmp_path / "y.db")})


def _postgres(tmp_path: Path, request: Any) -> Make:
    from postgres_helpers import fresh_config  # a schema of the test's own; skips without a server

    from jupyter_ystore import PostgresYStore

    config = fresh_config(request)
    return lambda path, **kwargs: PostgresYStore(path, **config, **kwargs)


@dataclass(frozen=True)
class Backend:
    id: str
    factory: Callable[[Path, Any], Make]


BACKENDS = [
    Backend("memory", _memory),
    Backend("file", _file),
    Backend("tempfile", _temp_file),
    Backend("sqlite", _sqlite),
    Backend("postgres", _postgres),
]


@pytest.fixture(params=BACKENDS, ids=[b.id for b in BACKENDS])
def make(request: Any, tmp_path: Path) -> Make:
    return request.param.factory(tmp_path, request)


# ---------------------------------------------------------------------- helpers


def typed_updates(n: int) -> tuple[list[bytes], str]:
    doc = pycrdt.Doc()
    text = doc.get("source", type=pycrdt.Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    for i in range(n):
        text += f"{i},"
    return updates, str(text)


async def read_all(store: BaseYStore) -> list[tuple[bytes, bytes, float]]:
    return [record async for record in store.read()]


def pycrdt_notebook() -> pycrdt.Doc:
    doc = pycrdt.Doc()
    doc.get("source", type=pycrdt.Text).insert(0, "print('hé ✓')")
    doc.get("meta", type=pycrdt.Map)["kernel"] = "python3"
    doc.get("cells", type=pycrdt.Array).extend(["a", "b"])
    return doc


def ypy_notebook() -> Any:
    import y_py

    doc = y_py.YDoc()
    source, meta, cells = doc.get_text("source"), doc.get_map("meta"), doc.get_array("cells")
    with doc.begin_transaction() as txn:
        source.extend(txn, "print('hé ✓')")
        meta.set(txn, "kernel", "python3")
        cells.extend(txn, ["a", "b"])
    return doc


def content(doc: Any) -> dict:
    if isinstance(doc, pycrdt.Doc):
        return {
            "source": str(doc.get("source", type=pycrdt.Text)),
            "meta": doc.get("meta", type=pycrdt.Map).to_py(),
            "cells": doc.get("cells", type=pycrdt.Array).to_py(),
        }
    return {
        "source": str(doc.get_text("source")),
        "meta": json.loads(doc.get_map("meta").to_json()),
        "cells": json.loads(doc.get_array("cells").to_json()),
    }


EXPECTED = {"source": "print('hé ✓')", "meta": {"kernel": "python3"}, "cells": ["a", "b"]}


# ---------------------------------------------------------------------- reading and writing


async def test_write_then_read_in_order_with_types(make: Make) -> None:
    updates, final = typed_updates(25)
    counter = iter(range(1000))
    async with make("doc", metadata_callback=lambda: b"m%d" % next(counter)) as store:
        for update in updates:
            await store.write(update)
        records = await read_all(store)
    assert [r[0] for r in records] == updates
    assert [r[1] for r in records] == [b"m%d" % i for i in range(25)]
    for update, metadata, timestamp in records:
        assert type(update) is bytes and type(metadata) is bytes and type(timestamp) is float
    stamps = [r[2] for r in records]
    assert stamps == sorted(stamps)


async def test_empty_store_is_doc_not_found(make: Make) -> None:
    async with make("nothing-here") as store:
        with pytest.raises(YDocNotFound):
            await read_all(store)
        with pytest.raises(YDocNotFound):
            await store.apply_updates(pycrdt.Doc())
    assert not issubclass(YDocNotFound, YStoreError)  # "empty" is never "broken"


async def test_documents_are_independent(make: Make) -> None:
    async with make("a") as a, make("b") as b:
        await a.write(typed_updates(1)[0][0])
        assert len(await read_all(a)) == 1
        with pytest.raises(YDocNotFound):
            await read_all(b)


async def test_concurrent_writes_are_all_kept(make: Make) -> None:
    updates, final = typed_updates(60)
    async with make("doc") as store:
        async with anyio.create_task_group() as tg:
            for update in updates:
                tg.start_soon(store.write, update)
        assert sorted(r[0] for r in await read_all(store)) == sorted(updates)
        doc = pycrdt.Doc()
        await store.apply_updates(doc)
        assert str(doc.get("source", type=pycrdt.Text)) == final


async def test_stop_during_writes_keeps_every_acknowledged_write(make: Make) -> None:
    updates, _ = typed_updates(40)
    store = make("doc")
    acknowledged: list[bytes] = []
    refused: list[BaseException] = []

    async def writer(update: bytes) -> None:
        try:
            await store.write(update)
        except (RuntimeError, YStoreError) as exc:  # "not running": said so, not dropped
            refused.append(exc)
        else:
            acknowledged.append(update)

    async with anyio.create_task_group() as tg:
        await tg.start(store.start)
        for update in updates[:20]:
            tg.start_soon(writer, update)
        await anyio.sleep(0)  # some writes are under way
        stopping = store.stop()
        for update in updates[20:]:
            tg.start_soon(writer, update)
        await stopping
    assert len(acknowledged) + len(refused) == 40  # every write answered
    async with make("doc") as again:
        try:
            stored = [r[0] for r in await read_all(again)]
        except YDocNotFound:
            stored = []
    assert set(acknowledged) <= set(stored)


async def test_reopening_finds_what_was_written(make: Make) -> None:
    updates, final = typed_updates(10)
    async with make("doc", metadata_callback=lambda: b"who") as store:
        for update in updates:
            await store.write(update)
    async with make("doc") as store:
        records = await read_all(store)
        assert [r[:2] for r in records] == [(u, b"who") for u in updates]
        await store.write(b"\x00\x00")
    async with make("doc") as store:
        assert len(await read_all(store)) == 11


@pytest.mark.parametrize(
    "writer,reader",
    [("pycrdt", "y_py"), ("y_py", "pycrdt"), ("pycrdt", "pycrdt"), ("y_py", "y_py")],
)
async def test_both_document_libraries(make: Make, writer: str, reader: str) -> None:
    import y_py

    async with make("doc") as store:
        await store.encode_state_as_update(
            pycrdt_notebook() if writer == "pycrdt" else ypy_notebook()
        )
        target = pycrdt.Doc() if reader == "pycrdt" else y_py.YDoc()
        await store.apply_updates(target)
        assert content(target) == EXPECTED


async def test_apply_updates_refuses_other_objects(make: Make) -> None:
    async with make("doc") as store:
        await store.encode_state_as_update(pycrdt_notebook())
        with pytest.raises(TypeError, match="pycrdt.Doc or a y_py.YDoc"):
            await store.apply_updates({"not": "a doc"})
        with pytest.raises(TypeError):
            await store.encode_state_as_update("not a doc")
        assert len(await read_all(store)) == 1


async def test_admin_api_compact_list_delete(make: Make) -> None:
    updates, final = typed_updates(40)
    async with make("doc") as store, make("other") as other:
        for update in updates:
            await store.write(update)
        await other.write(b"\x00\x00")
        listed = {info.path: info for info in await store.list_documents()}
        assert listed.keys() >= {"doc", "other"}
        assert listed["doc"].updates == 40
        await store.compact()
        doc = pycrdt.Doc()
        await store.apply_updates(doc)
        assert str(doc.get("source", type=pycrdt.Text)) == final
        await store.delete()
        with pytest.raises(YDocNotFound):
            await read_all(store)
        assert len(await read_all(other)) == 1
    async with make("doc") as store:  # the compacted, deleted document stays deleted
        with pytest.raises(YDocNotFound):
            await read_all(store)


async def test_every_store_refuses_bytes_that_are_not_an_update_and_keeps_the_rest(
    make: Make,
) -> None:
    """One rule for all backends: garbage is refused at the door with YStoreInvalidUpdate
    (a YStoreError and a ValueError), nothing of it is stored, and the document still loads."""
    first = typed_updates(1)[0][0]
    async with make("doc") as store:
        await store.write(first)
        for garbage in (b"\xff\xff\xff", b"", b"\x01\x01\x05\x00\x84", bytearray(b"\x00")):
            with pytest.raises(YStoreInvalidUpdate, match="not a Yjs v1 update") as info:
                await store.write(garbage)
            assert isinstance(info.value, YStoreError) and isinstance(info.value, ValueError)
        assert [update for update, _m, _t in await read_all(store)] == [first]
        for doc in (pycrdt.Doc(), __import__("y_py").YDoc()):
            await store.apply_updates(doc)


# ---------------------------------------------------------------------- failing writes


async def test_write_of_non_bytes_raises_and_stores_nothing(make: Make) -> None:
    async with make("doc") as store:
        for bad in ("text", 42, None):
            with pytest.raises(TypeError):
                await store.write(bad)  # type: ignore[arg-type]
        with pytest.raises(YDocNotFound):
            await read_all(store)


async def test_failing_metadata_callback_fails_the_write(make: Make) -> None:
    def broken() -> bytes:
        raise OSError("metadata source unavailable")

    async with make("doc", metadata_callback=broken) as store:
        with pytest.raises(OSError, match="metadata source unavailable"):
            await store.write(b"\x00\x00")
    async with make("doc", metadata_callback=lambda: 12) as store:
        with pytest.raises(TypeError, match="must return bytes"):
            await store.write(b"\x00\x00")
        with pytest.raises(YDocNotFound):
            await read_all(store)


async def test_use_of_a_store_not_running_raises(make: Make) -> None:
    store = make("doc")
    with pytest.raises(RuntimeError, match="not running"):
        await store.write(b"\x00\x00")
    with pytest.raises(RuntimeError, match="not running"):
        await read_all(store)
    async with store:
        await store.write(b"\x00\x00")
    with pytest.raises(RuntimeError, match="not running"):
        await store.write(b"\x00\x00")


# ---------------------------------------------------------------------- lifecycle (BaseYStore)


async def test_async_with_sets_started_and_stops(make: Make) -> None:
    store = make("doc")
    assert not store.started.is_set()
    async with store as entered:
        assert entered is store
        assert store.started.is_set()
        await store.write(b"\x00\x00")
    assert not store.started.is_set()
    async with store:  # a stopped store can start again
        assert len(await read_all(store)) == 1


async def test_entering_twice_is_refused(make: Make) -> None:
    store = make("doc")
    async with store:
        with pytest.raises(RuntimeError, match="^YStore already running$"):
            async with store:
                pass  # pragma: no cover
        await store.write(b"\x00\x00")  # still usable
    async with anyio.create_task_group() as tg:
        await tg.start(store.start)
        with pytest.raises(RuntimeError, match="^YStore already running$"):
            await store.__aenter__()
        await store.stop()


async def test_exiting_a_store_not_running_is_refused(make: Make) -> None:
    store = make("doc")
    with pytest.raises(RuntimeError, match="^YStore not running$"):
        await store.__aexit__(None, None, None)
    with pytest.raises(RuntimeError, match="^YStore not running$"):
        store.stop()
    async with store:
        pass
    with pytest.raises(RuntimeError, match="^YStore not running$"):
        await store.__aexit__(None, None, None)


async def test_start_in_a_task_group_and_awaited_stop(make: Make) -> None:
    store = make("doc")
    waiter_saw: list[bool] = []

    async def wait_started() -> None:
        await store.started.wait()
        waiter_saw.append(True)

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait_started)
        await anyio.sleep(0)
        await tg.start(store.start)
        assert store.started.is_set()
        await store.write(b"\x00\x00")
        await store.stop()  # returns once closed
        with pytest.raises(RuntimeError, match="not running"):
            await store.write(b"\x00\x00")
    assert waiter_saw == [True]


async def test_second_concurrent_start_is_a_no_op(make: Make) -> None:
    store = make("doc")
    async with anyio.create_task_group() as tg:
        await tg.start(store.start)
        await tg.start(store.start)  # returns at once; does not open a second time
        await store.write(b"\x00\x00")
        assert len(await read_all(store)) == 1
        store.stop()  # one stop ends both; the task group can exit
    assert not store.started.is_set()


async def test_bare_stop_stops(make: Make) -> None:
    store = make("doc")
    async with anyio.create_task_group() as tg:
        await tg.start(store.start)
        await store.write(b"\x00\x00")
        store.stop()  # not awaited (ypy-websocket's synchronous stop)
    with pytest.raises(RuntimeError, match="not running"):
        await store.write(b"\x00\x00")
    async with make("doc") as again:
        assert len(await read_all(again)) == 1


async def test_error_in_async_with_body_propagates_as_itself(make: Make) -> None:
    store = make("doc")
    with pytest.raises(KeyError):
        async with store:
            raise KeyError("from the body")
    async with store:  # and the store is usable again
        await store.write(b"\x00\x00")


# ---------------------------------------------------------------------- metadata


async def test_metadata_without_callback_is_empty(make: Make) -> None:
    async with make("doc") as store:
        assert await store.get_metadata() == b""
        await store.write(b"\x00\x00")
        assert (await read_all(store))[0][1] == b""


async def test_metadata_callbacks_sync_and_async(make: Make) -> None:
    async def async_meta() -> bytes:
        await anyio.sleep(0)
        return b"async-user"

    async with (
        make("sync", metadata_callback=lambda: b"sync-user") as a,
        make("async", metadata_callback=async_meta) as b,
    ):
        assert await a.get_metadata() == b"sync-user"
        assert await b.get_metadata() == b"async-user"
        await a.write(b"\x00\x00")
        await b.write(b"\x00\x00")
        assert (await read_all(a))[0][1] == b"sync-user"
        assert (await read_all(b))[0][1] == b"async-user"


def test_version_is_two(make: Make) -> None:
    assert make("doc").version == 2


# ---------------------------------------------------------------------- the hook contract


class HookedStore(MemoryYStore):
    """Records the backend hooks BaseYStore calls; ``_open`` fails while ``fail_open``."""

    def __init__(self, path: str, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.calls: list[str] = []
        self.fail_open = False

    async def _open(self) -> None:
        self.calls.append("open")
        if self.fail_open:
            raise YStoreError("cannot open", path=self.path, hint="fix it")

    async def _run(self) -> None:
        self.calls.append("run")
        try:
            await anyio.sleep_forever()
        finally:
            self.calls.append("run cancelled")

    async def _close(self) -> None:
        await anyio.sleep(0)  # shielded: a stop does not cut the close short
        self.calls.append("close")


async def test_hooks_run_in_order_once() -> None:
    store = HookedStore("doc")
    async with store:
        assert store.calls == ["open", "run"]
    assert store.calls == ["open", "run", "run cancelled", "close"]


async def test_failing_open_raises_its_own_error_and_allows_a_retry() -> None:
    store = HookedStore("doc")
    store.fail_open = True
    with pytest.raises(YStoreError, match="cannot open"):  # not an ExceptionGroup
        async with store:
            pass  # pragma: no cover
    assert store.calls == ["open", "close"] and not store.started.is_set()
    with pytest.raises(RuntimeError, match="not running"):
        await store.write(b"\x00\x00")
    store.fail_open = False
    async with store:  # not stuck in "already running"
        await store.write(b"\x00\x00")
    async with anyio.create_task_group() as tg:
        store.fail_open = True
        with pytest.raises(YStoreError, match="cannot open"):
            await tg.start(store.start)


async def test_memory_store_has_one_database_per_class() -> None:
    class A(MemoryYStore):
        pass

    class B(MemoryYStore):
        pass

    async with A("doc") as a:
        await a.write(b"\x00\x00")
    async with A("doc") as a_again, B("doc") as b:
        assert len(await read_all(a_again)) == 1
        with pytest.raises(YDocNotFound):
            await read_all(b)


# ---------------------------------------------------------------------- metadata


async def test_write_takes_metadata_else_the_callback_else_nothing(make: Make) -> None:
    updates, _ = typed_updates(3)
    async with make("doc") as store:
        await store.write(updates[0], metadata=b'{"user":"alice"}')
        await store.write(updates[1])
        store.metadata_callback = lambda: b"from the callback"
        await store.write(updates[2])
        with pytest.raises(TypeError):
            await store.write(updates[2], metadata="text")  # type: ignore[arg-type]
        assert [m for _u, m, _t in await read_all(store)] == [
            b'{"user":"alice"}',
            b"",
            b"from the callback",
        ]


async def test_a_subclass_with_the_old_write_signature_gets_the_metadata() -> None:
    """ypy-websocket's ``write(self, data)``: written before ``metadata=`` existed, it still
    stores what callers pass (through the callback, for that one call)."""

    class Legacy(MemoryYStore):
        async def write(self, data: bytes) -> None:  # type: ignore[override]
            await super().write(data)

    store_class = type("LegacyForTest", (Legacy,), {})
    updates, _ = typed_updates(2)
    async with store_class("doc", metadata_callback=lambda: b"mine") as store:
        await store.write(updates[0], metadata=b"passed")
        await store.write(updates[1])
        assert [m for _u, m, _t in await read_all(store)] == [b"passed", b"mine"]
        assert store.metadata_callback() == b"mine"  # restored after the call


# ---------------------------------------------------------------------- the whole store


async def test_a_backend_handle_lists_documents_and_names_none(make: Make) -> None:
    updates, _ = typed_updates(2)
    async with make("a") as a, make("b") as b:
        await a.write(updates[0])
        await b.write(updates[1])
    async with make(None) as backend:
        assert backend.path is None
        assert {"a", "b"} <= {info.path.rsplit("/", 1)[-1] for info in await backend.list_documents()}
        with pytest.raises(RuntimeError, match="backend handle"):
            await backend.write(updates[0])


async def test_info_summarises_a_document_without_reading_it_for_watch(make: Make) -> None:
    updates, _ = typed_updates(3)
    async with make("doc") as store:
        with pytest.raises(YDocNotFound):
            await store.info()
        for update in updates:
            await store.write(update)
        info = await store.info()
        assert info.path.endswith("doc") and info.updates >= 1
        assert info.bytes > 0 and info.last_timestamp is not None


LIVE = [b for b in BACKENDS if b.id in ("sqlite", "postgres")]


@pytest.fixture(params=LIVE, ids=[b.id for b in LIVE])
def make_live(request: Any, tmp_path: Path) -> Make:
    """The backends whose watch() yields other writers' updates."""
    return request.param.factory(tmp_path, request)


async def test_info_does_not_move_where_watch_goes_on(make_live: Make) -> None:
    """The race of the architecture issue: reading the history through a room's own store
    moved its watch() cursor, so an update another writer committed meanwhile never reached
    the room. info() (what a room may ask after loading) must leave the cursor alone."""
    make = make_live
    updates, text = typed_updates(3)
    async with make("doc") as writer, make("doc") as room:
        await writer.write(updates[0])
        doc = pycrdt.Doc()
        await room.apply_updates(doc)  # the room opens: watch() goes on from here
        await writer.write(updates[1])  # another server commits meanwhile
        await room.info()
        await writer.write(updates[2])
        seen: list[bytes] = []
        with anyio.fail_after(10):
            async for update in room.watch():
                seen.append(update)
                for one in seen:
                    doc.apply_update(one)
                if str(doc.get("source", type=pycrdt.Text)) == text:
                    break


def test_default_settings_put_the_store_in_the_server_root(tmp_path: Path) -> None:
    from jupyter_ystore import SQLiteYStore

    root = str(tmp_path)
    assert SQLiteYStore.default_settings(root) == {"db_path": f"{root}/.jupyter_ystore.db"}
    assert FileYStore.default_settings(root) == {"root_dir": f"{root}/.jupyter_ystore"}
    assert TempFileYStore.default_settings(root) == {} and MemoryYStore.default_settings(root) == {}
    store = SQLiteYStore(None, **SQLiteYStore.default_settings(root))
    assert store.location() == f"c.SQLiteYStore.db_path = '{root}/.jupyter_ystore.db'"
    assert store.missing_location() == f"{root}/.jupyter_ystore.db"
