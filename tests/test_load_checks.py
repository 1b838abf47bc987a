"""What loading checks: a snapshot our compaction wrote is checked for its structs only (it
was encoded from a document; squash keeps in it only structs that wait for missing updates),
and the updates after it in full, so a history with a hole, before or after a compaction, is
reported (``load_problem``), never loaded silently short."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

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
        assert store._head_is_clean  # the snapshot goes unchecked; the tail does not
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


# ---------------------------------------------------------------------- clean snapshots
# A compaction whose squash kept nothing waiting records its snapshot as clean, and a load
# then skips checking it (the check decodes the whole snapshot: ~40% of loading a big
# document beyond applying it). A snapshot not known to be clean (written before the mark
# existed, or holding a hole) is still checked.


def _count_snapshot_checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    from jupyter_ystore.core import ydoc as _ydoc

    calls: list[int] = []
    real = _ydoc.snapshot_waits

    def counting(state: bytes, snapshot: bytes) -> str | None:
        calls.append(len(snapshot))
        return real(state, snapshot)

    monkeypatch.setattr(_ydoc, "snapshot_waits", counting)
    return calls


async def test_a_clean_snapshot_is_loaded_without_checking_it(
    make: Callable[[str], BaseYStore],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checks = _count_snapshot_checks(monkeypatch)
    first, second = two_authors()
    async with make("doc") as store:
        for update in first:
            await store.write(update)
        await store.compact()
        await store.write(second[0])
    async with make("doc") as store:
        doc = pycrdt.Doc()
        await store.apply_updates(doc)
        assert (store._head_is_snapshot, store._head_is_clean) == (True, True)
        assert store.load_problem is None
        assert str(doc.get("source", type=pycrdt.Text)) == "abcdefghijX"
    assert checks == []
    # (the tail after a clean snapshot is still checked in full: a hole there is reported,
    # test_a_hole_after_a_snapshot_is_reported, whose snapshot is clean)


async def test_a_snapshot_holding_a_hole_is_not_marked_clean(
    make: Callable[[str], BaseYStore],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checks = _count_snapshot_checks(monkeypatch)
    first, second = two_authors()
    async with make("doc") as store:
        for update in first:
            await store.write(update)
        await store.write(second[1])  # waits for second[0], never stored
        await store.compact()
    async with make("doc") as store:
        await store.apply_updates(pycrdt.Doc())
        assert (store._head_is_snapshot, store._head_is_clean) == (True, False)
        assert store.load_problem is not None
    assert len(checks) == 1


def _without_clean_column(conn: Any) -> None:
    """``ystore_snapshots`` as the version before the ``clean`` column made it."""
    conn.executescript(
        "CREATE TABLE old AS SELECT path, row, timestamp, covered FROM ystore_snapshots;"
        "DROP TABLE ystore_snapshots;"
        "CREATE TABLE ystore_snapshots (path TEXT PRIMARY KEY, row INTEGER NOT NULL, "
        "timestamp REAL NOT NULL, covered INTEGER NOT NULL);"
        "INSERT INTO ystore_snapshots SELECT * FROM old; DROP TABLE old;"
    )


async def test_sqlite_snapshots_of_an_older_version_are_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database whose ``ystore_snapshots`` predates the ``clean`` column: its snapshots
    are checked; the column is added at open, and the next compaction marks its own."""
    import sqlite3

    from jupyter_ystore import SQLiteYStore

    db = str(tmp_path / "y.db")
    checks = _count_snapshot_checks(monkeypatch)
    first, second = two_authors()
    async with SQLiteYStore("doc", db_path=db) as store:
        for update in first:
            await store.write(update)
        await store.compact()
    conn = sqlite3.connect(db)  # as the version before the column left it
    _without_clean_column(conn)
    conn.close()
    async with SQLiteYStore("doc", db_path=db) as store:
        doc = pycrdt.Doc()
        await store.apply_updates(doc)
        assert (store._head_is_snapshot, store._head_is_clean) == (True, False)
        assert store.load_problem is None
        assert len(checks) == 1
        await store.write(second[0])
        await store.compact()
    conn = sqlite3.connect(db)
    columns = [row[1] for row in conn.execute("PRAGMA table_info(ystore_snapshots)")]
    assert columns[-1] == "clean"
    assert conn.execute("SELECT clean FROM ystore_snapshots").fetchall() == [(1,)]
    conn.close()
    async with SQLiteYStore("doc", db_path=db) as store:
        doc = pycrdt.Doc()
        await store.apply_updates(doc)
        assert store._head_is_clean
        assert str(doc.get("source", type=pycrdt.Text)) == "abcdefghijX"
    assert len(checks) == 1


async def test_sqlite_clean_column_absent_on_a_read_only_older_database(tmp_path: Path) -> None:
    """A file from before the column that cannot be written (opened read-only here, as root
    ignores file modes): its snapshot is found, as not known to be clean."""
    import sqlite3

    from jupyter_ystore import SQLiteYStore
    from jupyter_ystore.stores.sqlite import compat
    from jupyter_ystore.stores.sqlite.schema import Schema

    db = tmp_path / "y.db"
    first, _second = two_authors()
    async with SQLiteYStore("doc", db_path=str(db)) as store:
        for update in first:
            await store.write(update)
        await store.compact()
    conn = sqlite3.connect(db)
    _without_clean_column(conn)
    (row,) = conn.execute("SELECT row FROM ystore_snapshots").fetchone()
    conn.close()
    read_only = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    schema = Schema(compat.inspect_layout(read_only))
    assert not schema.snapshots_mark_clean
    assert schema.snapshot_head(read_only, "doc") == (row, False)
    read_only.close()


async def test_postgres_snapshots_of_an_older_version_are_checked(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Snapshot rows written before the clean mark have origin 0: checked on load."""
    from postgres_helpers import fresh_config, run_sql

    from jupyter_ystore import PostgresYStore

    config = fresh_config(request)
    checks = _count_snapshot_checks(monkeypatch)
    first, _second = two_authors()
    async with PostgresYStore("doc", **config) as store:
        for update in first:
            await store.write(update)
        await store.compact()
    async with PostgresYStore("doc", **config) as store:
        await store.apply_updates(pycrdt.Doc())
        assert (store._head_is_snapshot, store._head_is_clean) == (True, True)
    assert checks == []
    run_sql(f'UPDATE "{config["schema"]}".yupdates SET origin = 0 WHERE snapshot')
    async with PostgresYStore("doc", **config) as store:
        doc = pycrdt.Doc()
        await store.apply_updates(doc)
        assert (store._head_is_snapshot, store._head_is_clean) == (True, False)
        assert store.load_problem is None
        assert str(doc.get("source", type=pycrdt.Text)) == "abcdefghij"
    assert len(checks) == 1


def test_filestore_coverage_reads_sidecars_without_the_clean_flag() -> None:
    from jupyter_ystore.core.codec import write_var_bytes, write_var_uint
    from jupyter_ystore.stores.file.history import Coverage

    old = write_var_bytes(b"a" * 16) + write_var_bytes(b"b" * 16) + write_var_uint(7)
    assert Coverage.decode(old) == Coverage(b"a" * 16, b"b" * 16, 7, False)
    for clean in (False, True):
        coverage = Coverage(b"a" * 16, b"b" * 16, 7, clean)
        assert Coverage.decode(coverage.encode()) == coverage
        # what an older reader takes from it: the first three fields, the flag left over
        assert Coverage.decode(coverage.encode()[: len(old)]) == Coverage(b"a" * 16, b"b" * 16, 7)
