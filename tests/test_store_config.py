"""The stores are traitlets configurables: Jupyter config files, Config objects and the seed's
subclass attributes all take effect, and bad values are refused naming the trait."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from traitlets import TraitError
from traitlets.config import Application, Config

from jupyter_ystore import FileYStore, TempFileYStore, YStoreError

pytestmark = pytest.mark.anyio


class ConfigApp(Application):
    """Stands in for the Jupyter server: loads jupyter_server_config.py like it does."""

    name = "jupyter-server"


def load_config_file(folder: Path, text: str) -> ConfigApp:
    (folder / "jupyter_server_config.py").write_text(text, encoding="utf-8")
    app = ConfigApp()
    app.load_config_file("jupyter_server_config.py", path=[str(folder)])
    return app


def sqlite_rows(db: Path) -> int:
    """Rows stored for all documents, counted by reading the database file ourselves."""
    with sqlite3.connect(db) as conn:
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        assert "yupdates" in tables
        return conn.execute("SELECT count(*) FROM yupdates").fetchone()[0]


# ---------------------------------------------------------------------- FileYStore


async def test_file_root_dir_from_a_config_object(tmp_path: Path) -> None:
    c = Config()
    c.FileYStore.root_dir = str(tmp_path / "configured")
    async with FileYStore("sub/doc.y", config=c) as store:
        await store.write(b"\x00\x00")
    assert (tmp_path / "configured" / "sub" / "doc.y").is_file()


async def test_file_traits_from_jupyter_server_config_py(tmp_path: Path) -> None:
    root = tmp_path / "from-file"
    app = load_config_file(
        tmp_path, f"c.FileYStore.root_dir = {str(root)!r}\nc.FileYStore.document_ttl = 30\n"
    )
    store = FileYStore("doc.y", parent=app)
    assert (store.root_dir, store.document_ttl) == (str(root), 30.0)
    async with store:
        await store.write(b"\x00\x00")
    assert (root / "doc.y").is_file()
    # a subclass inherits the configuration of its parent class
    assert TempFileYStore("doc.y", parent=app).document_ttl == 30.0


async def test_file_store_subclass_attributes_keep_working(tmp_path: Path) -> None:
    class MyStore(FileYStore):
        root_dir = str(tmp_path / "by-subclass")

    async with MyStore("doc.y") as store:
        await store.write(b"\x00\x00")
    assert (tmp_path / "by-subclass" / "doc.y").is_file()


@pytest.mark.parametrize(
    "trait,value",
    [
        ("root_dir", ""),
        ("root_dir", "bad\x00dir"),
        ("root_dir", "FILE/below-a-file"),
        ("document_ttl", -1),
        ("document_ttl", "soon"),
        ("document_ttl", float("nan")),
    ],
)
def test_bad_file_store_values_name_the_trait(tmp_path: Path, trait: str, value: Any) -> None:
    (tmp_path / "FILE").write_text("a file, not a folder")
    if isinstance(value, str):
        value = value.replace("FILE", str(tmp_path / "FILE"))
    c = Config()
    setattr(c.FileYStore, trait, value)
    with pytest.raises(TraitError, match=trait):
        FileYStore("doc.y", config=c)


# ---------------------------------------------------------------------- SQLiteYStore


def sqlite_class() -> Any:
    from jupyter_ystore import SQLiteYStore

    return SQLiteYStore


async def test_sqlite_traits_from_a_config_object(tmp_path: Path) -> None:
    SQLiteYStore = sqlite_class()
    db = tmp_path / "configured.db"
    c = Config()
    c.SQLiteYStore.db_path = str(db)
    c.SQLiteYStore.document_ttl = 3600
    store = SQLiteYStore("doc", config=c)
    assert (store.db_path, store.document_ttl) == (str(db), 3600)
    async with store:
        await store.write(b"\x00\x00")
    assert sqlite_rows(db) == 1


async def test_sqlite_traits_from_jupyter_server_config_py(tmp_path: Path) -> None:
    SQLiteYStore = sqlite_class()
    db = tmp_path / "nested" / "from-file.db"
    app = load_config_file(
        tmp_path, f"c.SQLiteYStore.db_path = {str(db)!r}\nc.SQLiteYStore.document_ttl = 120\n"
    )
    store = SQLiteYStore("doc", parent=app)
    assert (store.db_path, store.document_ttl) == (str(db), 120)
    async with store:
        await store.write(b"\x00\x00")
        await store.write(b"\x00\x00")
    assert sqlite_rows(db) == 2


async def test_sqlite_seed_subclass_attributes_keep_working(tmp_path: Path) -> None:
    SQLiteYStore = sqlite_class()
    db = tmp_path / "by-subclass.db"

    class MyStore(SQLiteYStore):
        db_path = str(db)
        document_ttl = 1000

    store = MyStore("doc")
    assert (store.db_path, store.document_ttl) == (str(db), 1000)
    async with store:
        await store.write(b"\x00\x00")
    assert sqlite_rows(db) == 1


@pytest.mark.parametrize("value", [-1, -0.5, "an hour"])
def test_bad_sqlite_ttl_names_the_trait(value: Any) -> None:
    SQLiteYStore = sqlite_class()
    c = Config()
    c.SQLiteYStore.document_ttl = value
    with pytest.raises(TraitError, match="document_ttl"):
        SQLiteYStore("doc", config=c)


async def test_sqlite_db_path_that_cannot_be_made_names_the_trait(tmp_path: Path) -> None:
    SQLiteYStore = sqlite_class()
    (tmp_path / "FILE").write_text("a file, not a folder")
    c = Config()
    c.SQLiteYStore.db_path = str(tmp_path / "FILE" / "sub" / "y.db")
    # refused when configured, or at the latest when the store starts; never silently
    with pytest.raises((TraitError, YStoreError), match="db_path"):
        store = SQLiteYStore("doc", config=c)
        async with store:
            await store.write(b"\x00\x00")
    assert (tmp_path / "FILE").read_text() == "a file, not a folder"
