"""Moving every document between stores: SQLite/files -> PostgreSQL -> back, content-equal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pycrdt
import pytest
from postgres_helpers import pg_config  # noqa: F401 (fixture)

from jupyter_ystore import MemoryYStore
from jupyter_ystore.errors import YStoreError
from jupyter_ystore.stores.migrate import (
    ContentMismatch,
    content_signature,
    copy_documents,
    main,
    store_factory,
)
from jupyter_ystore.stores.file.store import FileYStore
from jupyter_ystore.stores.postgres.store import PostgresYStore

pytestmark = pytest.mark.anyio


def notebook_updates(seed: int, n: int = 30) -> list[bytes]:
    """Typing, deleting and map edits: a small document with a history."""
    doc = pycrdt.Doc()
    source = doc.get("source", type=pycrdt.Text)
    meta = doc.get("meta", type=pycrdt.Map)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    for i in range(n):
        source += f"{seed}-{i};"
        if i % 5 == 4:
            del source[0:3]
            meta["step"] = i
    return updates


DOCUMENTS = {
    "a.ipynb": notebook_updates(1),
    "folder/b.ipynb": notebook_updates(2, 50),
    "c.txt": notebook_updates(3, 5),
}


async def fill(factory: Any, documents: dict[str, list[bytes]]) -> None:
    for path, updates in documents.items():
        counter = iter(range(10_000))
        async with factory(path) as store:
            store.metadata_callback = lambda: f"{path}#{next(counter)}".encode()
            for update in updates:
                await store.write(update)


async def records_of(factory: Any, path: str) -> list[tuple[bytes, bytes, float]]:
    async with factory(path) as store:
        return [record async for record in store.read()]


def signature(records: list[tuple[bytes, bytes, float]]) -> tuple[bytes, bytes]:
    return content_signature([record[0] for record in records])


def sqlite_factory(tmp_path: Path, name: str = "y.db") -> Any:
    return store_factory(f"sqlite:{tmp_path / name}")


async def test_sqlite_to_postgres_and_back(tmp_path, pg_config):
    sqlite = sqlite_factory(tmp_path)
    postgres = lambda path: PostgresYStore(path, **pg_config)  # noqa: E731
    await fill(sqlite, DOCUMENTS)
    report = await copy_documents(sqlite, postgres, progress=False)
    assert sorted(report.documents) == sorted(DOCUMENTS)
    assert report.records == sum(map(len, DOCUMENTS.values()))
    for path in DOCUMENTS:
        original = await records_of(sqlite, path)
        copied = await records_of(postgres, path)
        assert signature(copied) == signature(original)
        # import keeps every record: update, metadata and timestamp
        assert copied == original
    back = sqlite_factory(tmp_path, "back.db")
    await copy_documents(postgres, back, progress=False)
    for path, updates in DOCUMENTS.items():
        restored = await records_of(back, path)
        assert signature(restored) == content_signature(updates)
        assert [r[1] for r in restored] == [f"{path}#{i}".encode() for i in range(len(updates))]


async def test_files_to_postgres_after_compaction(tmp_path, pg_config):
    files = lambda path: FileYStore(path, root_dir=str(tmp_path / "files"))  # noqa: E731
    await fill(files, DOCUMENTS)
    async with files("folder/b.ipynb") as store:
        await store.compact()  # a snapshot first, then history: copied as it is
    postgres = lambda path: PostgresYStore(path, **pg_config)  # noqa: E731
    await copy_documents(files, postgres, progress=False)
    for path, updates in DOCUMENTS.items():
        async with postgres(path) as store:
            doc = pycrdt.Doc()
            await store.apply_updates(doc)
        expected = pycrdt.Doc()
        for update in updates:
            expected.apply_update(update)
        assert str(doc.get("source", type=pycrdt.Text)) == str(expected.get("source", type=pycrdt.Text))
        assert doc.get("meta", type=pycrdt.Map).to_py() == expected.get("meta", type=pycrdt.Map).to_py()


async def test_existing_documents_are_not_overwritten_unless_asked(tmp_path, pg_config):
    sqlite = sqlite_factory(tmp_path)
    postgres = lambda path: PostgresYStore(path, **pg_config)  # noqa: E731
    await fill(sqlite, DOCUMENTS)
    await fill(postgres, {"c.txt": notebook_updates(9, 3)})
    with pytest.raises(YStoreError, match="already holds 1 of these documents"):
        await copy_documents(sqlite, postgres, progress=False)
    async with postgres("x") as store:  # nothing was copied
        assert [info.path for info in await store.list_documents()] == ["c.txt"]
    await copy_documents(sqlite, postgres, overwrite=True, progress=False)
    assert signature(await records_of(postgres, "c.txt")) == content_signature(DOCUMENTS["c.txt"])


async def test_a_lossy_copy_is_detected(tmp_path):
    source_cls = type("Source", (MemoryYStore,), {"_documents": {}})

    class Lossy(MemoryYStore):
        _documents: dict = {}
        written = 0

        async def write(self, data: bytes) -> None:
            type(self).written += 1
            if type(self).written != 3:  # silently loses one update
                await super().write(data)

    await fill(source_cls, {"doc": notebook_updates(4, 10)})
    with pytest.raises(ContentMismatch):
        await copy_documents(source_cls, Lossy, progress=False)


async def test_only_named_documents(tmp_path):
    source_cls = type("Source", (MemoryYStore,), {"_documents": {}})
    target_cls = type("Target", (MemoryYStore,), {"_documents": {}})
    await fill(source_cls, DOCUMENTS)
    report = await copy_documents(source_cls, target_cls, paths=["a.ipynb"], progress=False)
    assert report.documents == ["a.ipynb"]
    with pytest.raises(YStoreError, match="not in the source store: nope"):
        await copy_documents(source_cls, target_cls, paths=["nope"], progress=False)


def test_command_line(tmp_path, pg_config, capsys):
    db = tmp_path / "cli.db"
    anyio.run(fill, store_factory(f"sqlite:{db}"), DOCUMENTS)
    argv = ["--from", f"sqlite:{db}", "--to", f"postgres:{pg_config['dsn']}", "--schema", pg_config["schema"]]
    assert main(argv) == 0  # stderr is not a terminal here: no bar
    out, err = capsys.readouterr()
    assert out.strip() == f"copied 3 documents ({sum(map(len, DOCUMENTS.values()))} updates, " + \
        f"{sum(len(u) for us in DOCUMENTS.values() for u in us)} bytes)"
    assert err == ""
    assert main(argv) == 1  # the second run finds them there
    assert "already holds 3" in capsys.readouterr().err


def test_command_line_errors_are_one_line(tmp_path, capsys):
    assert main(["--from", "nope", "--to", "sqlite:x.db"]) == 1
    assert "KIND:WHERE" in capsys.readouterr().err
    db = tmp_path / "cli.db"
    anyio.run(fill, store_factory(f"sqlite:{db}"), {"a": notebook_updates(1, 2)})
    code = main(["--from", f"sqlite:{db}", "--to", "postgres:postgresql://postgres@127.0.0.1:1/x", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("migrate: cannot connect to PostgreSQL at 127.0.0.1:1")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_progress_bar_on_request(tmp_path, capsys):
    source_cls = type("Source", (MemoryYStore,), {"_documents": {}})
    target_cls = type("Target", (MemoryYStore,), {"_documents": {}})
    anyio.run(fill, source_cls, DOCUMENTS)
    anyio.run(lambda: copy_documents(source_cls, target_cls, progress=True))
    err = capsys.readouterr().err
    assert "copying" in err and f"{sum(map(len, DOCUMENTS.values()))}/" in err
