"""SQLiteYStore: shared connection, group commit, snapshots and compaction, errors, admin API.

Documents are checked for equality by content (the bench stream's roots ``cells`` and
``meta``) and state vector, read with pycrdt and with y_py.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable

import anyio
import pycrdt
import pytest
import y_py
from traitlets import TraitError
from traitlets.config import Config

from jupyter_ystore import (
    SQLiteYStore,
    YDocNotFound,
    YStoreCorruptError,
    YStoreError,
    YStoreLockedError,
    YStorePermissionError,
)
from jupyter_ystore.core import ydoc as _ydoc
from jupyter_ystore.stores.sqlite import compact as _sqlite_compact
from jupyter_ystore.stores.sqlite import db as _sqlite_db
from jupyter_ystore.stores.sqlite.errors import map_error

pytestmark = pytest.mark.anyio

LIBS = ["pycrdt", "y_py"]


# ---------------------------------------------------------------------- helpers


def new_doc(lib: str) -> Any:
    return pycrdt.Doc() if lib == "pycrdt" else y_py.YDoc()


def content(doc: Any) -> dict:
    """The bench stream's roots as plain Python, from either library."""
    if isinstance(doc, pycrdt.Doc):
        return {
            "cells": doc.get("cells", type=pycrdt.Array).to_py(),
            "meta": doc.get("meta", type=pycrdt.Map).to_py(),
        }
    return {
        "cells": json.loads(doc.get_array("cells").to_json()),
        "meta": json.loads(doc.get_map("meta").to_json()),
    }


def reference(updates: list[bytes]) -> pycrdt.Doc:
    doc = pycrdt.Doc()
    for update in updates:
        doc.apply_update(update)
    return doc


async def restored(store: SQLiteYStore, lib: str) -> Any:
    doc = new_doc(lib)
    await store.apply_updates(doc)
    return doc


def assert_same(doc: Any, ref: pycrdt.Doc) -> None:
    assert content(doc) == content(ref)
    assert pycrdt.Doc().get_state() != ref.get_state()  # the reference is not empty
    # state vectors compare as decoded maps (encodings may order clients differently)
    got = _state_vector(_ydoc.encode_state_vector(doc))
    assert got == _state_vector(ref.get_state())


def _state_vector(data: bytes) -> dict[int, int]:
    from jupyter_ystore.core.codec import read_var_uint

    count, pos = read_var_uint(data)
    vector = {}
    for _ in range(count):
        client, pos = read_var_uint(data, pos)
        clock, pos = read_var_uint(data, pos)
        vector[client] = clock
    return vector


def rows(db: Path, path: str | None = None) -> int:
    """Committed rows, read by a connection of our own: ``yupdates`` plus the rows a running
    store has not folded into it yet (``ystore_pending``)."""
    conn = sqlite3.connect(db)
    try:
        total = 0
        for table in ("yupdates", "ystore_pending"):
            if path is None:
                total += conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            else:
                total += conn.execute(
                    f"SELECT count(*) FROM {table} WHERE path = ?", (path,)
                ).fetchone()[0]
        return total
    finally:
        conn.close()


def store(db: Path, path: str = "doc", **traits: Any) -> SQLiteYStore:
    traits.setdefault("compact_after_updates", 0)
    traits.setdefault("compact_after_bytes", 0)
    return SQLiteYStore(path, db_path=str(db), **traits)


def text_update(doc: pycrdt.Doc, text: str) -> bytes:
    """Append ``text`` to the doc's ``source`` and return that transaction's update."""
    before = doc.get_state()
    doc.get("source", type=pycrdt.Text).insert(len(str(doc.get("source", type=pycrdt.Text))), text)
    return doc.get_update(before)


@pytest.fixture
def updates(bench_updates: list[bytes]) -> list[bytes]:
    return bench_updates[:2000]


# ---------------------------------------------------------------------- read / write


@pytest.mark.parametrize("writer", LIBS)
@pytest.mark.parametrize("reader", LIBS)
async def test_write_with_one_library_read_with_the_other(
    tmp_path: Path, updates: list[bytes], writer: str, reader: str
) -> None:
    ref = reference(updates)
    source = new_doc(writer)
    for update in updates:
        _ydoc.apply_update(source, update)
    async with store(tmp_path / "y.db") as st:
        await st.encode_state_as_update(source)
        await st.write(updates[-1])  # an update already in the state: harmless
    async with store(tmp_path / "y.db") as st:
        assert_same(await restored(st, reader), ref)


async def test_write_returns_after_commit_visible_to_another_connection(tmp_path: Path) -> None:
    db = tmp_path / "y.db"
    doc = pycrdt.Doc()
    async with store(db) as st:
        for i in range(5):
            await st.write(text_update(doc, str(i)))
            assert rows(db, "doc") == i + 1  # committed: a fresh connection sees it


async def test_read_yields_oldest_first_with_metadata(tmp_path: Path) -> None:
    doc = pycrdt.Doc()
    sent = [text_update(doc, c) for c in "abcdef"]
    counter = iter(range(100))
    async with SQLiteYStore(
        "doc", db_path=str(tmp_path / "y.db"), metadata_callback=lambda: f"m{next(counter)}".encode()
    ) as st:
        for update in sent:
            await st.write(update)
        records = [record async for record in st.read()]
    assert [r[0] for r in records] == sent
    assert [r[1] for r in records] == [f"m{i}".encode() for i in range(6)]
    stamps = [r[2] for r in records]
    assert stamps == sorted(stamps)


async def test_nothing_stored_is_ydocnotfound_and_bad_input_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "y.db"
    async with store(db) as st:
        with pytest.raises(YDocNotFound):
            await st.apply_updates(pycrdt.Doc())
        with pytest.raises(YDocNotFound):
            [r async for r in st.read()]
        with pytest.raises(ValueError, match="Yjs"):
            await st.write(b"\xff\xff\xff garbage")
        with pytest.raises(TypeError):
            await st.write("text")  # type: ignore[arg-type]
        with pytest.raises(YDocNotFound):
            await st.compact()
    assert rows(db) == 0


# ---------------------------------------------------------------------- one connection


async def test_one_connection_per_file_shared_and_released(tmp_path: Path) -> None:
    before = _sqlite_db.open_connections()
    db = tmp_path / "y.db"
    a, b, c = store(db, "a"), store(db / ".." / "y.db", "b"), store(tmp_path / "other.db", "c")
    async with a, b, c:
        assert a._db is b._db  # same real path, one connection
        assert a._db is not c._db
        assert _sqlite_db.open_connections() == before + 2
        doc = pycrdt.Doc()
        await a.write(text_update(doc, "x"))
        await b.write(text_update(doc, "y"))
    assert _sqlite_db.open_connections() == before
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_connection_shared_by_two_event_loops(tmp_path: Path) -> None:
    """A store running in another thread's loop and one in this loop share the file."""
    db = tmp_path / "y.db"
    ready, done = threading.Event(), threading.Event()
    errors: list[BaseException] = []
    theirs: dict[str, Any] = {}

    async def other_loop() -> None:
        async with store(db, "left") as st:
            theirs["db"] = st._db
            doc = pycrdt.Doc()
            for i in range(50):
                await st.write(text_update(doc, str(i)))
            ready.set()
            await anyio.to_thread.run_sync(done.wait)
            for i in range(50):
                await st.write(text_update(doc, str(i)))

    def run_other() -> None:
        try:
            anyio.run(other_loop)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
            ready.set()

    thread = threading.Thread(target=run_other)
    thread.start()

    async def this_loop() -> None:
        await anyio.to_thread.run_sync(ready.wait)
        async with store(db, "right") as st:
            assert st._db is theirs["db"]  # one connection, used from two loops
            doc = pycrdt.Doc()
            for i in range(50):
                await st.write(text_update(doc, str(i)))
        done.set()

    anyio.run(this_loop)
    thread.join(30)
    assert not errors
    assert (rows(db, "left"), rows(db, "right")) == (100, 50)


async def test_group_commit_shares_commits(tmp_path: Path) -> None:
    db = tmp_path / "y.db"
    commits = []

    async with store(db) as st:
        # count COMMIT statements run by the database thread
        await st._db.call(
            lambda conn, schema: conn.set_trace_callback(
                lambda sql: commits.append(1) if sql == "COMMIT" else None
            ),
            "tracing",
        )
        docs = [pycrdt.Doc() for _ in range(20)]
        sent = [[text_update(doc, str(i)) for i in range(20)] for doc in docs]

        async def writer(batch: list[bytes]) -> None:
            for update in batch:
                await st.write(update)

        async with anyio.create_task_group() as tg:
            for batch in sent:
                tg.start_soon(writer, batch)
        await st._db.call(lambda conn, schema: conn.set_trace_callback(None), "tracing")
    assert rows(db, "doc") == 400
    assert 0 < len(commits) < 400  # concurrent writers shared commits


# ---------------------------------------------------------------------- compaction


@pytest.mark.parametrize("lib", LIBS)
async def test_compaction_by_count_restores_the_same_document(
    tmp_path: Path, updates: list[bytes], lib: str
) -> None:
    db = tmp_path / "y.db"
    async with store(db, compact_after_updates=300) as st:
        for update in updates:
            await st.write(update)
        # Let the background compactions finish (seconds under load). Asked of the store, not
        # of the file: writes still on their way to a commit would make it look done early.
        for _ in range(3000):
            info = (await st.list_documents())[0]
            if info.snapshots and info.updates < 300:
                break
            await anyio.sleep(0.01)
        assert info.snapshots == 1 and info.updates < 300
        assert_same(await restored(st, lib), reference(updates))
        records = [r async for r in st.read()]
    assert len(records) == info.updates
    # ypy-websocket 0.12.4 reads a document exactly so: every row of the path, applied in
    # index order, with y_py. Our layout must restore the same document for it.
    legacy = y_py.YDoc()
    conn = sqlite3.connect(db)
    for (update,) in conn.execute("SELECT yupdate FROM yupdates WHERE path = ?", ("doc",)):
        y_py.apply_update(legacy, update)
    conn.close()
    assert_same(legacy, reference(updates))


@pytest.mark.parametrize("lib", LIBS)
async def test_compaction_by_bytes_restores_the_same_document(
    tmp_path: Path, updates: list[bytes], lib: str
) -> None:
    db = tmp_path / "y.db"
    async with store(db, compact_after_bytes=4096) as st:
        for update in updates:
            await st.write(update)
        for _ in range(3000):  # (seconds under load)
            info = (await st.list_documents())[0]
            if info.snapshots and info.bytes < 3 * 4096 + 64 * 1024:
                break
            await anyio.sleep(0.01)
        assert info.snapshots == 1
        assert info.updates < len(updates) // 2
        assert_same(await restored(st, lib), reference(updates))


@pytest.mark.parametrize("lib", LIBS)
async def test_document_ttl_squashes_before_the_next_write(
    tmp_path: Path, updates: list[bytes], lib: str
) -> None:
    db = tmp_path / "y.db"
    async with store(db, document_ttl=0.05) as st:
        for update in updates[:-1]:
            await st.write(update)
    conn = sqlite3.connect(db)  # age the history: the last update was long ago
    conn.execute("UPDATE yupdates SET timestamp = timestamp - 3600")
    conn.commit()
    conn.close()
    async with store(db, document_ttl=60) as st:
        await st.write(updates[-1])
        records = [r async for r in st.read()]
        assert len(records) == 2  # the squashed history, then the new update
        assert records[1][0] == updates[-1]
        assert (await st.list_documents())[0].snapshots == 1
        doc = await restored(st, lib)
    assert_same(doc, reference(updates))
    assert content(doc)["cells"]  # not the empty document pycrdt-store 0.1.5 produces


@pytest.mark.parametrize("lib", LIBS)
async def test_explicit_compact_restores_and_the_file_shrinks(
    tmp_path: Path, bench_updates: list[bytes], lib: str
) -> None:
    db = tmp_path / "y.db"
    async with store(db) as st:
        for update in bench_updates:
            await st.write(update)
    before = db.stat().st_size
    # (written within seconds, every update would be a history point: retention off here)
    async with store(db, history_retention=0) as st:
        await st.compact()
        assert [r async for r in st.read()].__len__() == 1
        assert_same(await restored(st, lib), reference(bench_updates))
    after = db.stat().st_size
    assert not Path(str(db) + "-wal").exists()
    assert after < before / 2, (before, after)


async def test_compaction_keeps_updates_written_meanwhile(
    tmp_path: Path, updates: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes racing with compaction (ours and another connection's) are never lost."""
    db = tmp_path / "y.db"
    extra = pycrdt.Doc()
    late = text_update(extra, "written by another process during the squash")
    squash = _sqlite_compact.squash
    calls = []

    def squash_with_a_concurrent_write(*args: Any) -> bytes:
        if not calls:
            conn = sqlite3.connect(db)
            conn.execute(
                "INSERT INTO yupdates VALUES (?, ?, ?, ?)", ("doc", late, b"", 0.0)
            )  # an older timestamp than everything: order must come from insertion
            conn.commit()
            conn.close()
        calls.append(1)
        return squash(*args)

    async with store(db) as st:
        async def write_all() -> None:
            for update in updates:
                await st.write(update)

        async def compact_often() -> None:
            for _ in range(20):
                await st.compact()
                await anyio.sleep(0)

        await st.write(updates[0])
        monkeypatch.setattr(_sqlite_compact, "squash", squash_with_a_concurrent_write)
        await st.compact()
        monkeypatch.setattr(_sqlite_compact, "squash", squash)
        records = [r async for r in st.read()]
        assert len(records) == 2  # the snapshot first, then the row written meanwhile
        assert records[-1][0] == late  # though its timestamp is older than the snapshot's
        async with anyio.create_task_group() as tg:
            tg.start_soon(write_all)
            tg.start_soon(compact_often)
        assert_same(await restored(st, "pycrdt"), reference([*updates, late]))


async def test_compaction_retries_when_another_process_rewrote_the_rows(
    tmp_path: Path, updates: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "y.db"
    squash = _sqlite_compact.squash
    calls = []

    def squash_racing_a_legacy_ttl_squash(*args: Any) -> bytes:
        if not calls:  # ypy-websocket's ttl squash: delete everything, insert the state
            conn = sqlite3.connect(db)
            conn.execute("DELETE FROM yupdates WHERE path = 'doc'")
            conn.execute(
                "INSERT INTO yupdates VALUES ('doc', ?, ?, 1.0)", (_ydoc.squash(updates), b"")
            )
            conn.commit()
            conn.close()
        calls.append(1)
        return squash(*args)

    async with store(db) as st:
        for update in updates:
            await st.write(update)
        monkeypatch.setattr(_sqlite_compact, "squash", squash_racing_a_legacy_ttl_squash)
        await st.compact()
        assert len(calls) == 2  # the first result was thrown away, not committed
        assert_same(await restored(st, "y_py"), reference(updates))


# ---------------------------------------------------------------------- errors


async def test_corrupt_database_is_set_aside_not_read_as_an_empty_document(tmp_path: Path) -> None:
    """(More in test_damaged_store.py.)"""
    db = tmp_path / "y.db"
    db.write_bytes(b"this is not an SQLite database" * 100)
    original = db.read_bytes()
    async with store(db) as st:
        with pytest.raises(YDocNotFound):
            await st.apply_updates(pycrdt.Doc())
    [copy] = tmp_path.glob("y.db.damaged-*")
    assert copy.read_bytes() == original  # moved aside, never deleted


async def test_corrupt_row_is_an_error_not_an_empty_document(tmp_path: Path) -> None:
    db = tmp_path / "y.db"
    doc = pycrdt.Doc()
    async with store(db) as st:
        await st.write(text_update(doc, "a"))
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO yupdates VALUES ('doc', ?, X'', 1.0)", (b"\xff\x01garbage",))
    conn.commit()
    conn.close()
    async with store(db) as st:
        with pytest.raises(YStoreCorruptError, match="doc"):
            await st.apply_updates(pycrdt.Doc())
        with pytest.raises(YStoreCorruptError):
            await st.compact()
    assert rows(db) == 2  # nothing was dropped


async def test_locked_database_waits_then_raises_and_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "y.db"
    doc = pycrdt.Doc()
    first, second, third = (text_update(doc, c) for c in "abc")
    async with store(db, busy_timeout=0.2) as st:
        await st.write(first)
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        with pytest.raises(YStoreLockedError) as info:
            await st.write(second)
        assert str(db) in str(info.value) and "busy_timeout" in str(info.value)

        async def release_soon() -> None:
            await anyio.sleep(0.05)
            other.execute("COMMIT")

        async with anyio.create_task_group() as tg:  # a shorter hold is simply waited for
            tg.start_soon(release_soon)
            await st.write(third)
        other.close()
        records = [r[0] async for r in st.read()]
    assert records == [first, third]


def test_sqlite_errors_map_to_the_ystore_family() -> None:
    cases = [
        (sqlite3.OperationalError("attempt to write a readonly database"), YStorePermissionError),
        (sqlite3.OperationalError("unable to open database file"), YStorePermissionError),
        (PermissionError(13, "Permission denied"), YStorePermissionError),
        (sqlite3.OperationalError("database is locked"), YStoreLockedError),
        (sqlite3.DatabaseError("database disk image is malformed"), YStoreCorruptError),
        (sqlite3.DatabaseError("file is not a database"), YStoreCorruptError),
        (sqlite3.OperationalError("disk I/O error"), YStoreError),
    ]
    for exc, kind in cases:
        mapped = map_error(exc, "/srv/y.db", "writing", 5)
        assert type(mapped) is kind, exc
        assert "/srv/y.db" in str(mapped)


async def test_unwritable_database_raises_permission_error_on_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sqlite_read_only: Callable[[Path], None]
) -> None:
    """A database opened read-only (as a file without write permission would be)."""
    db = tmp_path / "y.db"
    doc = pycrdt.Doc()
    async with store(db) as st:
        await st.write(text_update(doc, "a"))
    sqlite_read_only(db)
    os.chmod(db, 0o444)  # root ignores it: the connection is also opened read-only
    try:
        async with store(db) as st:
            assert len([r async for r in st.read()]) == 1
            with pytest.raises(YStorePermissionError, match="permission|access|read"):
                await st.write(text_update(doc, "b"))
    finally:
        monkeypatch.undo()
        os.chmod(db, 0o644)
    assert rows(db) == 1


# ---------------------------------------------------------------------- configuration


async def test_traits_from_config_and_validation(tmp_path: Path) -> None:
    c = Config()
    c.SQLiteYStore.db_path = str(tmp_path / "sub" / "configured.db")
    c.SQLiteYStore.compact_after_updates = 7
    c.SQLiteYStore.synchronous = "full"
    st = SQLiteYStore("doc", config=c)
    assert st.compact_after_updates == 7
    async with st:
        await st.write(text_update(pycrdt.Doc(), "x"))
        level = await st._db.call(
            lambda conn, schema: conn.execute("PRAGMA synchronous").fetchone()[0], "reading"
        )
    assert level == 2  # FULL
    assert rows(tmp_path / "sub" / "configured.db") == 1
    for trait in ("compact_after_updates", "compact_after_bytes", "busy_timeout"):
        with pytest.raises(TraitError, match=trait):
            SQLiteYStore("doc", **{trait: -1})
    with pytest.raises(TraitError, match="db_path"):
        SQLiteYStore("doc", db_path=str(tmp_path))  # a folder
    with pytest.raises(TraitError, match="synchronous"):
        SQLiteYStore("doc", synchronous="OFF")


async def test_seed_subclass_with_a_bad_class_attribute_is_refused_at_start(
    tmp_path: Path,
) -> None:
    (tmp_path / "FILE").write_text("x")

    class Bad(SQLiteYStore):
        db_path = str(tmp_path / "FILE" / "y.db")

    with pytest.raises(TraitError, match="db_path"):
        async with Bad("doc"):
            pass


# ---------------------------------------------------------------------- admin API


async def test_list_compact_delete(tmp_path: Path) -> None:
    db = tmp_path / "y.db"
    docs = {name: pycrdt.Doc() for name in ("a", "b")}
    sent: dict[str, list[bytes]] = {"a": [], "b": []}
    for name, doc in docs.items():
        async with store(db, name) as st:
            for i in range(10 if name == "a" else 3):
                sent[name].append(text_update(doc, f"{name}{i}"))
                await st.write(sent[name][-1])
    async with store(db, "a") as st:
        listing = {info.path: info for info in await st.list_documents()}
        assert set(listing) == {"a", "b"}
        assert (listing["a"].updates, listing["b"].updates) == (10, 3)
        assert listing["a"].bytes == sum(map(len, sent["a"]))
        assert listing["a"].first_timestamp <= listing["a"].last_timestamp
        assert listing["a"].snapshots == 0
        await st.compact()
        listing = {info.path: info for info in await st.list_documents()}
        assert (listing["a"].updates, listing["a"].snapshots) == (1, 1)
        doc = await restored(st, "pycrdt")
        assert str(doc.get("source", type=pycrdt.Text)) == "".join(f"a{i}" for i in range(10))
        await st.delete()
        with pytest.raises(YDocNotFound):
            await st.apply_updates(pycrdt.Doc())
        assert [info.path for info in await st.list_documents()] == ["b"]
    assert rows(db, "b") == 3


def test_waiter_outside_asyncio_uses_a_thread_event() -> None:
    """Where no asyncio loop runs (e.g. trio), results come through a threading.Event."""
    from jupyter_ystore.stores.sqlite.bridge import Waiter, deliver

    made: dict[str, Waiter] = {}
    thread = threading.Thread(target=lambda: made.setdefault("waiter", Waiter()))
    thread.start()
    thread.join()
    ok, failing = made["waiter"], Waiter()
    assert ok._future is None and failing._future is None
    deliver([(ok, 42, None), (failing, None, YStoreLockedError("locked", path="x.db"))])

    async def outcome() -> Any:
        with pytest.raises(YStoreLockedError):
            await failing._wait_event()
        return await ok._wait_event()

    assert anyio.run(outcome) == 42


async def test_apply_updates_refuses_what_is_not_a_document(tmp_path: Path) -> None:
    async with store(tmp_path / "y.db") as st:
        await st.write(text_update(pycrdt.Doc(), "a"))
        with pytest.raises(TypeError):
            await st.apply_updates(object())


async def test_an_unexpected_error_in_the_database_thread_fails_only_its_jobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "y.db"
    doc = pycrdt.Doc()
    async with store(db) as st:
        def broken(self: Any, batch: list[Any]) -> list[Any]:
            raise KeyError("a bug")

        monkeypatch.setattr(_sqlite_db.SharedDatabase, "_commit_writes", broken)
        with pytest.raises(YStoreError, match="internal error"):
            await st.write(text_update(doc, "lost"))
        monkeypatch.undo()
        await st.write(text_update(doc, "kept"))  # the thread still serves
        assert len([r async for r in st.read()]) == 1


async def test_the_wal_stays_bounded_under_continuous_writes(
    tmp_path: Path, bench_updates: list[bytes]
) -> None:
    """Checkpoints must complete while writes keep coming, or the WAL grows without end
    (about 8 KiB a commit: 5,000 writes would leave ~40 MiB; a checkpoint every
    WAL_AUTOCHECKPOINT pages keeps it near 4 MiB)."""
    from jupyter_ystore.stores.sqlite.schema import WAL_AUTOCHECKPOINT

    db = tmp_path / "y.db"
    async with store(db) as st:
        for update in bench_updates[:5000]:
            await st.write(update)
        wal = Path(str(db) + "-wal").stat().st_size
    assert wal < (WAL_AUTOCHECKPOINT + 200) * 4120, wal  # 4 KiB pages + frame headers
