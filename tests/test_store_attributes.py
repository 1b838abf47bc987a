"""Per-document attributes (``get_attributes`` / ``set_attributes``) on every backend.

Each backend is described by a ``Spec``: the store class and the keyword arguments naming its
storage (folder, database file, PostgreSQL schema), JSON-serializable so that a second
process can open the same storage (``in_another_process``).
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import anyio
import pycrdt
import pytest
from postgres_helpers import pg_config  # noqa: F401 (fixture)

from jupyter_ystore import (
    BaseYStore,
    FileYStore,
    MemoryYStore,
    SQLiteYStore,
    YDocNotFound,
    YStoreError,
)
from jupyter_ystore.errors import YStorePermissionError
from jupyter_ystore.stores.migrate import ContentMismatch, copy_documents
from jupyter_ystore.stores.file import attrs as _file_attrs
from jupyter_ystore.stores.sqlite import attributes as _sqlite_attributes
from jupyter_ystore.stores.sqlite import pending as _sqlite_pending

pytestmark = pytest.mark.anyio


@dataclass
class Spec:
    kind: str
    cls: type[BaseYStore]
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __call__(self, path: str, **extra: Any) -> BaseYStore:
        return self.cls(path, **self.kwargs, **extra)


def memory_spec(tmp_path: Path, request: Any) -> Spec:
    # MemoryYStore keeps one database per class: a class of the test's own
    return Spec("memory", type("MemoryYStoreForAttributes", (MemoryYStore,), {}))


def file_spec(tmp_path: Path, request: Any) -> Spec:
    return Spec("file", FileYStore, {"root_dir": str(tmp_path / "files")})


def sqlite_spec(tmp_path: Path, request: Any) -> Spec:
    return Spec("sqlite", SQLiteYStore, {"db_path": str(tmp_path / "y.db")})


def postgres_spec(tmp_path: Path, request: Any) -> Spec:
    from postgres_helpers import fresh_config  # a schema of the test's own; CI=true: no skip

    from jupyter_ystore import PostgresYStore

    return Spec("postgres", PostgresYStore, fresh_config(request))


SPECS: dict[str, Callable[[Path, Any], Spec]] = {
    "memory": memory_spec,
    "file": file_spec,
    "sqlite": sqlite_spec,
    "postgres": postgres_spec,
}
PERSISTENT = ["file", "sqlite", "postgres"]
WATCHING = ["sqlite", "postgres"]


@pytest.fixture(params=list(SPECS))
def spec(request: Any, tmp_path: Path) -> Spec:
    return SPECS[request.param](tmp_path, request)


@pytest.fixture(params=PERSISTENT)
def persistent(request: Any, tmp_path: Path) -> Spec:
    return SPECS[request.param](tmp_path, request)


@pytest.fixture(params=WATCHING)
def watching(request: Any, tmp_path: Path) -> Spec:
    return SPECS[request.param](tmp_path, request)


def typed_updates(n: int) -> tuple[list[bytes], str]:
    doc = pycrdt.Doc()
    text = doc.get("source", type=pycrdt.Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    for i in range(n):
        text += f"{i},"
    return updates, str(text)


async def records(store: BaseYStore) -> list[tuple[bytes, bytes, float]]:
    return [record async for record in store.read()]


async def source_of(store: BaseYStore) -> str:
    doc = pycrdt.Doc()
    await store.apply_updates(doc)
    return str(doc.get("source", type=pycrdt.Text))


_CHILD = textwrap.dedent(
    """
    import json, sys, anyio
    from jupyter_ystore import FileYStore, PostgresYStore, SQLiteYStore

    CLASSES = {"file": FileYStore, "sqlite": SQLiteYStore, "postgres": PostgresYStore}

    async def main():
        kind, kwargs, path, values = json.loads(sys.argv[1])
        async with CLASSES[kind](path, **kwargs) as store:
            if values:
                await store.set_attributes(
                    {k: None if v is None else v.encode() for k, v in values.items()}
                )
            found = await store.get_attributes()
        print(json.dumps({k: v.decode() for k, v in found.items()}))

    anyio.run(main)
    """
)


async def in_another_process(spec: Spec, path: str, values: dict[str, str | None]) -> dict:
    """Set ``values`` (if any) from a second Python process, and return what it reads."""
    argument = json.dumps([spec.kind, spec.kwargs, path, values])
    result = await anyio.run_process([sys.executable, "-c", _CHILD, argument], check=False)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    return json.loads(result.stdout)


# ---------------------------------------------------------------------- the contract


async def test_round_trip_and_none_deletes_a_name(spec: Spec) -> None:
    async with spec("doc") as store:
        assert await store.get_attributes() == {}
        await store.set_attributes({"history_id": b"id-1", "base": bytearray(b"\x00zlib")})
        found = await store.get_attributes()
        assert found == {"history_id": b"id-1", "base": b"\x00zlib"}
        assert all(type(value) is bytes for value in found.values())
        # one call: a name removed, another replaced, a third added; absent names kept
        await store.set_attributes({"base": None, "history_id": b"id-2", "extra": b""})
        assert await store.get_attributes() == {"history_id": b"id-2", "extra": b""}
        await store.set_attributes({"never_set": None})  # removing an absent name: no error
        await store.set_attributes({})
        assert await store.get_attributes() == {"history_id": b"id-2", "extra": b""}
        await store.set_attributes({"history_id": None, "extra": None})
        assert await store.get_attributes() == {}


async def test_documents_have_their_own_attributes(spec: Spec) -> None:
    async with spec("a") as a, spec("b") as b:
        await a.set_attributes({"history_id": b"of-a"})
        assert await b.get_attributes() == {}
        await b.set_attributes({"history_id": b"of-b"})
        assert await a.get_attributes() == {"history_id": b"of-a"}


async def test_unknown_document_reads_empty_and_stays_unknown(spec: Spec) -> None:
    async with spec("never-written") as store:
        assert await store.get_attributes() == {}
        with pytest.raises(YDocNotFound):
            await records(store)
        assert await store.list_documents() == []
    if spec.kind == "file":
        root = Path(spec.kwargs["root_dir"])
        assert not root.exists() or list(root.rglob("*")) == []  # reading created nothing


async def test_set_before_the_first_update_and_after_a_restart(spec: Spec) -> None:
    async with spec("new-doc") as store:
        await store.set_attributes({"history_id": b"h"})
        with pytest.raises(YDocNotFound):  # attributes are not updates
            await records(store)
        assert [info.path for info in await store.list_documents()] == []
    async with spec("new-doc") as again:  # a new instance: what a restarted server sees
        assert await again.get_attributes() == {"history_id": b"h"}
        updates, final = typed_updates(5)
        for update in updates:
            await again.write(update)
        assert [info.path for info in await again.list_documents()] == ["new-doc"]
    async with spec("new-doc") as third:
        assert await third.get_attributes() == {"history_id": b"h"}
        assert await source_of(third) == final


async def test_two_open_instances_see_each_others_values(spec: Spec) -> None:
    async with spec("doc") as first, spec("doc") as second:
        await first.set_attributes({"history_id": b"1"})
        assert await second.get_attributes() == {"history_id": b"1"}
        await second.set_attributes({"history_id": b"2", "base": b"b"})
        assert await first.get_attributes() == {"history_id": b"2", "base": b"b"}


async def test_another_process_sees_our_values_and_we_see_its(persistent: Spec) -> None:
    """A second server (PostgreSQL: another pool) or another process on the file."""
    async with persistent("doc") as store:
        await store.set_attributes({"history_id": b"ours", "base": b"b"})
        seen = await in_another_process(persistent, "doc", {"history_id": "theirs"})
        assert seen == {"history_id": "theirs", "base": "b"}
        # no cache here either: the store that is still open reads the other's value
        assert await store.get_attributes() == {"history_id": b"theirs", "base": b"b"}
        await store.set_attributes({"base": None})
        assert await in_another_process(persistent, "doc", {}) == {"history_id": "theirs"}


async def test_concurrent_sets_of_different_names_are_all_kept(spec: Spec) -> None:
    async with spec("doc") as store, spec("doc") as other:
        async with anyio.create_task_group() as tg:
            for i in range(16):
                writer = store if i % 2 else other
                tg.start_soon(writer.set_attributes, {f"name_{i}": b"%d" % i})
        assert await store.get_attributes() == {f"name_{i}": b"%d" % i for i in range(16)}


async def test_delete_removes_the_attributes(spec: Spec) -> None:
    updates, _ = typed_updates(5)
    async with spec("doc") as store, spec("other") as other:
        for update in updates:
            await store.write(update)
        await store.set_attributes({"history_id": b"h", "base": b"b"})
        await other.set_attributes({"history_id": b"kept"})
        await store.delete()
        assert await store.get_attributes() == {}
        assert await other.get_attributes() == {"history_id": b"kept"}
    async with spec("doc") as again:
        assert await again.get_attributes() == {}
        with pytest.raises(YDocNotFound):
            await records(again)
    if spec.kind == "file":
        assert sorted(p.name for p in Path(spec.kwargs["root_dir"]).iterdir()) == [
            "other.attrs"
        ]
    if spec.kind == "sqlite":
        conn = sqlite3.connect(spec.kwargs["db_path"])
        rows = conn.execute("SELECT path, name FROM ystore_attributes").fetchall()
        conn.close()
        assert rows == [("other", "history_id")]


async def test_delete_of_a_document_with_attributes_only(spec: Spec) -> None:
    async with spec("doc") as store:
        await store.set_attributes({"history_id": b"h"})
        await store.delete()
        assert await store.get_attributes() == {}


async def test_compaction_keeps_the_attributes(spec: Spec) -> None:
    updates, final = typed_updates(30)
    async with spec("doc") as store:
        for update in updates:
            await store.write(update)
        await store.set_attributes({"history_id": b"h", "base": b"b" * 1000})
        await store.compact()
        assert len(await records(store)) == 1
        assert await store.get_attributes() == {"history_id": b"h", "base": b"b" * 1000}
        assert await source_of(store) == final


async def test_document_ttl_squash_keeps_the_attributes(persistent: Spec) -> None:
    updates, final = typed_updates(6)
    async with persistent("doc", document_ttl=0.0) as store:  # every write squashes first
        await store.set_attributes({"history_id": b"h"})
        for update in updates:
            await store.write(update)
            await anyio.sleep(0.01)
        assert len(await records(store)) <= 2  # squashed: snapshot + the last update
        assert await store.get_attributes() == {"history_id": b"h"}
        assert await source_of(store) == final


async def test_a_5_mb_value(spec: Spec) -> None:
    big = os.urandom(5 * 1024 * 1024)  # incompressible
    async with spec("doc") as store:
        await store.set_attributes({"base": big, "history_id": b"h"})
        assert (await store.get_attributes())["base"] == big
    async with spec("doc") as again:
        assert await again.get_attributes() == {"base": big, "history_id": b"h"}
        await again.set_attributes({"base": big[:10]})
        assert await again.get_attributes() == {"base": big[:10], "history_id": b"h"}


BAD_NAMES = ["", "a b", "1st", "é", "name\n", "a-b", "a.b", "x" * 65, "../up"]
BAD_VALUES: list[Any] = ["text", 1, 1.5, [b"x"], {"b": b"x"}, True]


async def test_bad_names_and_values_raise_and_change_nothing(spec: Spec) -> None:
    async with spec("doc") as store:
        await store.set_attributes({"kept": b"1", "x" * 64: b"longest name allowed"})
        for name in BAD_NAMES:
            with pytest.raises(ValueError, match="invalid attribute name"):
                await store.set_attributes({"good": b"2", name: b"v"})
        for value in BAD_VALUES:
            with pytest.raises(TypeError, match="is bytes"):
                await store.set_attributes({"good": b"2", "bad": value})
        with pytest.raises(TypeError, match="name is a str"):
            await store.set_attributes({b"bytes_name": b"v"})  # type: ignore[dict-item]
        with pytest.raises(TypeError, match="mapping"):
            await store.set_attributes([("good", b"2")])  # type: ignore[arg-type]
        # all or nothing: the good name of a refused call was not stored
        assert await store.get_attributes() == {"kept": b"1", "x" * 64: b"longest name allowed"}


async def test_a_store_not_running_refuses(spec: Spec) -> None:
    store = spec("doc")
    with pytest.raises(RuntimeError, match="not running"):
        await store.get_attributes()
    with pytest.raises(RuntimeError, match="not running"):
        await store.set_attributes({"history_id": b"h"})
    async with store:
        await store.set_attributes({"history_id": b"h"})
    with pytest.raises(RuntimeError, match="not running"):
        await store.get_attributes()


# ---------------------------------------------------------------------- no side effects


async def test_reading_attributes_does_not_move_watch(watching: Spec) -> None:
    """watch() starts after the last load: a read of attributes is not a load."""
    theirs = pycrdt.Doc()
    text = theirs.get("source", type=pycrdt.Text)

    def edit(chunk: str) -> bytes:
        before = theirs.get_state()
        text.insert(len(text), chunk)
        return theirs.get_update(before)

    extra = {"poll_interval": 0.05}
    async with watching("doc", **extra) as mine, watching("doc", **extra) as other:
        await other.write(edit("loaded,"))
        await mine.apply_updates(pycrdt.Doc())
        missed = edit("after the load,")
        await other.write(missed)
        await other.set_attributes({"history_id": b"h"})
        assert await mine.get_attributes() == {"history_id": b"h"}
        got: list[bytes] = []
        with anyio.fail_after(10):
            async for update in mine.watch():
                got.append(update)
                break
    assert got == [missed]


async def test_sqlite_attribute_calls_leave_pending_rows_unfolded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Folding pending rows changes what other readers (and watch()) see: reading or setting
    attributes must not do it. (A load does: the control below.)"""
    monkeypatch.setattr(_sqlite_pending, "FOLD_IDLE", 60.0)  # no idle fold during the test
    db = tmp_path / "y.db"

    def pending_rows() -> int:
        conn = sqlite3.connect(db)
        try:
            return conn.execute("SELECT count(*) FROM ystore_pending").fetchone()[0]
        finally:
            conn.close()

    updates, _ = typed_updates(3)
    async with SQLiteYStore("doc", db_path=str(db)) as store:
        for update in updates:
            await store.write(update)
        assert pending_rows() == 3
        await store.set_attributes({"history_id": b"h"})
        assert await store.get_attributes() == {"history_id": b"h"}
        assert pending_rows() == 3
        await records(store)  # the control: a read of the updates folds them
        assert pending_rows() == 0


# ---------------------------------------------------------------------- SQLite layout


async def test_sqlite_another_connection_sees_and_sets(tmp_path: Path) -> None:
    db = tmp_path / "y.db"
    async with SQLiteYStore("doc", db_path=str(db)) as store:
        await store.set_attributes({"history_id": b"h"})
        conn = sqlite3.connect(db)
        assert conn.execute(
            "SELECT name, value FROM ystore_attributes WHERE path = 'doc'"
        ).fetchall() == [("history_id", b"h")]
        with conn:
            conn.execute("UPDATE ystore_attributes SET value = x'02' WHERE path = 'doc'")
        conn.close()
        assert await store.get_attributes() == {"history_id": b"\x02"}


LEGACY_DATABASES = {
    "ypy_sqlite_v2.db": "notebook:doc-a",
    "pycrdt_sqlite_checkpoints.db": ".notebook:11111111-aaaa.y",
}


@pytest.mark.parametrize("name", list(LEGACY_DATABASES))
async def test_legacy_database_gets_the_table_and_stays_readable_by_its_library(
    legacy_copy: Any, legacy_expected: dict, name: str
) -> None:
    from ypy_websocket.ystore import SQLiteYStore as YpySQLiteYStore

    db = legacy_copy(name)
    key = LEGACY_DATABASES[name]
    want = legacy_expected[name]["docs"][key]
    conn = sqlite3.connect(db)
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert _sqlite_attributes.TABLE not in tables
    async with SQLiteYStore(key, db_path=str(db)) as store:
        await store.set_attributes({"history_id": b"h", "base": b"b" * 100_000})
    async with SQLiteYStore(key, db_path=str(db)) as store:
        assert await store.get_attributes() == {"history_id": b"h", "base": b"b" * 100_000}

    conn = sqlite3.connect(db)  # exactly ypy-websocket's read
    rows = conn.execute(
        "SELECT yupdate, metadata, timestamp FROM yupdates WHERE path = ? ORDER BY timestamp",
        (key,),
    ).fetchall()
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    assert conn.execute(
        f"SELECT count(*) FROM {_sqlite_attributes.TABLE} WHERE path = ?", (key,)
    ).fetchone() == (2,)
    conn.close()
    assert len(rows) == want["updates"]
    doc = pycrdt.Doc()
    doc.apply_update(pycrdt.merge_updates(*[row[0] for row in rows]))
    assert str(doc.get("source", type=pycrdt.Text)) == want["content"]["source"]

    class Reader(YpySQLiteYStore):  # ypy-websocket 0.12.4 itself opens the file
        db_path = str(db)

    reader = Reader(key)
    async with anyio.create_task_group() as tg:  # (its `async with` fails in 0.12.4)
        await tg.start(reader.start)
        read = [record async for record in reader.read()]
        reader.stop()
    assert len(read) == want["updates"]
    # the library did not move it aside as a version mismatch
    assert [p.name for p in db.parent.iterdir() if not p.name.endswith(("-wal", "-shm"))] == [name]


async def test_read_only_legacy_database_reads_empty_and_refuses_a_set(
    legacy_copy: Any, sqlite_read_only: Callable[[Path], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = legacy_copy("ypy_sqlite_v2.db")
    sqlite_read_only(db)
    before = db.read_bytes()  # (out of WAL mode now)
    async with SQLiteYStore("notebook:doc-a", db_path=str(db)) as store:
        assert await store.get_attributes() == {}
        assert len(await records(store)) == 45  # the documents are still there to read
        with pytest.raises(YStorePermissionError, match="read-only and has no ystore_attributes"):
            await store.set_attributes({"history_id": b"h"})
        assert await store.get_attributes() == {}
    monkeypatch.undo()
    assert db.read_bytes() == before


# ---------------------------------------------------------------------- FileYStore layout


async def test_file_sidecar_layout_and_listing(tmp_path: Path) -> None:
    root = tmp_path / "files"
    updates, _ = typed_updates(3)
    async with FileYStore("folder/doc.y", root_dir=str(root)) as store:
        for update in updates:
            await store.write(update)
        log_before = (root / "folder" / "doc.y").read_bytes()
        await store.set_attributes({"history_id": b"h"})
        assert sorted(p.name for p in (root / "folder").iterdir()) == ["doc.y", "doc.y.attrs"]
        assert (root / "folder" / "doc.y").read_bytes() == log_before  # the log is untouched
        assert (root / "folder" / "doc.y.attrs").read_bytes().startswith(_file_attrs.MAGIC)
        listed = await store.list_documents()
        assert [(info.path, info.updates) for info in listed] == [("folder/doc.y", 3)]
        await store.set_attributes({"history_id": None})  # nothing left: no sidecar
        assert sorted(p.name for p in (root / "folder").iterdir()) == ["doc.y"]


async def test_file_attributes_set_before_the_folder_exists(tmp_path: Path) -> None:
    root = tmp_path / "files"
    async with FileYStore("a/b/doc", root_dir=str(root)) as store:
        await store.set_attributes({"history_id": b"h"})
    assert (root / "a" / "b" / "doc.attrs").is_file()
    assert not (root / "a" / "b" / "doc").exists()


async def test_file_leftovers_of_a_crash_mid_set(tmp_path: Path) -> None:
    """A set that crashed left its lock file (empty) or its temporary file: the old value
    is read, nothing is listed, and the next set works."""
    root = tmp_path / "files"
    async with FileYStore("doc", root_dir=str(root)) as store:
        await store.write(typed_updates(1)[0][0])
        (root / "doc.attrs").write_bytes(b"")  # created to lock, crashed before the rename
        (root / ".doc.attrs.999.attrs.tmp").write_bytes(_file_attrs.MAGIC + b"\x05his")
        assert await store.get_attributes() == {}
        assert [info.path for info in await store.list_documents()] == ["doc"]
        await store.set_attributes({"history_id": b"h"})
        assert await store.get_attributes() == {"history_id": b"h"}


async def test_file_damaged_sidecar_is_reported_not_taken_for_empty(tmp_path: Path) -> None:
    root = tmp_path / "files"
    async with FileYStore("doc", root_dir=str(root)) as store:
        await store.set_attributes({"history_id": b"h" * 50})
        sidecar = root / "doc.attrs"
        sidecar.write_bytes(sidecar.read_bytes()[:-10])
        damaged = sidecar.read_bytes()
        with pytest.raises(YStoreError, match="damaged ystore attributes file"):
            await store.get_attributes()
        with pytest.raises(YStoreError, match="damaged ystore attributes file"):
            await store.set_attributes({"base": b"b"})
        assert sidecar.read_bytes() == damaged


async def test_file_a_document_log_named_like_a_sidecar_is_never_overwritten(
    tmp_path: Path,
) -> None:
    root = tmp_path / "files"
    async with FileYStore("doc.attrs", root_dir=str(root)) as other, FileYStore(
        "doc", root_dir=str(root)
    ) as store:
        await other.write(typed_updates(1)[0][0])
        log = (root / "doc.attrs").read_bytes()
        with pytest.raises(YStoreError, match="document log has the name"):
            await store.set_attributes({"history_id": b"h"})
        with pytest.raises(YStoreError, match="document log has the name"):
            await store.get_attributes()
        assert (root / "doc.attrs").read_bytes() == log
        assert len(await records(other)) == 1


async def test_legacy_file_keeps_opening_with_ypy_websocket(legacy_copy: Any) -> None:
    from ypy_websocket.ystore import FileYStore as YpyFileYStore

    log = legacy_copy("ypy_file_v2.y")
    before = log.read_bytes()
    async with FileYStore(log.name, root_dir=str(log.parent)) as store:
        await store.set_attributes({"history_id": b"h"})
        assert [info.path for info in await store.list_documents()] == [log.name]
    assert log.read_bytes() == before
    reader = YpyFileYStore(str(log))  # reading needs no start in 0.12.4
    assert len([record async for record in reader.read()]) == 45
    assert sorted(p.name for p in log.parent.iterdir()) == [log.name, log.name + ".attrs"]


# ---------------------------------------------------------------------- migration


MIGRATIONS = [
    ("sqlite", "postgres"),
    ("postgres", "file"),
    ("file", "sqlite"),
    ("sqlite", "memory"),
]


@pytest.fixture(params=MIGRATIONS, ids=["-".join(kinds) for kinds in MIGRATIONS])
def migration(request: Any, tmp_path: Path) -> tuple[Spec, Spec]:
    """(source, target); made here, not in the test, since probing the PostgreSQL server
    needs no running event loop."""
    source_kind, target_kind = request.param
    return (
        SPECS[source_kind](tmp_path / "source", request),
        SPECS[target_kind](tmp_path / "target", request),
    )


async def test_migration_copies_the_attributes(migration: tuple[Spec, Spec]) -> None:
    source, target = migration
    updates, final = typed_updates(10)
    big = os.urandom(1024 * 1024)
    for path, attributes in {
        "a.ipynb": {"history_id": b"ha", "base": big},
        "folder/b.ipynb": {"history_id": b"hb"},
        "c.txt": {},
    }.items():
        async with source(path) as store:
            for update in updates:
                await store.write(update)
            await store.set_attributes(attributes)
    async with target("a.ipynb") as store:  # replaced on overwrite, stale names included
        await store.write(updates[0])
        await store.set_attributes({"stale": b"x", "history_id": b"old"})
    report = await copy_documents(source, target, overwrite=True, progress=False)
    assert sorted(report.documents) == ["a.ipynb", "c.txt", "folder/b.ipynb"]
    assert report.attributes == 3
    expected = {
        "a.ipynb": {"history_id": b"ha", "base": big},
        "folder/b.ipynb": {"history_id": b"hb"},
        "c.txt": {},
    }
    for path, attributes in expected.items():
        async with target(path) as store:
            assert await store.get_attributes() == attributes
            assert await source_of(store) == final


async def test_migration_checks_the_copied_attributes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = Spec("sqlite", SQLiteYStore, {"db_path": str(tmp_path / "source.db")})
    target = Spec("file", FileYStore, {"root_dir": str(tmp_path / "target")})
    async with source("doc") as store:
        await store.write(typed_updates(1)[0][0])
        await store.set_attributes({"history_id": b"h"})

    async def lossy(self: Any, values: dict[str, bytes | None]) -> None:
        await real(self, {name: b"changed" for name in values})

    real = FileYStore._write_attributes
    monkeypatch.setattr(FileYStore, "_write_attributes", lossy)
    with pytest.raises(ContentMismatch, match="same attributes"):
        await copy_documents(source, target, progress=False)


# ---------------------------------------------------------------------- PostgreSQL layout


def _old_layout(schema: str) -> None:
    """The tables as a jupyter_ystore without attributes made them (layout version 1)."""
    from postgres_helpers import run_sql

    from jupyter_ystore.stores.postgres.names import Names

    names = Names(schema, "yupdates")
    run_sql(*[sql for sql in names.create_statements() if sql != names.create_attributes])


async def test_postgres_tables_of_an_earlier_version_get_the_attributes_table(
    pg_config: dict[str, Any],
) -> None:
    from postgres_helpers import run_sql

    from jupyter_ystore import PostgresYStore

    schema = pg_config["schema"]
    _old_layout(schema)
    async with PostgresYStore("doc", **pg_config) as store:
        await store.write(typed_updates(1)[0][0])
        await store.set_attributes({"history_id": b"h"})
    version = run_sql(f'SELECT version FROM "{schema}"."yupdates_version"')
    assert [tuple(row) for row in version] == [(1,)]  # no layout version bump
    attributes = run_sql(f'SELECT path, name, value FROM "{schema}"."yupdates_attrs"')
    assert [tuple(row) for row in attributes] == [("doc", "history_id", b"h")]


@pytest.fixture
def pg_limited(pg_config: dict[str, Any], request: Any) -> tuple[str, str]:
    """(DSN, role): a role that may use the tables of the test's schema but not create any."""
    import uuid
    from urllib.parse import urlsplit, urlunsplit

    from postgres_helpers import run_sql

    schema = pg_config["schema"]
    role = "ystore_test_role_" + uuid.uuid4().hex[:10]
    try:
        run_sql(f'CREATE ROLE "{role}" LOGIN')
    except Exception as exc:  # the test server's user may not create roles
        pytest.skip(f"needs a PostgreSQL user allowed to CREATE ROLE: {exc}")
    request.addfinalizer(lambda: run_sql(f'DROP OWNED BY "{role}"', f'DROP ROLE "{role}"'))
    _old_layout(schema)
    run_sql(
        f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"',
        f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"',
        f'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA "{schema}" TO "{role}"',
    )
    parts = urlsplit(pg_config["dsn"])
    netloc = role + "@" + parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=netloc)), role


async def test_postgres_without_create_privilege_updates_work_and_a_set_says_why(
    pg_config: dict[str, Any], pg_limited: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    from postgres_helpers import run_sql

    from jupyter_ystore import PostgresYStore
    from jupyter_ystore.stores.postgres.names import Names

    schema = pg_config["schema"]
    dsn, role = pg_limited
    updates, final = typed_updates(3)
    async with PostgresYStore("doc", dsn=dsn, schema=schema) as store:
        for update in updates:
            await store.write(update)
        assert await store.get_attributes() == {}
        with pytest.raises(YStorePermissionError, match="yupdates_attrs table"):
            await store.set_attributes({"history_id": b"h"})
        assert "document attributes cannot be stored" in caplog.text
        assert await source_of(store) == final
        # the owner adds the table: the running store uses it from the next call on
        run_sql(
            Names(schema, "yupdates").create_attributes,
            f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"',
        )
        await store.set_attributes({"history_id": b"h"})
        assert await store.get_attributes() == {"history_id": b"h"}
        await store.delete()
        assert await store.get_attributes() == {}
