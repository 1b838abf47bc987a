"""The checkpoint thread: commits reach the database file without the database thread copying
the WAL back itself; it ends with the store; a failing checkpoint is logged and loses
nothing; a file without a WAL gets no such thread."""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pycrdt
import pytest

from jupyter_ystore import SQLiteYStore
from jupyter_ystore.stores.sqlite import checkpointer as _checkpointer
from jupyter_ystore.stores.sqlite.schema import WAL_AUTOCHECKPOINT

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def fast_checkpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_checkpointer, "INTERVAL", 0.05)


def store(db: Path, path: str = "doc", **traits: Any) -> SQLiteYStore:
    traits.setdefault("compact_after_updates", 0)
    traits.setdefault("compact_after_bytes", 0)
    return SQLiteYStore(path, db_path=str(db), **traits)


def typed(count: int) -> list[bytes]:
    doc = pycrdt.Doc()
    text = doc.get("t", type=pycrdt.Text)
    updates = []
    for i in range(count):
        before = doc.get_state()
        text += f"{i} "
        updates.append(doc.get_update(before))
    return updates


def rows_in_the_file_itself(db: Path) -> int | None:
    """Rows of both tables as the database file holds them, the WAL ignored (``immutable``);
    None while a checkpoint is writing the file under us."""
    try:
        conn = sqlite3.connect(f"file:{db}?immutable=1", uri=True)
        try:
            (count,) = conn.execute(
                "SELECT (SELECT count(*) FROM yupdates) + (SELECT count(*) FROM ystore_pending)"
            ).fetchone()
            return int(count)
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return None


#: A file name no other test uses: the thread's name ends with it, so a store another test
#: left open cannot be mistaken for ours.
DB_NAME = "checkpointed.db"


def checkpoint_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"ystore-checkpoint:{DB_NAME}"]


async def test_commits_reach_the_database_file_while_the_store_runs(tmp_path: Path) -> None:
    db = tmp_path / DB_NAME
    updates = typed(30)
    async with store(db) as st:
        for update in updates:
            await st.write(update)
        wal = Path(f"{db}-wal")
        # Far below SQLite's own bound: only the checkpoint thread copies these pages back.
        assert wal.stat().st_size < WAL_AUTOCHECKPOINT * 4096 // 4
        with anyio.fail_after(10):
            while rows_in_the_file_itself(db) != len(updates):
                await anyio.sleep(0.05)
        assert [t.is_alive() for t in checkpoint_threads()] == [True]
        doc = pycrdt.Doc()
        await st.apply_updates(doc)
        assert str(doc.get("t", type=pycrdt.Text)) == "".join(f"{i} " for i in range(30))
    assert checkpoint_threads() == []
    assert not Path(f"{db}-wal").exists()  # the last connection closed removed it, as before


async def test_a_failing_checkpoint_is_logged_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    class Failing:
        def __init__(self, conn: sqlite3.Connection):
            self.conn = conn
            self.calls = 0

        def execute(self, sql: str) -> Any:
            self.calls += 1
            raise sqlite3.OperationalError("disk I/O error")

        def close(self) -> None:
            self.conn.close()

    made: list[Failing] = []

    def connect(*args: Any, **kwargs: Any) -> Failing:
        made.append(Failing(sqlite3.connect(*args, **kwargs)))
        return made[-1]

    # The module's name only: the database thread's own connection stays a real one.
    monkeypatch.setattr(_checkpointer, "sqlite3", SimpleNamespace(connect=connect, Error=sqlite3.Error))
    db = tmp_path / DB_NAME
    updates = typed(10)
    caplog.set_level(logging.WARNING, logger="jupyter_ystore.sqlite")
    async with store(db) as st:
        for update in updates:
            await st.write(update)
            await anyio.sleep(0.06)
        with anyio.fail_after(10):
            while not made or made[0].calls < 2:
                await anyio.sleep(0.05)
        doc = pycrdt.Doc()
        await st.apply_updates(doc)
        assert str(doc.get("t", type=pycrdt.Text)) == "".join(f"{i} " for i in range(10))
    warnings = [r.getMessage() for r in caplog.records if "copying the WAL back" in r.getMessage()]
    assert len(warnings) == 1 and "disk I/O error" in warnings[0], warnings
    async with store(db) as st:  # everything reached the file when the store closed
        assert len([r async for r in st.read()]) == len(updates)


async def test_no_checkpoint_thread_without_a_wal(tmp_path: Path) -> None:
    db = tmp_path / DB_NAME
    async with store(db, journal_mode="DELETE") as st:
        for update in typed(5):
            await st.write(update)
        await anyio.sleep(0.2)
        assert checkpoint_threads() == []
        assert not Path(f"{db}-wal").exists()
