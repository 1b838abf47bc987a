"""SQLite databases written by ypy-websocket 0.12.4 and pycrdt-store 0.1.5 open in place.

Each test works on a copy (``legacy_copy``); the expected content comes from
``tests/data/legacy/expected-*.json``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pycrdt
import pytest
import y_py

from jupyter_ystore import SQLiteYStore, YStoreVersionError

pytestmark = pytest.mark.anyio

DATABASES = ["ypy_sqlite_v2.db", "pycrdt_sqlite_checkpoints.db"]


def content(doc: Any) -> dict:
    if isinstance(doc, pycrdt.Doc):
        return {
            "source": str(doc.get("source", type=pycrdt.Text)),
            "meta": doc.get("meta", type=pycrdt.Map).to_py(),
            "cells": doc.get("cells", type=pycrdt.Array).to_py(),
        }
    import json

    return {
        "source": str(doc.get_text("source")),
        "meta": json.loads(doc.get_map("meta").to_json()),
        "cells": json.loads(doc.get_array("cells").to_json()),
    }


def new_doc(lib: str) -> Any:
    return pycrdt.Doc() if lib == "pycrdt" else y_py.YDoc()


def open_store(db: Path, path: str) -> SQLiteYStore:
    return SQLiteYStore(path, db_path=str(db), compact_after_updates=0, compact_after_bytes=0)


def bulk_ypy_database(db: Path, updates: list[bytes]) -> Path:
    """Exactly ypy-websocket 0.12.4's schema and rows, filled in bulk (no auto_vacuum)."""
    conn = sqlite3.connect(db)
    conn.execute(
        "CREATE TABLE yupdates (path TEXT NOT NULL, yupdate BLOB, metadata BLOB, "
        "timestamp REAL NOT NULL)"
    )
    conn.execute("CREATE INDEX idx_yupdates_path_timestamp ON yupdates (path, timestamp)")
    conn.execute("PRAGMA user_version = 2")
    conn.executemany(
        "INSERT INTO yupdates VALUES ('doc', ?, ?, ?)",
        ((u, b"user", float(i)) for i, u in enumerate(updates)),
    )
    conn.commit()
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    conn.close()
    return db


def folder_listing(db: Path) -> list[str]:
    return sorted(p.name for p in db.parent.iterdir())


@pytest.mark.parametrize("name", DATABASES)
@pytest.mark.parametrize("lib", ["pycrdt", "y_py"])
async def test_every_document_found_with_its_content(
    legacy_copy: Any, legacy_expected: dict, name: str, lib: str
) -> None:
    db = legacy_copy(name)
    expected = legacy_expected[name]["docs"]
    async with open_store(db, "unused") as st:
        listing = {info.path: info for info in await st.list_documents()}
    assert set(listing) == set(expected)
    for key, want in expected.items():
        checkpoints = 1 if name.startswith("pycrdt") and key.endswith("aaaa.y") else 0
        # a pycrdt-store checkpoint is a stored record of its own
        assert listing[key].updates == want["updates"] + checkpoints
        assert listing[key].snapshots == checkpoints
        async with open_store(db, key) as st:
            doc = new_doc(lib)
            await st.apply_updates(doc)
            assert content(doc) == want["content"]
            assert len([r async for r in st.read()]) == want["updates"] + checkpoints
    assert folder_listing(db) == [name]  # nothing renamed aside, no stray files


@pytest.mark.parametrize("name", DATABASES)
async def test_keep_writing_and_compacting_in_place(
    legacy_copy: Any, legacy_expected: dict, name: str
) -> None:
    db = legacy_copy(name)
    expected = legacy_expected[name]["docs"]
    for key, want in expected.items():
        async with open_store(db, key) as st:
            doc = pycrdt.Doc()
            await st.apply_updates(doc)
            source = doc.get("source", type=pycrdt.Text)
            before = doc.get_state()
            source += " more"
            await st.write(doc.get_update(before))
        async with open_store(db, key) as st:
            reread = new_doc("y_py")
            await st.apply_updates(reread)
            assert content(reread)["source"] == want["content"]["source"] + " more"
            await st.compact()
            assert len([r async for r in st.read()]) == 1
            compacted = new_doc("pycrdt")
            await st.apply_updates(compacted)
            assert content(compacted) == {**want["content"], "source": want["content"]["source"] + " more"}
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2  # still readable by them
    if name.startswith("pycrdt"):  # folded into our snapshot
        assert conn.execute("SELECT count(*) FROM ycheckpoints").fetchone()[0] == 0
    conn.close()
    assert folder_listing(db) == [name]


@pytest.mark.parametrize("name", DATABASES)
async def test_unknown_version_is_refused_and_the_file_untouched(
    legacy_copy: Any, name: str
) -> None:
    db = legacy_copy(name)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 7")
    conn.commit()
    conn.close()
    original = db.read_bytes()
    with pytest.raises(YStoreVersionError) as info:
        async with open_store(db, "notebook:doc-a"):
            pass
    assert "7" in str(info.value) and str(db) in str(info.value)
    assert db.read_bytes() == original
    assert folder_listing(db) == [name]


async def test_a_database_of_something_else_is_refused_untouched(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.commit()
    conn.close()
    original = db.read_bytes()
    with pytest.raises(YStoreVersionError, match="yupdates"):
        async with open_store(db, "doc"):
            pass
    assert db.read_bytes() == original


async def test_pycrdt_store_checkpoint_alone_restores_content(
    legacy_copy: Any, legacy_expected: dict
) -> None:
    """pycrdt-store's ttl squash may leave an empty document in yupdates while the
    checkpoint still holds the content: the checkpoint is applied, so nothing is lost."""
    db = legacy_copy("pycrdt_sqlite_checkpoints.db")
    key = ".notebook:11111111-aaaa.y"
    conn = sqlite3.connect(db)
    (checkpoint,) = conn.execute(
        "SELECT checkpoint FROM ycheckpoints WHERE path = ?", (key,)
    ).fetchone()
    conn.execute("DELETE FROM yupdates WHERE path = ?", (key,))
    conn.execute("INSERT INTO yupdates VALUES (?, ?, NULL, 1.0)", (key, pycrdt.Doc().get_update()))
    conn.commit()
    conn.close()
    expected = pycrdt.Doc()
    expected.apply_update(checkpoint)
    async with open_store(db, key) as st:
        doc = pycrdt.Doc()
        await st.apply_updates(doc)
    assert content(doc) == content(expected)
    assert content(doc)["source"]


async def test_loading_a_long_legacy_history_compacts_it(
    legacy_copy: Any, legacy_expected: dict
) -> None:
    """Load cost is bounded after the first open: a long history gets its snapshot."""
    import anyio

    db = legacy_copy("ypy_sqlite_v2.db")
    key = "notebook:doc-a"
    async with SQLiteYStore(key, db_path=str(db), compact_after_updates=10) as st:
        await st.apply_updates(pycrdt.Doc())
        for _ in range(500):
            if len([r async for r in st.read()]) == 1:
                break
            await anyio.sleep(0.01)
        assert len([r async for r in st.read()]) == 1
        doc = y_py.YDoc()
        await st.apply_updates(doc)
    assert content(doc) == legacy_expected["ypy_sqlite_v2.db"]["docs"][key]["content"]


async def test_a_large_legacy_database_shrinks_after_compaction(
    tmp_path: Path, bench_updates: list[bytes]
) -> None:
    """ypy-websocket databases have no auto_vacuum: the first big compaction converts the
    file in place (one VACUUM), and it shrinks; ypy-websocket can still read it."""
    db = bulk_ypy_database(tmp_path / "ypy.db", bench_updates)
    before = db.stat().st_size
    async with open_store(db, "doc") as st:
        await st.compact()
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL from now on
    legacy_reader = y_py.YDoc()  # what ypy-websocket does: apply every row of the path
    for (update,) in conn.execute("SELECT yupdate FROM yupdates WHERE path = 'doc'"):
        y_py.apply_update(legacy_reader, update)
    conn.close()
    assert db.stat().st_size < before / 2, (before, db.stat().st_size)
    expected = pycrdt.Doc()
    for update in bench_updates:
        expected.apply_update(update)
    import json

    assert json.loads(legacy_reader.get_array("cells").to_json()) == expected.get(
        "cells", type=pycrdt.Array
    ).to_py()


@pytest.mark.parametrize("lib", ["pycrdt", "y_py"])
async def test_a_long_legacy_history_loads_whole(
    tmp_path: Path, bench_updates: list[bytes], lib: str
) -> None:
    """5,000 rows and no snapshot: loading squashes them in a worker thread."""
    import json

    db = bulk_ypy_database(tmp_path / "ypy.db", bench_updates)
    expected = pycrdt.Doc()
    for update in bench_updates:
        expected.apply_update(update)
    async with open_store(db, "doc") as st:
        doc = new_doc(lib)
        await st.apply_updates(doc)
    if lib == "pycrdt":
        cells, meta = doc.get("cells", type=pycrdt.Array).to_py(), doc.get("meta", type=pycrdt.Map).to_py()
    else:
        cells = json.loads(doc.get_array("cells").to_json())
        meta = json.loads(doc.get_map("meta").to_json())
    assert cells == expected.get("cells", type=pycrdt.Array).to_py() and cells
    assert meta == expected.get("meta", type=pycrdt.Map).to_py()
