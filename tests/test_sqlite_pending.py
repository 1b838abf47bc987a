"""SQLiteYStore's pending table: writes commit into ``ystore_pending`` and are folded into
``yupdates`` in bulk. Nothing may be lost or hidden on the way: a crash before the fold, a
legacy writer taking a pending row's rowid, a read-only file, other libraries' readers."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable

import anyio
import pycrdt
import pytest

from jupyter_ystore import SQLiteYStore
from jupyter_ystore.core import ydoc as _ydoc
from jupyter_ystore.stores.sqlite import pending as _sqlite_pending

pytestmark = pytest.mark.anyio


def store(db: Path, path: str = "doc", **traits: Any) -> SQLiteYStore:
    traits.setdefault("compact_after_updates", 0)
    traits.setdefault("compact_after_bytes", 0)
    return SQLiteYStore(path, db_path=str(db), **traits)


def table_rows(db: Path, table: str) -> list[tuple[int, str, bytes]]:
    with sqlite3.connect(db) as conn:
        return [
            (rowid, path, bytes(update))
            for rowid, path, update in conn.execute(
                f"SELECT rowid, path, yupdate FROM {table} ORDER BY rowid"
            )
        ]


def typed(count: int, prefix: str = "") -> tuple[list[bytes], list[str]]:
    """``count`` updates, each appending one item to the array ``items``."""
    doc = pycrdt.Doc()
    items = doc.get("items", type=pycrdt.Array)
    updates = []
    for i in range(count):
        before = doc.get_state()
        items.append(f"{prefix}{i}")
        updates.append(doc.get_update(before))
    return updates, items.to_py()


async def loaded_items(st: SQLiteYStore) -> list[str]:
    doc = pycrdt.Doc()
    await st.apply_updates(doc)
    return doc.get("items", type=pycrdt.Array).to_py()


@pytest.fixture
def no_idle_fold(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows stay pending while the store runs (unless a read folds them)."""
    monkeypatch.setattr(_sqlite_pending, "FOLD_IDLE", 3600.0)


async def test_writes_commit_pending_and_a_pause_folds_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_sqlite_pending, "FOLD_IDLE", 0.1)
    db = tmp_path / "y.db"
    updates, _ = typed(10)
    async with store(db) as st:
        for update in updates:
            await st.write(update)
        pending = table_rows(db, "ystore_pending")
        assert [u for _, _, u in pending] == updates  # committed, in order
        with anyio.fail_after(10):
            while table_rows(db, "ystore_pending"):
                await anyio.sleep(0.02)
        folded = table_rows(db, "yupdates")
        # The same rows, with the rowids they were committed with.
        assert [(r, u) for r, _, u in folded] == [(r, u) for r, _, u in pending]


async def test_many_rows_fold_without_a_pause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_idle_fold: None
) -> None:
    monkeypatch.setattr(_sqlite_pending, "FOLD_ROWS", 5)
    db = tmp_path / "y.db"
    updates, _ = typed(12)
    async with store(db) as st:
        for update in updates:
            await st.write(update)
        assert len(table_rows(db, "yupdates")) >= 10
        assert len(table_rows(db, "ystore_pending")) <= 2
    assert [u for _, _, u in table_rows(db, "yupdates")] == updates
    assert table_rows(db, "ystore_pending") == []  # closing folds the rest


async def test_reads_see_pending_rows_and_fold_them(tmp_path: Path, no_idle_fold: None) -> None:
    db = tmp_path / "y.db"
    updates, expected = typed(7)
    async with store(db) as writer, store(db) as reader:
        for update in updates:
            await writer.write(update)
        assert len(table_rows(db, "ystore_pending")) == 7
        assert await loaded_items(reader) == expected
        assert table_rows(db, "ystore_pending") == []
        assert [d.path for d in await reader.list_documents()] == ["doc"]
        assert (await reader.list_documents())[0].updates == 7


CRASHING_WRITER = textwrap.dedent(
    """
    import os, sys
    import anyio, pycrdt
    from jupyter_ystore import SQLiteYStore

    async def main():
        store = SQLiteYStore("doc", db_path=sys.argv[1], compact_after_updates=0)
        async with store:
            doc = pycrdt.Doc()
            items = doc.get("items", type=pycrdt.Array)
            for i in range(int(sys.argv[2])):
                before = doc.get_state()
                items.append(f"crash-{i}")
                await store.write(doc.get_update(before))
            os._exit(0)  # a crash: no fold, no close

    anyio.run(main)
    """
)


def crash_after_writes(db: Path, count: int) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    subprocess.run(
        [sys.executable, "-c", CRASHING_WRITER, str(db), str(count)],
        check=True,
        timeout=120,
        env=env,
    )


async def test_a_crash_before_the_fold_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "y.db"
    await anyio.to_thread.run_sync(crash_after_writes, db, 40)
    assert len(table_rows(db, "ystore_pending")) == 40  # the crash left them unfolded
    async with store(db) as st:
        assert await loaded_items(st) == [f"crash-{i}" for i in range(40)]
    # Our read folded them: a library that reads yupdates alone now sees them all.
    assert len(table_rows(db, "yupdates")) == 40
    assert table_rows(db, "ystore_pending") == []


async def test_a_read_only_file_with_pending_rows_still_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sqlite_read_only: Callable[[Path], None]
) -> None:
    db = tmp_path / "y.db"
    await anyio.to_thread.run_sync(crash_after_writes, db, 5)
    sqlite_read_only(db)
    try:
        async with store(db) as st:
            assert await loaded_items(st) == [f"crash-{i}" for i in range(5)]
    finally:
        monkeypatch.undo()
    assert len(table_rows(db, "ystore_pending")) == 5  # untouched


async def test_a_legacy_writer_taking_a_pending_rowid_is_renumbered_not_lost(
    tmp_path: Path, no_idle_fold: None
) -> None:
    db = tmp_path / "y.db"
    ours, expected_ours = typed(3, "ours-")
    theirs, expected_theirs = typed(1, "theirs-")
    async with store(db) as st:
        for update in ours:
            await st.write(update)
        assert [r for r, _, _ in table_rows(db, "ystore_pending")] == [1, 2, 3]
        # ypy-websocket writing the same file: max(rowid) + 1 of yupdates alone, i.e. 1.
        with sqlite3.connect(db) as conn:
            conn.execute(
                "INSERT INTO yupdates (path, yupdate, metadata, timestamp) VALUES (?, ?, ?, ?)",
                ("doc", theirs[0], b"", 1.0),
            )
        items = await loaded_items(st)
    assert sorted(items) == sorted(expected_ours + expected_theirs)
    folded = table_rows(db, "yupdates")
    assert len(folded) == 4 and len({r for r, _, _ in folded}) == 4
    # Ours keep their order after the legacy row.
    assert [u for _, _, u in folded] == theirs + ours


async def test_compaction_covers_pending_rows(tmp_path: Path, no_idle_fold: None) -> None:
    db = tmp_path / "y.db"
    updates, expected = typed(30)
    async with store(db) as st:
        for update in updates[:20]:
            await st.write(update)
        await st.compact()
        for update in updates[20:]:
            await st.write(update)
        assert await loaded_items(st) == expected
    rows = table_rows(db, "yupdates")
    assert len(rows) == 11  # one snapshot and the 10 rows after it
    state = _ydoc.squash([u for _, _, u in rows])
    doc = pycrdt.Doc()
    doc.apply_update(state)
    assert doc.get("items", type=pycrdt.Array).to_py() == expected


async def test_a_read_does_not_wait_for_another_process_holding_the_write_lock(
    tmp_path: Path, no_idle_fold: None
) -> None:
    """WAL readers never wait for the writer: folding first must not change that."""
    db = tmp_path / "y.db"
    updates, expected = typed(3)
    async with store(db, busy_timeout=30) as st:
        for update in updates:
            await st.write(update)
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another process's long write transaction
        try:
            with anyio.fail_after(10):  # far below busy_timeout: the fold did not wait for it
                assert await loaded_items(st) == expected
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert len(table_rows(db, "ystore_pending")) == 3  # not folded, still there
    assert len(table_rows(db, "yupdates")) == 3  # closing folded them


async def test_a_bug_in_the_fold_neither_stops_the_thread_nor_hangs_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Folds run between jobs, outside any job's error handling: a bug there must be logged
    and must not kill the database thread (every later writer would wait for ever)."""
    from jupyter_ystore.stores.sqlite import db as _sqlite_db

    monkeypatch.setattr(_sqlite_pending, "FOLD_IDLE", 0.01)
    calls = []

    def broken(self: Any) -> None:
        calls.append(1)
        raise RuntimeError("a bug in the fold")

    monkeypatch.setattr(_sqlite_db.SharedDatabase, "_fold_quietly", broken)
    db = tmp_path / "y.db"
    updates, expected = typed(6)
    with anyio.fail_after(30):
        async with store(db) as st:
            for update in updates[:3]:
                await st.write(update)
            while not calls:
                await anyio.sleep(0.01)
            for update in updates[3:]:  # the thread still serves
                await st.write(update)
            assert await loaded_items(st) == expected
    assert "a bug in the fold" in caplog.text
    async with store(db) as st:  # nothing lost: the rows were still pending
        assert await loaded_items(st) == expected
