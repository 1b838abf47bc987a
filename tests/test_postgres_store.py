"""PostgresYStore against a real server: semantics shared with SQLiteYStore, compaction,
errors, and live updates between store instances on separate connections."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pycrdt
import pytest
from postgres_helpers import pg_config, pg_dsn, pg_schema, run_sql  # noqa: F401 (fixtures)

from jupyter_ystore.stores import squash_helper
from jupyter_ystore.errors import (
    YDocNotFound,
    YStoreConnectionError,
    YStoreVersionError,
)
from jupyter_ystore.stores.postgres import compact as _pg_compact
from jupyter_ystore.stores.postgres import pool as _pg_pool
from jupyter_ystore.stores.postgres.store import PostgresYStore

pytestmark = pytest.mark.anyio


def text_updates(n: int, name: str = "t", client_id: int | None = None) -> tuple[list[bytes], str]:
    """``n`` updates of a pycrdt doc typing into Text ``name``, and the final text."""
    doc = pycrdt.Doc(client_id=client_id) if client_id else pycrdt.Doc()
    text = doc.get(name, type=pycrdt.Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    for i in range(n):
        if i % 7 == 6:
            del text[len(text) - 1 :]  # deletions too, so squashing has something to drop
        else:
            text += f"{i % 10}"
    return updates, str(text)


async def restored_text(store: PostgresYStore, name: str = "t") -> str:
    doc = pycrdt.Doc()
    await store.apply_updates(doc)
    return str(doc.get(name, type=pycrdt.Text))


async def rows(store: PostgresYStore) -> list[Any]:
    return await store._fetch(
        f"SELECT id, snapshot, origin, xmin::text AS xid FROM {store._table.qualified} "
        "WHERE path = $1 ORDER BY id",
        store.path,
    )


async def wait_until(predicate: Any, timeout: float = 30) -> None:
    """Wait for background work (automatic compaction); the bound only stops a hang."""
    with anyio.fail_after(timeout):
        while not await predicate():
            await anyio.sleep(0.02)


# ---------------------------------------------------------------------- basic semantics


async def test_write_pycrdt_read_ypy(pg_config):
    y_py = pytest.importorskip("y_py")
    updates, expected = text_updates(40)
    async with PostgresYStore("notebook.ipynb", **pg_config) as store:
        for update in updates:
            await store.write(update)
        ydoc = y_py.YDoc()
        await store.apply_updates(ydoc)
        assert str(ydoc.get_text("t")) == expected
        await store.compact()
        ydoc = y_py.YDoc()
        await store.apply_updates(ydoc)
        assert str(ydoc.get_text("t")) == expected


async def test_records_keep_metadata_and_order(pg_config):
    counter = iter(range(1000))
    updates, _ = text_updates(5)
    store = PostgresYStore("doc", metadata_callback=lambda: f"m{next(counter)}".encode(), **pg_config)
    async with store:
        for update in updates:
            await store.write(update)
        records = [record async for record in store.read()]
    assert [r[0] for r in records] == updates
    assert [r[1] for r in records] == [f"m{i}".encode() for i in range(5)]
    timestamps = [r[2] for r in records]
    assert timestamps == sorted(timestamps)


async def test_nothing_stored_is_ydocnotfound(pg_config):
    async with PostgresYStore("missing", **pg_config) as store:
        with pytest.raises(YDocNotFound):
            [record async for record in store.read()]
        with pytest.raises(YDocNotFound):
            await store.apply_updates(pycrdt.Doc())


async def test_durable_across_pools(pg_config, pg_dsn):
    updates, expected = text_updates(10)
    async with PostgresYStore("doc", **pg_config) as store:
        for update in updates:
            await store.write(update)
    # A new store on another DSN spelling gets a new pool: nothing was left in memory.
    other = dict(pg_config, dsn=pg_dsn + "?application_name=second")
    async with PostgresYStore("doc", **other) as store:
        assert await restored_text(store) == expected


async def test_stores_of_a_process_share_one_pool(pg_config):
    async with PostgresYStore("a", **pg_config) as a, PostgresYStore("b", **pg_config) as b:
        assert a._shared is b._shared
        assert _pg_pool._POOLS.users(a._shared) == 2
    assert a._shared is None and b._shared is None


async def test_concurrent_writes_share_transactions(pg_config):
    updates, expected = text_updates(200)
    async with PostgresYStore("doc", compact_after_updates=0, **pg_config) as store:
        async with anyio.create_task_group() as tg:
            for update in updates:
                tg.start_soon(store.write, update)
        stored = await rows(store)
        assert len(stored) == 200
        # Rows written by one transaction share its xmin: group commit used few of them.
        assert len({row["xid"] for row in stored}) < 50
        assert await restored_text(store) == expected


async def test_write_refuses_non_bytes(pg_config):
    async with PostgresYStore("doc", **pg_config) as store:
        with pytest.raises(TypeError):
            await store.write("text")  # type: ignore[arg-type]


# ---------------------------------------------------------------------- compaction paths


async def test_explicit_compact_keeps_content(pg_config):
    updates, expected = text_updates(300)
    async with PostgresYStore("doc", compact_after_updates=0, compact_after_bytes=0, **pg_config) as store:
        for update in updates[:200]:
            await store.write(update)
        await store.compact()
        assert [r["snapshot"] for r in await rows(store)] == [True]
        for update in updates[200:]:
            await store.write(update)
        assert len(await store._load()) == 101  # snapshot + tail
        assert await restored_text(store) == expected
        await store.compact()
        assert len(await rows(store)) == 1
        assert await restored_text(store) == expected
        info = (await store.list_documents())[0]
        assert (info.updates, info.snapshots) == (1, 1)


@pytest.mark.parametrize("trigger", ["updates", "bytes"])
async def test_automatic_compaction_keeps_content(pg_config, trigger):
    updates, expected = text_updates(250)
    limits = (
        {"compact_after_updates": 100, "compact_after_bytes": 0}
        if trigger == "updates"
        else {"compact_after_updates": 0, "compact_after_bytes": 2000}
    )
    async with PostgresYStore("doc", **limits, **pg_config) as store:
        for update in updates:
            await store.write(update)

        async def snapshotted() -> bool:
            stored = await rows(store)
            return bool(stored) and stored[0]["snapshot"] and len(stored) < 250

        await wait_until(snapshotted)
        assert await restored_text(store) == expected


class FakeClock:
    """A store's clock: idleness without sleeping (no timing flakes)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def time(self) -> float:
        return self.now


async def test_document_ttl_squashes_an_idle_document(pg_config):
    clock = FakeClock()
    updates, expected = text_updates(30)
    async with PostgresYStore(
        "doc", document_ttl=60, compact_after_updates=0, clock=clock.time, **pg_config
    ) as store:
        for update in updates[:-1]:
            clock.now += 59  # a busy document: never 60 s without an update
            await store.write(update)
        assert not any(r["snapshot"] for r in await rows(store))
        clock.now += 61
        await store.write(updates[-1])
        assert [r["snapshot"] for r in await rows(store)] == [True, False]
        assert await restored_text(store) == expected
    # A store that never wrote asks the database for the last update's time.
    async with PostgresYStore("doc", document_ttl=60, clock=clock.time, **pg_config) as store:
        clock.now += 30
        extra, _ = text_updates(1, name="u")
        await store.write(extra[0])
        assert [r["snapshot"] for r in await rows(store)] == [True, False, False]
        clock.now += 61
        await store.write(extra[0])
        assert [r["snapshot"] for r in await rows(store)] == [True, False]


async def test_updates_during_compaction_are_kept(pg_config, pg_dsn, monkeypatch):
    """Writes committed while the snapshot is computed stay after it, none is dropped."""
    updates, expected = text_updates(120)
    squashing = threading.Event()
    release = threading.Event()
    real_squash = _pg_compact.squash

    def slow_squash(batch: list[bytes], *args: Any) -> tuple[bytes, bool]:
        squashing.set()
        assert release.wait(30)
        return real_squash(batch, *args)

    # (the compaction's own name for it, run in this process: a helper process would not see it)
    monkeypatch.setattr(_pg_compact, "squash", slow_squash)
    monkeypatch.setattr(squash_helper, "_offload", False)
    other = dict(pg_config, dsn=pg_dsn + "?application_name=writer")
    async with PostgresYStore("doc", compact_after_updates=0, **pg_config) as compactor, \
            PostgresYStore("doc", compact_after_updates=0, **other) as writer:
        for update in updates[:80]:
            await writer.write(update)
        async with anyio.create_task_group() as tg:
            tg.start_soon(compactor.compact)
            assert await anyio.to_thread.run_sync(squashing.wait, 30)
            for update in updates[80:]:
                await writer.write(update)  # not blocked by the compaction, still squashing
            release.set()
        stored = await rows(compactor)
        assert stored[0]["snapshot"] and len(stored) == 41
        assert await restored_text(compactor) == expected


async def test_one_compactor_at_a_time(pg_config, pg_dsn):
    updates, _ = text_updates(20)
    async with PostgresYStore("doc", compact_after_updates=0, **pg_config) as store:
        for update in updates:
            await store.write(update)
        names = store._table
        holder = await store._pool().acquire()
        try:
            async with holder.transaction():
                await holder.execute("SELECT pg_advisory_xact_lock($1)", names.compact_key("doc"))
                result = await _pg_compact.compact_document(store._pool(), names, "doc")
                assert result.busy and not result.done
        finally:
            await store._pool().release(holder)
        assert (await _pg_compact.compact_document(store._pool(), names, "doc")).done


# ---------------------------------------------------------------------- admin API


async def test_list_and_delete(pg_config):
    one, _ = text_updates(3)
    two, expected_two = text_updates(4)
    async with PostgresYStore("one", **pg_config) as a, PostgresYStore("two", **pg_config) as b:
        for update in one:
            await a.write(update)
        for update in two:
            await b.write(update)
        infos = await a.list_documents()
        assert [(i.path, i.updates, i.snapshots) for i in infos] == [("one", 3, 0), ("two", 4, 0)]
        assert infos[0].bytes == sum(map(len, one))
        assert infos[0].first_timestamp <= infos[0].last_timestamp
        await a.delete()
        with pytest.raises(YDocNotFound):
            await a.apply_updates(pycrdt.Doc())
        assert await restored_text(b) == expected_two
        assert [i.path for i in await b.list_documents()] == ["two"]


# ---------------------------------------------------------------------- errors


async def test_unreachable_server_is_one_clear_error():
    store = PostgresYStore("doc", dsn="postgresql://postgres@127.0.0.1:1/nosuchdb", connect_timeout=5)
    with pytest.raises(YStoreConnectionError) as info:
        async with store:
            pass
    message = str(info.value)
    assert "127.0.0.1:1" in message and "'nosuchdb'" in message
    assert "refused" in message.lower()  # the driver's reason
    assert "JUPYTER_YSTORE_DSN" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


async def test_password_never_in_messages():
    dsn = "postgresql://someone:s3cret-pw@127.0.0.1:1/db"
    with pytest.raises(YStoreConnectionError) as info:
        async with PostgresYStore("doc", dsn=dsn):
            pass
    assert "s3cret-pw" not in str(info.value) and "'someone'" in str(info.value)


async def test_missing_database_names_it(pg_dsn):
    dsn = pg_dsn.rsplit("/", 1)[0] + "/no_such_database_ystore"
    with pytest.raises(YStoreConnectionError, match="no_such_database_ystore"):
        async with PostgresYStore("doc", dsn=dsn):
            pass


async def test_dsn_from_environment(monkeypatch, pg_config):
    monkeypatch.setenv("JUPYTER_YSTORE_DSN", pg_config["dsn"])
    store = PostgresYStore("doc", schema=pg_config["schema"])
    assert store.dsn == pg_config["dsn"]
    async with store:
        await store.write(text_updates(1)[0][0])
    monkeypatch.delenv("JUPYTER_YSTORE_DSN")
    with pytest.raises(YStoreConnectionError, match="JUPYTER_YSTORE_DSN"):
        async with PostgresYStore("doc"):
            pass


async def test_unknown_layout_version_is_refused(pg_config, pg_schema):
    updates, expected = text_updates(5)
    async with PostgresYStore("doc", **pg_config) as store:
        for update in updates:
            await store.write(update)
    run_sql(f'UPDATE "{pg_schema}"."yupdates_version" SET version = 99')
    with pytest.raises(YStoreVersionError, match="version 99"):
        async with PostgresYStore("doc", **pg_config):
            pass
    # Nothing was changed: with the version restored, the document is all there.
    run_sql(f'UPDATE "{pg_schema}"."yupdates_version" SET version = 1')
    async with PostgresYStore("doc", **pg_config) as store:
        assert await restored_text(store) == expected


async def test_foreign_table_is_refused(pg_config, pg_schema):
    run_sql(f'CREATE SCHEMA "{pg_schema}"', f'CREATE TABLE "{pg_schema}".yupdates (x int)')
    with pytest.raises(YStoreVersionError, match="not created by jupyter_ystore"):
        async with PostgresYStore("doc", **pg_config):
            pass


def test_bad_names_are_refused():
    with pytest.raises(Exception, match="letters, digits and underscores"):
        PostgresYStore("doc", dsn="postgresql://x/y", schema='bad"; DROP')
    with pytest.raises(ValueError, match="NUL"):
        PostgresYStore("a\0b", dsn="postgresql://x/y")


async def test_first_use_by_many_at_once(pg_config, pg_dsn):
    """Several pools creating the table at the same moment: one creates, all work."""
    stores = [
        PostgresYStore("doc", **dict(pg_config, dsn=f"{pg_dsn}?application_name=s{i}"))
        for i in range(4)
    ]
    update = text_updates(1)[0][0]
    async with anyio.create_task_group() as tg:
        for store in stores:

            async def use(store: PostgresYStore = store) -> None:
                async with store:
                    await store.write(update)

            tg.start_soon(use)
    async with PostgresYStore("doc", **pg_config) as store:
        assert len(await rows(store)) == 4


# ---------------------------------------------------------------------- live updates


async def collect(store: PostgresYStore, count: int, into: list[bytes]) -> None:
    async for update in store.watch():
        into.append(update)
        if len(into) == count:
            return


async def test_watch_sees_other_writers_not_itself(pg_config, pg_dsn):
    updates, expected = text_updates(30)
    other = dict(pg_config, dsn=pg_dsn + "?application_name=watcher")
    async with PostgresYStore("doc", **pg_config) as writer, \
            PostgresYStore("doc", poll_interval=60, **other) as watcher:
        assert writer._shared is not watcher._shared  # separate connections
        await writer.write(updates[0])
        await watcher.apply_updates(pycrdt.Doc())  # watch starts after what was loaded
        seen: list[bytes] = []
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(collect, watcher, 19, seen)
                await watcher.write(updates[1])  # its own write: not handed back
                for update in updates[2:21]:
                    await writer.write(update)
                # poll_interval=60: within fail_after(20), only NOTIFY can deliver these.
        assert seen == updates[2:21]


async def test_watch_delivers_in_commit_order(pg_config, pg_dsn):
    updates, expected = text_updates(60)
    other = dict(pg_config, dsn=pg_dsn + "?application_name=watcher")
    async with PostgresYStore("doc", **pg_config) as writer, \
            PostgresYStore("doc", poll_interval=60, **other) as watcher:
        with pytest.raises(YDocNotFound):
            await watcher.apply_updates(pycrdt.Doc())  # an empty document: watch from the start
        seen: list[bytes] = []
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(collect, watcher, 60, seen)
                async with anyio.create_task_group() as writers:
                    for update in updates:
                        writers.start_soon(writer.write, update)
        committed = [bytes(r["yupdate"]) for r in await writer._fetch(
            f"SELECT yupdate FROM {writer._table.qualified} ORDER BY id")]
        assert seen == committed
        doc = pycrdt.Doc()
        for update in seen:
            doc.apply_update(update)
        assert str(doc.get("t", type=pycrdt.Text)) == expected


async def test_watch_polls_when_a_notification_is_lost(pg_config, pg_dsn):
    updates, _ = text_updates(2)
    other = dict(pg_config, dsn=pg_dsn + "?application_name=watcher")
    async with PostgresYStore("doc", **pg_config) as writer, \
            PostgresYStore("doc", poll_interval=0.2, **other) as watcher:
        await writer.write(updates[0])
        await watcher.apply_updates(pycrdt.Doc())
        seen: list[bytes] = []
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(collect, watcher, 1, seen)
                await anyio.sleep(0.1)
                # Inserted behind the store's back: no NOTIFY, only the poll can find it.
                await writer._pool().execute(
                    f"INSERT INTO {writer._table.qualified} (path, yupdate, metadata, timestamp) "
                    "VALUES ('doc', $1, '', 0)",
                    updates[1],
                )
        assert seen == [updates[1]]


async def test_watch_behind_a_compaction_gets_the_snapshot(pg_config, pg_dsn):
    updates, expected = text_updates(40)
    other = dict(pg_config, dsn=pg_dsn + "?application_name=watcher")
    async with PostgresYStore("doc", compact_after_updates=0, **pg_config) as writer, \
            PostgresYStore("doc", poll_interval=0.2, **other) as watcher:
        await writer.write(updates[0])
        doc = pycrdt.Doc()
        await watcher.apply_updates(doc)
        for update in updates[1:30]:
            await writer.write(update)
        await writer.compact()  # before the watcher looked: rows 2..30 are gone
        for update in updates[30:]:
            await writer.write(update)
        seen: list[bytes] = []
        with anyio.fail_after(20):
            await collect(watcher, 11, seen)
        for update in seen:
            doc.apply_update(update)
        assert str(doc.get("t", type=pycrdt.Text)) == expected


async def test_watch_long_path(pg_config, pg_dsn):
    """A path too long for a NOTIFY payload still wakes its watchers."""
    path = "p" * 9000
    updates, _ = text_updates(3)
    other = dict(pg_config, dsn=pg_dsn + "?application_name=watcher")
    async with PostgresYStore(path, **pg_config) as writer, \
            PostgresYStore(path, poll_interval=60, **other) as watcher:
        with pytest.raises(YDocNotFound):
            await watcher.apply_updates(pycrdt.Doc())
        seen: list[bytes] = []
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(collect, watcher, 3, seen)
                for update in updates:
                    await writer.write(update)
        assert seen == updates


async def test_watch_survives_dropped_connections(pg_config, pg_dsn):
    """The server kills the watcher's connections (restart, failover): it carries on."""
    updates, expected = text_updates(3)
    app = "ystore_victim_" + pg_config["schema"][-12:]
    other = dict(pg_config, dsn=f"{pg_dsn}?application_name={app}")
    async with PostgresYStore("doc", **pg_config) as writer, \
            PostgresYStore("doc", poll_interval=0.2, **other) as watcher:
        with pytest.raises(YDocNotFound):
            await watcher.apply_updates(pycrdt.Doc())
        send, receive = anyio.create_memory_object_stream[bytes](10)

        async def forward() -> None:
            async for update in watcher.watch():
                await send.send(update)

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(forward)
                await writer.write(updates[0])
                assert await receive.receive() == updates[0]
                killed = await writer._fetch(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = $1",
                    app,
                )
                assert killed  # the pool's and the listener's connections
                for update in updates[1:]:
                    await writer.write(update)
                assert [await receive.receive() for _ in updates[1:]] == updates[1:]
                tg.cancel_scope.cancel()


async def test_cancelled_queued_write_is_dropped_others_commit(pg_config, monkeypatch):
    """A writer cancelled while its update waits for the running commit: that update is not
    stored, the in-flight batch and the writers after it are, and nobody hangs."""
    from jupyter_ystore.stores.postgres import commit as _pg_commit

    updates, _ = text_updates(4)
    entered, release = anyio.Event(), anyio.Event()
    real_commit = _pg_commit.GroupCommitter._commit

    async def slow_commit(self: Any, batch: list[Any]) -> None:
        if not entered.is_set():
            entered.set()
            await release.wait()
        await real_commit(self, batch)

    monkeypatch.setattr(_pg_commit.GroupCommitter, "_commit", slow_commit)
    async with PostgresYStore("doc", compact_after_updates=0, **pg_config) as store:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(store.write, updates[0])  # leads; its commit is held
                await entered.wait()
                try:
                    tg.start_soon(store.write, updates[2])
                    doomed = anyio.CancelScope()

                    async def cancelled_writer() -> None:
                        with doomed:
                            await store.write(updates[1])

                    tg.start_soon(cancelled_writer)
                    await anyio.sleep(0.05)  # both queued behind the held commit
                    doomed.cancel()
                    await anyio.sleep(0.05)
                finally:
                    release.set()
            await store.write(updates[3])
        stored = [record[0] async for record in store.read()]
    assert stored == [updates[0], updates[2], updates[3]]


@pytest.mark.parametrize("where", ["first", "tail", "one of the tail"])
async def test_invalid_stored_update_is_corruption_not_empty(pg_config, where):
    from jupyter_ystore.errors import YStoreCorruptError

    updates, _ = text_updates(4)
    garbage = b"\xff\xfe not yjs"
    sequence = {
        "first": [garbage] + updates,
        "tail": updates + [garbage],
        "one of the tail": updates[:2] + [garbage] + updates[2:],
    }[where]
    async with PostgresYStore("doc", compact_after_updates=0, **pg_config) as store:
        store._checked_update = bytes  # type: ignore[method-assign]  (an older writer's garbage)
        for update in sequence:
            await store.write(update)
        doc = pycrdt.Doc()
        with pytest.raises(YStoreCorruptError, match="not a valid Yjs update"):
            await store.apply_updates(doc)
        assert doc.get_state() == pycrdt.Doc().get_state()  # nothing half-applied
        with pytest.raises(YStoreCorruptError, match="not a valid Yjs update"):
            await store.compact()
        assert len([r async for r in store.read()]) == 5  # and nothing deleted


async def test_automatic_compaction_of_a_corrupt_document_keeps_the_store_running(pg_config, caplog):
    updates, _ = text_updates(6)
    async with PostgresYStore("doc", compact_after_updates=3, **pg_config) as store:
        store._checked_update = bytes  # type: ignore[method-assign]  (an older writer's garbage)
        for update in [b"\xff\xfe not yjs"] + updates:
            await store.write(update)  # compaction attempts fail in the background

        async def warned() -> bool:
            return "automatic compaction of 'doc' failed" in caplog.text

        await wait_until(warned)
        await store.write(updates[0])  # still running and writing
        assert len([r async for r in store.read()]) == 8


async def test_compaction_keeps_an_update_waiting_for_a_lost_one(pg_config):
    """An update whose predecessor was never stored (a failed or cancelled write) cannot be
    integrated yet; compaction must keep it, so that it applies once the predecessor comes
    (e.g. from a client resyncing), instead of squashing it away."""
    updates, expected = text_updates(6)
    lost = updates[2]
    async with PostgresYStore("doc", compact_after_updates=0, **pg_config) as store:
        for update in updates:
            if update is not lost:
                await store.write(update)
        await store.compact()
        assert len([r async for r in store.read()]) == 1
        await store.write(lost)  # the predecessor arrives at last
        assert await restored_text(store) == expected
        await store.compact()
        assert await restored_text(store) == expected


async def test_a_servers_compactions_squash_in_the_helper_process(pg_config, monkeypatch):
    """With a server's offloading on (``squash_helper.offload_compactions``), a compaction's
    squash and history plan go to the helper process, and the document comes back the same."""
    from jupyter_ystore.stores import squash_helper

    helper = squash_helper._Helper()
    monkeypatch.setattr(squash_helper, "_HELPER", helper)
    asked: list[str] = []
    real_call = helper.call

    def recording_call(func: Any, args: Any, **kwargs: Any) -> Any:
        answer = real_call(func, args, **kwargs)
        asked.append(f"{getattr(func, '__name__', func)}:{'there' if answer is not None else 'here'}")
        return answer

    helper.call = recording_call
    squash_helper.offload_compactions(True)
    try:
        updates, expected = text_updates(300)
        async with PostgresYStore("doc", compact_after_updates=0, compact_after_bytes=0, **pg_config) as store:
            for update in updates[:200]:
                await store.write(update)
            await store.compact()
            for update in updates[200:]:
                await store.write(update)
            await store.compact()
            assert await restored_text(store) == expected
    finally:
        squash_helper.offload_compactions(False)
        helper.shutdown()
    assert asked.count("squash:there") == 2, asked
    assert all(entry.endswith(":there") for entry in asked), asked
