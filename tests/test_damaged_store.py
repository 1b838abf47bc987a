"""A damaged store never keeps JupyterLab from starting, and never loses what can be read.

A damaged SQLite file (or a FileYStore log damaged in the middle) is moved aside as
``<name>.damaged-<UTC time>``, never deleted, and what can still be read goes into a fresh
file at the original path, with one WARNING line saying where and what to run. Locks,
read-only files, full disks and unknown versions are not damage. See
``jupyter_ystore/stores/_sqlite_recover.py`` and ``_file_salvage.py``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sqlite3
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import anyio
import pycrdt
import pytest
from _server_helpers import JupyterServerProcess, write_notebook

from jupyter_ystore import (
    FileYStore,
    SQLiteYStore,
    YDocNotFound,
    YStoreCorruptError,
    YStoreLockedError,
    YStorePermissionError,
    YStoreVersionError,
)
from jupyter_ystore.stores.sqlite import recover as _sqlite_recover
from jupyter_ystore.stores.damaged import is_damaged_copy, replays_cleanly
from jupyter_ystore.stores.sqlite.errors import is_damage
from jupyter_ystore.stores.file.store import HEADER, encode_record

pytestmark = pytest.mark.anyio

LOGGER = "jupyter_ystore.sqlite"


# ---------------------------------------------------------------------- documents


def typed(lines: int, tag: str) -> list[bytes]:
    """One client typing ``lines`` lines: each update needs the one before it."""
    doc = pycrdt.Doc()
    text = doc.get("source", type=pycrdt.Text)
    updates: list[bytes] = []
    sub = doc.observe(lambda event: updates.append(event.update))
    for i in range(lines):
        text.insert(len(text), f"{tag} line {i} " + "x" * 120 + "\n")
    doc.unobserve(sub)
    return updates


def independent(count: int) -> list[bytes]:
    """Updates of ``count`` different clients, none needing another."""
    updates = []
    for i in range(count):
        doc = pycrdt.Doc()
        doc.get("cells", type=pycrdt.Map)[f"cell{i}"] = f"value {i}"
        updates.append(doc.get_update())
    return updates


def text_of(updates: list[bytes]) -> str:
    doc = pycrdt.Doc()
    for update in updates:
        doc.apply_update(update)
    return str(doc.get("source", type=pycrdt.Text))


async def write_documents(
    db: Path, docs: dict[str, list[bytes]], *, compact: frozenset[str] = frozenset()
) -> None:
    """One document after the other (its rows share pages), some compacted halfway, each
    with an attribute."""
    for key, updates in docs.items():
        async with SQLiteYStore(
            key, db_path=str(db), compact_after_updates=0, compact_after_bytes=0
        ) as st:
            for i, update in enumerate(updates):
                await st.write(update)
                if key in compact and i == len(updates) // 2:
                    await st.compact()
            await st.set_attributes({"base": f"base of {key}".encode()})


def rows(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


# ---------------------------------------------------------------------- damaging a page


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """An SQLite varint (big-endian groups of 7 bits, the 9th byte whole)."""
    value = 0
    for i in range(9):
        byte = buf[pos + i]
        if i == 8:
            return (value << 8) | byte, pos + 9
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, pos + i + 1
    raise AssertionError("unreachable")


def middle_leaf(db: Path, table: str) -> tuple[int, int, list[int]]:
    """A leaf page of ``table`` in the middle of its b-tree: (page number, page size, the
    rowids it holds), walked from the root page in the file's own format. (Read as an
    immutable file: a connection of our own could checkpoint a WAL into it.)"""
    conn = sqlite3.connect(f"file:{db}?immutable=1", uri=True)
    try:
        query = "SELECT rootpage FROM sqlite_master WHERE name = ?"
        (root,) = conn.execute(query, (table,)).fetchone()
        (size,) = conn.execute("PRAGMA page_size").fetchone()
    finally:
        conn.close()
    data = db.read_bytes()
    page = root
    while True:
        start = (page - 1) * size
        header = start + (100 if page == 1 else 0)
        kind = data[header]
        cells = struct.unpack(">H", data[header + 3 : header + 5])[0]
        body = header + (12 if kind == 0x05 else 8)
        pointers = [struct.unpack_from(">H", data, body + 2 * i)[0] for i in range(cells)]
        if kind == 0x0D:  # a table leaf: payload size, then the rowid
            rowids = []
            for pointer in pointers:
                _, pos = _varint(data, start + pointer)
                rowids.append(_varint(data, pos)[0])
            return page, size, rowids
        assert kind == 0x05, f"page {page} is not part of a table b-tree ({kind})"
        assert page == root or cells, "the table must span several leaf pages"
        child = start + pointers[cells // 2]
        page = struct.unpack(">I", data[child : child + 4])[0]


def zero_page(db: Path, page: int, size: int) -> None:
    """Zero one page, as a process that never opened the file before will find it (this
    one checked the file at its first open: see ``forget_checks``)."""
    with open(db, "r+b") as f:
        f.seek((page - 1) * size)
        f.write(b"\x00" * size)
    forget_checks()


def forget_checks() -> None:
    with _sqlite_recover._lock:
        _sqlite_recover._checked.clear()
        _sqlite_recover._damaged.clear()
        _sqlite_recover._in_use_until.clear()


def damaged_copies(folder: Path, name: str) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.name.startswith(name) and is_damaged_copy(p.name)
    )


def announcements(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "was damaged" in r.getMessage()]


@pytest.fixture(autouse=True)
def fresh_process_state() -> Any:
    """Each test sees files as a new process would (the integrity check of a first open)."""
    forget_checks()
    yield


# ---------------------------------------------------------------------- SQLite


async def test_garbage_sqlite_file_is_set_aside_and_a_fresh_store_opens(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    db = tmp_path / "y.db"
    garbage = b"this is not an SQLite database" * 200
    db.write_bytes(garbage)
    (tmp_path / "y.db-wal").write_bytes(b"an old WAL")
    update = typed(1, "new")[0]
    async with SQLiteYStore("doc", db_path=str(db)) as st:
        with pytest.raises(YDocNotFound):  # nothing salvaged: the document opens from its file
            await st.apply_updates(pycrdt.Doc())
        await st.write(update)  # the fresh store works
    [copy] = damaged_copies(tmp_path, "y.db.damaged-")
    assert copy.read_bytes() == garbage  # moved, never deleted
    assert Path(f"{copy}-wal").read_bytes() == b"an old WAL"  # its WAL beside it
    [line] = announcements(caplog)
    assert str(db) in line and str(copy) in line and "salvaged 0 documents" in line
    assert "open from their files" in line
    assert f"jupyter ystore verify --all --SQLiteYStore.db_path={db}" in line
    assert f"jupyter ystore list --SQLiteYStore.db_path={copy}" in line
    stamp = copy.name.rsplit(".damaged-", 1)[1]
    assert len(stamp) == 16 and stamp[8] == "T" and stamp.endswith("Z")
    async with SQLiteYStore("doc", db_path=str(db)) as st:  # once: nothing moved again
        assert [r[0] async for r in st.read()] == [update]
    assert len(announcements(caplog)) == 1
    left = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith("-shm"))
    assert left == ["y.db", copy.name, f"{copy.name}-wal"]  # no sidecar lock, no old WAL


async def test_one_bad_page_loses_only_the_rows_on_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    db = tmp_path / "y.db"
    docs = {f"doc{i:02d}": typed(30, f"doc{i}") for i in range(40)}
    await write_documents(db, docs, compact=frozenset({"doc03", "doc21", "doc37"}))
    # Committed but not yet folded when the process died: pending rows of one more document.
    pending_doc = typed(5, "pending")
    (newest,) = rows(db, "SELECT max(rowid) FROM yupdates")[0]
    conn = sqlite3.connect(db)
    conn.executemany(
        "INSERT INTO ystore_pending (rowid, path, yupdate, metadata, timestamp) "
        "VALUES (?, ?, ?, ?, ?)",
        [
            (newest + 1 + i, "pending", u, b"meta %d" % i, 1.7e9 + i)
            for i, u in enumerate(pending_doc)
        ],
    )
    conn.commit()
    conn.close()
    every_row = "SELECT rowid, path, yupdate, metadata, timestamp FROM yupdates"
    before = {r[0]: r[1:] for r in rows(db, every_row)}
    snapshots = rows(db, "SELECT path, row, timestamp, covered FROM ystore_snapshots ORDER BY path")
    attributes = rows(db, "SELECT path, name, value FROM ystore_attributes ORDER BY path")
    assert len(snapshots) == 3 and len(attributes) == 40
    page, size, lost = middle_leaf(db, "yupdates")
    assert 0 < len(lost) < 60 and len(before) > 10 * len(lost)
    zero_page(db, page, size)

    async with SQLiteYStore("doc00", db_path=str(db)) as st:
        listed = {info.path for info in await st.list_documents()}

    after = {r[0]: r[1:] for r in rows(db, every_row)}
    touched = {before[rowid][0] for rowid in lost}
    assert 1 <= len(touched) <= 3  # one document after the other: a page holds few of them
    for key in docs:
        mine = [rowid for rowid in sorted(before) if before[rowid][0] == key]
        kept = [rowid for rowid in sorted(after) if after[rowid][0] == key]
        if key not in touched:  # every row on the other pages, unchanged
            assert [after[r] for r in kept] == [before[r] for r in mine], key
        else:  # what is left of it replays, or nothing is kept
            assert kept in ([], [r for r in mine if r not in lost]), key
            assert not kept or replays_cleanly([after[r][1] for r in kept]), key
    assert not set(after) & set(lost)
    kept_docs = {path for path, *_ in after.values()}
    assert len(kept_docs) >= 38 and listed == kept_docs
    # the pending rows were folded, keeping rowids, metadata and times
    assert [after[newest + 1 + i] for i in range(5)] == [
        ("pending", u, b"meta %d" % i, 1.7e9 + i) for i, u in enumerate(pending_doc)
    ]
    # a snapshot row is kept with its snapshot (on another page than the damaged one)
    assert rows(db, "SELECT path, row, timestamp, covered FROM ystore_snapshots ORDER BY path") == [
        s for s in snapshots if s[1] in after
    ]
    assert all(s[1] in after for s in snapshots if s[0] not in touched)
    assert rows(db, "SELECT path, name, value FROM ystore_attributes ORDER BY path") == [
        a for a in attributes if a[0] in kept_docs or a[0] not in touched
    ]
    untouched = next(key for key in docs if key not in touched)
    async with SQLiteYStore(untouched, db_path=str(db)) as st:
        doc = pycrdt.Doc()
        await st.apply_updates(doc)
        assert str(doc.get("source", type=pycrdt.Text)) == text_of(docs[untouched])
        assert await st.get_attributes() == {"base": f"base of {untouched}".encode()}
    [line] = announcements(caplog)
    dropped = sorted(touched - kept_docs)
    assert f"salvaged {len(kept_docs)} documents" in line
    assert all(key in line for key in dropped)
    [copy] = damaged_copies(tmp_path, "y.db.damaged-")
    assert str(copy) in line


async def test_the_wal_is_moved_with_the_database_and_its_rows_salvaged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    source = tmp_path / "src" / "y.db"
    docs = {f"doc{i:02d}": typed(20, f"doc{i}") for i in range(20)}
    await write_documents(source, docs)
    # A process commits a new document into the WAL and is killed before any checkpoint:
    # copy the files while its connection is still open.
    late = typed(8, "late")
    writer = sqlite3.connect(source, isolation_level=None)
    writer.execute("PRAGMA wal_autocheckpoint = 0")
    for i, update in enumerate(late):
        writer.execute(
            "INSERT INTO yupdates (path, yupdate, metadata, timestamp) VALUES ('late', ?, ?, ?)",
            (update, b"late %d" % i, 1.8e9 + i),
        )
    db = tmp_path / "y.db"
    for suffix in ("", "-wal"):
        Path(f"{db}{suffix}").write_bytes(Path(f"{source}{suffix}").read_bytes())
    writer.close()
    wal = Path(f"{db}-wal").read_bytes()
    assert len(wal) > 32
    # Damage a page of the main file that the WAL does not replace.
    page, size, lost = middle_leaf(db, "yupdates")
    in_wal = {
        struct.unpack(">I", wal[offset : offset + 4])[0]
        for offset in range(32, len(wal) - 24 - size + 1, 24 + size)
    }
    assert page not in in_wal
    zero_page(db, page, size)
    damaged = db.read_bytes()

    async with SQLiteYStore("late", db_path=str(db)) as st:
        records = [r async for r in st.read()]
    assert records == [(u, b"late %d" % i, 1.8e9 + i) for i, u in enumerate(late)]
    [copy] = damaged_copies(tmp_path, "y.db.damaged-")
    assert copy.read_bytes() == damaged
    assert Path(f"{copy}-wal").read_bytes() == wal  # the WAL moved with it, under its name
    assert not Path(f"{db}-wal").exists() or Path(f"{db}-wal").read_bytes() != wal
    [line] = announcements(caplog)
    assert "-wal" in line


async def test_damage_found_while_running_is_handled_at_the_next_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    db = tmp_path / "y.db"
    docs = {f"doc{i:02d}": typed(30, f"doc{i}") for i in range(20)}
    await write_documents(db, docs)  # opened (and checked) by this process
    page, size, lost = middle_leaf(db, "yupdates")
    (victim,) = rows(db, "SELECT path FROM yupdates WHERE rowid = ?", lost[0])[0]
    with open(db, "r+b") as f:  # the disk goes bad under a running server
        f.seek((page - 1) * size)
        f.write(b"\x00" * size)
    async with SQLiteYStore(victim, db_path=str(db)) as st:
        with pytest.raises(YStoreCorruptError) as info:  # a read meets the bad page
            await st.apply_updates(pycrdt.Doc())
        assert "moves it aside" in str(info.value)
    assert not damaged_copies(tmp_path, "y.db.damaged-")  # not while it was open
    [noted] = [r.getMessage() for r in caplog.records if "reports the database" in r.getMessage()]
    assert str(db) in noted and "next time it is opened" in noted
    async with SQLiteYStore("doc00", db_path=str(db)) as st:  # the next open
        assert await st.list_documents()
    assert len(damaged_copies(tmp_path, "y.db.damaged-")) == 1
    assert len(announcements(caplog)) == 1
    assert not rows(db, "SELECT 1 FROM yupdates WHERE rowid IN (%s)" % ",".join(map(str, lost)))


async def test_damage_the_check_did_not_see_is_found_by_the_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file this process already checked, overwritten since: the open itself finds it."""
    caplog.set_level(logging.WARNING, LOGGER)
    db = tmp_path / "y.db"
    await write_documents(db, {"doc": typed(3, "a")})
    size = db.stat().st_size
    with open(db, "r+b") as f:  # the same file, every byte garbage
        f.write(b"\xee" * size)
    async with SQLiteYStore("doc", db_path=str(db)) as st:
        with pytest.raises(YDocNotFound):
            await st.apply_updates(pycrdt.Doc())
    [copy] = damaged_copies(tmp_path, "y.db.damaged-")
    assert copy.read_bytes() == b"\xee" * size
    assert len(announcements(caplog)) == 1


_OPENER = """
import json, logging, os, sys, time
import anyio
from jupyter_ystore import SQLiteYStore

said = []
class Keep(logging.Handler):
    def emit(self, record):
        said.append(record.getMessage())
logging.getLogger("jupyter_ystore.sqlite").addHandler(Keep())
db, go = sys.argv[1], float(sys.argv[2])
while time.time() < go:
    time.sleep(0.0005)

async def main():
    async with SQLiteYStore("doc00", db_path=db) as st:
        found = [r async for r in st.read()]
        return len(found), os.stat(db).st_ino

count, inode = anyio.run(main)
announced = sum("was damaged" in m for m in said)
print(json.dumps({"rows": count, "inode": inode, "announced": announced}))
"""


async def test_two_processes_opening_one_damaged_file_move_it_aside_once(tmp_path: Path) -> None:
    db = tmp_path / "y.db"
    docs = {f"doc{i:02d}": typed(40, f"doc{i}") for i in range(60)}
    await write_documents(db, docs)
    page, size, lost = middle_leaf(db, "yupdates")
    zero_page(db, page, size)
    go = time.time() + 3.0  # both start then (their imports take most of it)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _OPENER, str(db), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert len(damaged_copies(tmp_path, "y.db.damaged-")) == 1  # moved aside once
    assert sorted(r["announced"] for r in results) == [0, 1]
    assert results[0]["inode"] == results[1]["inode"] == os.stat(db).st_ino  # both on the new file
    stored = len(rows(db, "SELECT 1 FROM yupdates WHERE path = 'doc00'"))
    assert results[0]["rows"] == results[1]["rows"] == stored == 40
    assert not Path(f"{db}.lock").exists()  # the last user removed the sidecar


async def test_a_file_another_process_keeps_open_is_not_moved_from_under_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    db = tmp_path / "y.db"
    await write_documents(db, {f"doc{i:02d}": typed(30, f"doc{i}") for i in range(20)})
    page, size, _lost = middle_leaf(db, "yupdates")
    zero_page(db, page, size)
    monkeypatch.setattr(_sqlite_recover, "USERS_WAIT", 0.2)
    monkeypatch.setattr(_sqlite_recover, "RETRY_IN_USE", 0.0)
    holder = subprocess.Popen(  # holds <db>.lock shared, as a second server's store does
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_SH); print('held', flush=True); time.sleep(60)",
            f"{db}.lock",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        async with SQLiteYStore("doc00", db_path=str(db)) as st:  # opened as it is
            assert await st.get_attributes() == {"base": b"base of doc00"}
        assert not damaged_copies(tmp_path, "y.db.damaged-")
        assert any("other processes have it open" in r.getMessage() for r in caplog.records)
    finally:
        holder.kill()
        holder.wait()
    async with SQLiteYStore("doc00", db_path=str(db)):  # alone now: set aside
        pass
    assert len(damaged_copies(tmp_path, "y.db.damaged-")) == 1


def _legacy_database(db: Path) -> None:
    """A healthy ypy-websocket file in rollback-journal mode (readers wait for a writer)."""
    conn = sqlite3.connect(db)
    conn.execute(
        "CREATE TABLE yupdates "
        "(path TEXT NOT NULL, yupdate BLOB, metadata BLOB, timestamp REAL NOT NULL)"
    )
    conn.execute("INSERT INTO yupdates VALUES ('doc', ?, X'', 1.7e9)", (typed(1, "a")[0],))
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()


async def test_a_locked_file_is_not_damage(tmp_path: Path) -> None:
    db = tmp_path / "y.db"
    _legacy_database(db)
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another process writes for a long time
    try:
        with pytest.raises(YStoreLockedError):
            async with SQLiteYStore("doc", db_path=str(db), busy_timeout=0.3):
                pass
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["y.db"]  # nothing moved, no sidecar
    async with SQLiteYStore("doc", db_path=str(db)) as st:
        assert len([r async for r in st.read()]) == 1


async def test_a_read_only_file_is_not_damage(
    tmp_path: Path, sqlite_read_only: Callable[[Path], None]
) -> None:
    db = tmp_path / "y.db"
    await write_documents(db, {"doc": typed(3, "a")})
    sqlite_read_only(db)
    before = db.read_bytes()
    async with SQLiteYStore("doc", db_path=str(db)) as st:
        assert len([r async for r in st.read()]) == 3
        with pytest.raises(YStorePermissionError):
            await st.write(typed(1, "b")[0])
    assert db.read_bytes() == before
    assert not damaged_copies(tmp_path, "y.db.damaged-")


async def test_an_unknown_version_is_refused_untouched(tmp_path: Path) -> None:
    db = tmp_path / "y.db"
    _legacy_database(db)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    before = db.read_bytes()
    with pytest.raises(YStoreVersionError):
        async with SQLiteYStore("doc", db_path=str(db)):
            pass
    assert db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["y.db"]


@pytest.mark.parametrize("failure", ["rename refused", "disk full"])
async def test_a_damaged_file_that_cannot_be_set_aside_stays_where_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, failure: str
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    db = tmp_path / "y.db"
    garbage = b"\x01not sqlite" * 500
    db.write_bytes(garbage)
    if failure == "rename refused":
        real_rename = os.rename

        def rename(src: Any, dst: Any) -> None:
            if Path(src).name == "y.db":
                raise PermissionError(errno.EACCES, "Permission denied")
            real_rename(src, dst)

        monkeypatch.setattr(os, "rename", rename)
    else:

        def full(db_path: str, tmp: str) -> Any:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(_sqlite_recover, "_salvage_into", full)
    with pytest.raises(YStoreCorruptError):
        async with SQLiteYStore("doc", db_path=str(db)):
            pass
    assert db.read_bytes() == garbage
    assert sorted(p.name for p in tmp_path.iterdir()) == ["y.db"]  # no copy, no new file
    assert any("could not be set aside" in r.getMessage() for r in caplog.records)


def test_only_damage_counts_as_damage(tmp_path: Path) -> None:
    """Real errors from SQLite: locked, read-only, unopenable and full are not damage."""

    def error_of(action: Callable[[], Any]) -> sqlite3.Error:
        with pytest.raises(sqlite3.Error) as info:
            action()
        return info.value

    db = tmp_path / "ok.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE t (x BLOB)")
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    waiting = sqlite3.connect(db, timeout=0)
    locked = error_of(lambda: waiting.execute("SELECT * FROM t").fetchall())
    holder.execute("ROLLBACK")
    reader = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    read_only = error_of(lambda: reader.execute("INSERT INTO t VALUES (1)"))
    missing = error_of(lambda: sqlite3.connect(tmp_path / "no" / "such.db").execute("SELECT 1"))
    conn.execute("PRAGMA max_page_count = 3")
    full = error_of(lambda: conn.execute("INSERT INTO t VALUES (zeroblob(100000))"))
    (tmp_path / "bad.db").write_bytes(b"garbage" * 100)
    bad = sqlite3.connect(tmp_path / "bad.db")
    not_a_database = error_of(lambda: bad.execute("SELECT * FROM sqlite_master").fetchall())
    for exc in (locked, read_only, missing, full):
        assert not is_damage(exc), exc
    assert is_damage(not_a_database)
    assert is_damage(sqlite3.DatabaseError("database disk image is malformed"))
    for c in (conn, holder, waiting, reader, bad):
        c.close()


# ---------------------------------------------------------------------- reading a damaged copy


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR"):
        env[name] = str(cwd / name.lower())
    env["JUPYTER_CONFIG_PATH"] = ""
    return subprocess.run(
        [sys.executable, "-m", "jupyter", "ystore", *args],
        env=env,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


async def test_listing_a_damaged_copy_works_and_leaves_it_byte_identical(tmp_path: Path) -> None:
    db = tmp_path / "y.db"
    docs = {f"doc{i:02d}": typed(30, f"doc{i}") for i in range(30)}
    await write_documents(db, docs)
    page, size, lost = middle_leaf(db, "yupdates")
    zero_page(db, page, size)
    async with SQLiteYStore("doc00", db_path=str(db)):
        pass
    [copy] = damaged_copies(tmp_path, "y.db.damaged-")
    wal = Path(f"{copy}-wal")
    files = {p: p.read_bytes() for p in (copy, wal)}  # (its -shm is SQLite's cache)

    listed = _cli("list", "--json", f"--SQLiteYStore.db_path={copy}", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    found = {row["key"]: row["updates"] for row in json.loads(listed.stdout)}
    # Every document the copy still holds, those dropped from the fresh store too, and
    # every row of theirs that is not on the bad page.
    assert set(found) == set(docs)
    assert sum(found.values()) == 30 * 30 - len(lost)
    assert "damaged copy" in listed.stderr and "read-only" in listed.stderr
    verified = _cli("verify", "--all", f"--SQLiteYStore.db_path={db}", cwd=tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    async with SQLiteYStore("doc00", db_path=str(copy)) as st:  # never repaired, only read
        with pytest.raises(YStorePermissionError, match="only ever read"):
            await st.write(typed(1, "b")[0])
        with pytest.raises(YStorePermissionError):
            await st.compact()
    assert {p: p.read_bytes() for p in (copy, wal)} == files
    assert len(damaged_copies(tmp_path, "y.db.damaged-")) == 1
    assert not Path(f"{copy}.lock").exists()


# ---------------------------------------------------------------------- the server


def test_a_server_starts_on_a_damaged_store_and_says_so_once(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_notebook(root / "a.ipynb", ["x = 1"])
    db = root / ".jupyter_ystore.db"  # the default place
    garbage = b"\x00\x01 definitely not sqlite \xff" * 300
    db.write_bytes(garbage)
    server = JupyterServerProcess(root, tmp_path / "home")
    server.start()
    try:
        status, _ = server.request("GET", "/api/status")
        assert status == 200
        server.session("a.ipynb")  # the extension serves documents on the fresh store
        log = server.log()
    finally:
        server.terminate()
    [copy] = damaged_copies(root, ".jupyter_ystore.db.damaged-")
    assert copy.read_bytes() == garbage
    lines = [line for line in log.splitlines() if "was damaged" in line]
    assert len(lines) == 1, log
    assert str(copy) in lines[0] and "jupyter ystore verify --all" in lines[0]
    assert "every edit is stored by SQLiteYStore" in log
    assert "Traceback" not in log
    assert server.proc is not None and server.proc.returncode == 0, log


# ---------------------------------------------------------------------- FileYStore


def _log_bytes(records: list[tuple[bytes, bytes, float]]) -> bytes:
    return HEADER + b"".join(encode_record(*record) for record in records)


def _damage_record(
    data: bytes, records: list[tuple[bytes, bytes, float]], index: int
) -> tuple[bytes, int]:
    """``data`` with record ``index``'s update length running past the end of the file."""
    offset = len(HEADER) + sum(len(encode_record(*r)) for r in records[:index])
    damaged = bytearray(data)
    damaged[offset : offset + 3] = b"\xff\xff\x7f"
    return bytes(damaged), offset


@pytest.mark.parametrize(
    "kind, kept",
    [
        pytest.param("independent", [0, 1, 3, 4, 5], id="records-after-it-kept"),
        pytest.param("typed", [0, 1], id="records-after-it-need-the-lost-one"),
    ],
)
async def test_a_log_damaged_in_the_middle_keeps_its_intact_records(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str, kept: list[int]
) -> None:
    caplog.set_level(logging.WARNING)
    updates = independent(6) if kind == "independent" else typed(6, "t")
    now = time.time()
    records = [(u, b"meta %d" % i, now + i) for i, u in enumerate(updates)]
    target = tmp_path / "doc.y"
    data, offset = _damage_record(_log_bytes(records), records, 2)
    target.write_bytes(data)
    async with FileYStore("doc.y", root_dir=str(tmp_path)) as store:
        got = [r async for r in store.read()]
    assert got == [records[i] for i in kept]
    assert target.read_bytes() == _log_bytes(got)  # a whole new file
    [copy] = damaged_copies(tmp_path, "doc.y.damaged-")
    assert copy.read_bytes() == data
    [line] = [r.getMessage() for r in caplog.records if "was damaged" in r.getMessage()]
    assert str(target) in line and str(copy) in line and f"byte {offset}" in line
    assert f"kept {len(kept)} intact records" in line and "jupyter ystore verify --all" in line
    assert f"jupyter ystore verify doc.y{copy.name[len('doc.y'):]}" in line
    async with FileYStore("doc.y", root_dir=str(tmp_path)) as store:  # once
        assert [r async for r in store.read()] == got
    assert len(damaged_copies(tmp_path, "doc.y.damaged-")) == 1
    # The copy reads (its intact records), and is never repaired, moved or written.
    async with FileYStore(copy.name, root_dir=str(tmp_path)) as store:
        readable = [r async for r in store.read()]
        with pytest.raises(YStorePermissionError):
            await store.write(updates[0])
    assert readable == [r for i, r in enumerate(records) if i != 2]
    assert copy.read_bytes() == data
    async with FileYStore("doc.y", root_dir=str(tmp_path)) as store:
        assert [info.path for info in await store.list_documents()] == ["doc.y"]


async def test_a_false_start_inside_the_damage_does_not_swallow_the_next_record(
    tmp_path: Path,
) -> None:
    """Found by CI (about one run in eight, by the time of day in the timestamps): here
    a "record" made of the damaged record's last bytes and the whole next one decodes too (a
    Yjs decoder ignores trailing bytes) and starts before the true one, so taking the first
    offset that decodes to the end lost a record."""
    updates = []
    for i, client in enumerate([2684784561, 3733343274, 4145055478, 3738533615]):
        doc = pycrdt.Doc(client_id=client)
        doc.get("cells", type=pycrdt.Map)[f"cell{i}"] = f"value {i}"
        updates.append(doc.get_update())
    records = [(u, b"", 1780053562.628 + i) for i, u in enumerate(updates)]
    data, _ = _damage_record(_log_bytes(records), records, 1)
    (tmp_path / "doc.y").write_bytes(data)
    async with FileYStore("doc.y", root_dir=str(tmp_path)) as store:
        assert [r async for r in store.read()] == [records[0], records[2], records[3]]


async def test_a_log_with_nothing_usable_left_opens_from_its_file(tmp_path: Path) -> None:
    updates = typed(4, "t")
    records = [(u, b"", time.time() + i) for i, u in enumerate(updates)]
    (tmp_path / "doc.y").write_bytes(_log_bytes(records))
    async with FileYStore("doc.y", root_dir=str(tmp_path)) as store:
        await store.set_attributes({"base": b"what was saved"})
    data, _ = _damage_record(_log_bytes(records), records, 0)
    (tmp_path / "doc.y").write_bytes(data)
    async with FileYStore("doc.y", root_dir=str(tmp_path)) as store:
        with pytest.raises(YDocNotFound):
            await store.apply_updates(pycrdt.Doc())
        assert await store.get_attributes() == {}  # nothing is stored for it
    [copy] = damaged_copies(tmp_path, "doc.y.damaged-")
    assert copy.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == [copy.name, f"{copy.name}.attrs"]


def test_verify_all_leaves_a_log_copy_out_and_reads_it_when_named(tmp_path: Path) -> None:
    updates = independent(4)
    records = [(u, b"", time.time() + i) for i, u in enumerate(updates)]
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    data, _ = _damage_record(_log_bytes(records), records, 1)
    (store_dir / "doc.y").write_bytes(data)
    args = ["--ystore-class=FileYStore", f"--FileYStore.root_dir={store_dir}"]
    before = _cli("verify", "--all", *args, cwd=tmp_path)  # verifying changes nothing
    assert before.returncode == 1 and "DAMAGED  doc.y" in before.stdout
    assert sorted(p.name for p in store_dir.iterdir()) == ["doc.y"]

    async def open_it() -> None:  # as a room does
        async with FileYStore("doc.y", root_dir=str(store_dir)) as store:
            read = [r async for r in store.read()]
            # (what was read and the folder, should this ever fail again: it did once, in CI)
            assert len(read) == 3, ([(len(r[0]), r[2]) for r in read], sorted(store_dir.iterdir()))

    anyio.run(open_it)
    verified = _cli("verify", "--all", *args, cwd=tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "ok       doc.y: 3 records" in verified.stdout, verified.stdout + verified.stderr
    [copy] = damaged_copies(store_dir, "doc.y.damaged-")
    again = _cli("verify", "--all", *args, cwd=tmp_path)
    assert again.returncode == 0 and copy.name not in again.stdout, again.stdout
    named = _cli("verify", copy.name, *args, cwd=tmp_path)
    assert named.returncode == 1 and "DAMAGED" in named.stdout  # read, and reported
    assert "record #1" in named.stdout
    assert copy.read_bytes() == data
