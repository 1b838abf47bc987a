"""What loading checks: a snapshot our compaction wrote is checked for its structs only (it
was encoded from a document; squash keeps in it only structs that wait for missing updates),
and the updates after it in full, so a history with a hole, before or after a compaction, is
reported (``load_problem``), never loaded silently short."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pycrdt
import pytest

from jupyter_ystore import BaseYStore
from test_compaction_at_close import make, records, typed  # noqa: F401  (fixture)

pytestmark = pytest.mark.anyio


def two_authors() -> tuple[list[bytes], list[bytes]]:
    """Ten keystrokes of one client, then two of another made on top of them."""
    first = typed(10)
    doc = pycrdt.Doc()
    for update in first:
        doc.apply_update(update)
    text = doc.get("source", type=pycrdt.Text)
    second: list[bytes] = []
    doc.observe(lambda event: second.append(event.update))
    text += "X"
    text += "Y"
    return first, second


async def test_a_hole_after_a_snapshot_is_reported(make: Callable[[str], BaseYStore]) -> None:  # noqa: F811
    first, second = two_authors()
    async with make("doc") as store:
        for update in first:
            await store.write(update)
        await store.compact()
        await store.write(second[1])  # its predecessor second[0] was never stored
    async with make("doc") as store:
        doc = pycrdt.Doc()
        await store.apply_updates(doc)
        assert store.load_problem is not None
        assert "wait for earlier ones" in store.load_problem


async def test_a_snapshot_and_a_whole_tail_load_cleanly(make: Callable[[str], BaseYStore]) -> None:  # noqa: F811
    first, second = two_authors()
    async with make("doc") as store:
        for update in first:
            await store.write(update)
        await store.compact()
        for update in second:
            await store.write(update)
    for _ in range(2):  # with a tail, then as the lone snapshot left by compacting at close
        async with make("doc") as store:
            doc = pycrdt.Doc()
            await store.apply_updates(doc)
            assert store.load_problem is None
            assert str(doc.get("source", type=pycrdt.Text)) == "abcdefghijXY"
            await store.compact()


async def test_a_long_tail_loads_in_groups_and_a_bad_last_update_touches_nothing(
    tmp_path: Path,
) -> None:
    import sqlite3

    from jupyter_ystore import SQLiteYStore, YStoreCorruptError
    from jupyter_ystore.core.ydoc import _APPLY_GROUP

    db = str(tmp_path / "y.db")
    count = 2 * _APPLY_GROUP + 1  # the last update is a group of its own

    def store() -> SQLiteYStore:
        return SQLiteYStore("doc", db_path=db, compact_after_updates=0, compact_after_bytes=0)

    updates = typed(count)
    async with store() as s:
        for update in updates:
            await s.write(update)
    async with store() as s:
        doc = pycrdt.Doc()
        await s.apply_updates(doc)
        assert s.load_problem is None
        assert str(doc.get("source", type=pycrdt.Text)) == ("abcdefghij" * 60)[:count]

    conn = sqlite3.connect(db)  # the last row damaged behind the store's back
    conn.execute(
        "UPDATE yupdates SET yupdate = ? WHERE rowid = (SELECT max(rowid) FROM yupdates)",
        (b"\x01\xff\xff\xff",),
    )
    conn.commit()
    conn.close()
    async with store() as s:
        doc = pycrdt.Doc()
        with pytest.raises(YStoreCorruptError):
            await s.apply_updates(doc)
        assert doc.get_state() == b"\x00"  # nothing of the groups before it was applied


async def test_a_hole_squashed_into_the_snapshot_is_reported(
    make: Callable[[str], BaseYStore],  # noqa: F811
) -> None:
    first, second = two_authors()
    async with make("doc") as store:
        for update in first:
            await store.write(update)
        await store.write(second[1])  # its predecessor second[0] was never stored
        await store.compact()  # squash keeps second[1] in the snapshot, still waiting
        assert await records(store) == 1
    async with make("doc") as store:
        doc = pycrdt.Doc()
        await store.apply_updates(doc)
        assert store.load_problem is not None
        assert "wait for earlier ones" in store.load_problem


async def test_filestore_knows_its_snapshot_from_the_sidecar_head(tmp_path: Path) -> None:
    from jupyter_ystore import FileYStore

    def store() -> FileYStore:
        return FileYStore("doc", root_dir=str(tmp_path))

    first, _second = two_authors()
    async with store() as s:
        for update in first:
            await s.write(update)
        await s.compact()
    log = tmp_path / "doc"
    sidecar = tmp_path / "doc.history"
    assert sidecar.exists()
    for state in ("kept", "damaged", "gone"):
        if state == "damaged":
            sidecar.write_bytes(b"YSTORE-HISTORY:1\n\xff\xff")
        elif state == "gone":
            sidecar.unlink()
        async with store() as s:
            doc = pycrdt.Doc()
            await s.apply_updates(doc)
            assert s._head_is_snapshot is (state == "kept")
            assert s.load_problem is None
            assert str(doc.get("source", type=pycrdt.Text)) == "abcdefghij"
    assert log.exists()
