"""Users porting from ypy-websocket 0.12.4, pycrdt-store 0.1.5 and jupyter-server-ydoc 3.x.

Their settings either work here (``squash_after_inactivity_of`` is ``document_ttl``) or are
refused with a message naming what to use instead, set either way those libraries set them:
traitlets config (jupyter-server-ydoc) or a subclass attribute (ypy-websocket, pycrdt-store).
``TempFileYStore.path`` is ``base_dir/name`` as in both libraries; a ``version`` attribute
other than ours is reported. The last part runs the assertions of those libraries' own store
tests against our stores (rewritten here, not copied); where ours differ on purpose, the test
asserts our behaviour and says why (README, "Compatibility").
"""

from __future__ import annotations

import logging
import sqlite3
import time
import zlib
from pathlib import Path
from typing import Any, Callable
from unittest.mock import patch

import anyio
import pycrdt
import pytest
from traitlets import TraitError
from traitlets.config import Application, Config

from jupyter_ystore import (
    BaseYStore,
    FileYStore,
    MemoryYStore,
    SQLiteYStore,
    TempFileYStore,
    YStoreInvalidPath,
    YStoreInvalidUpdate,
)
from jupyter_ystore.stores import upstream_names

pytestmark = pytest.mark.anyio

LOG = logging.getLogger("test_upstream_compat")

REFUSED = {  # pycrdt-store 0.1.5's SQLite settings: a value it acts on, and what we name
    "squash_history_older_than": (86400, "compact_after_updates"),
    "squash_no_more_often_than": (60, "compaction"),
    "checkpoint_interval": (100, "compact_after_updates"),
    "cleanup_when_db_size_above": (100.0, "jupyter ystore compact --all"),
}
OFF_VALUES = {
    "squash_history_older_than": [None],
    "squash_no_more_often_than": [None, 0],
    "checkpoint_interval": [None, 0],
    "cleanup_when_db_size_above": [None, 0],
}


class ConfigApp(Application):
    """Loads jupyter_server_config.py the way the Jupyter server does."""

    name = "jupyter-server"


def from_config_file(folder: Path, lines: str) -> ConfigApp:
    (folder / "jupyter_server_config.py").write_text(lines, encoding="utf-8")
    app = ConfigApp()
    app.load_config_file("jupyter_server_config.py", path=[str(folder)])
    return app


def array_updates(count: int) -> list[bytes]:
    """``count`` incremental updates, each appending its index to the root array "array"."""
    doc = pycrdt.Doc()
    array = doc.get("array", type=pycrdt.Array)
    updates, state = [], None
    for value in range(count):
        array.append(value)
        updates.append(doc.get_update(state))
        state = doc.get_state()
    return updates


async def restored_array(store: BaseYStore) -> list[Any]:
    doc = pycrdt.Doc()
    await store.apply_updates(doc)
    return doc.get("array", type=pycrdt.Array).to_py()


async def records(store: BaseYStore) -> list[tuple[bytes, bytes, float]]:
    return [record async for record in store.read()]


# ---------------------------------------------------------------------- squash_after_inactivity_of

# Every store class with document_ttl, made from (tmp_path, pg settings or None).
TTL_STORES: dict[str, Callable[[Path, Any], tuple[type[BaseYStore], dict[str, Any]]]] = {
    "sqlite": lambda tmp, pg: (SQLiteYStore, {"db_path": str(tmp / "y.db")}),
    "file": lambda tmp, pg: (FileYStore, {"root_dir": str(tmp / "files")}),
    "tempfile": lambda tmp, pg: (
        type("TempForTest", (TempFileYStore,), {"base_dir": str(tmp / "temp")}),
        {},
    ),
    "postgres": lambda tmp, pg: (_postgres_class(), dict(pg)),
}


def _postgres_class() -> type[BaseYStore]:
    from jupyter_ystore import PostgresYStore

    return PostgresYStore


@pytest.fixture(params=list(TTL_STORES))
def ttl_store(request: Any, tmp_path: Path) -> tuple[type[BaseYStore], dict[str, Any]]:
    """A store class with document_ttl and the keyword arguments that place it in tmp_path."""
    pg = None
    if request.param == "postgres":
        from postgres_helpers import fresh_config  # skips without a server

        pg = fresh_config(request)
    return TTL_STORES[request.param](tmp_path, pg)


async def assert_squashes_after(store: BaseYStore, ttl: float) -> None:
    """The seed's squash, as ypy-websocket's and pycrdt-store's tests check it: writes within
    ``ttl`` seconds keep the history; a write after ``ttl`` idle seconds squashes it first."""
    updates = array_updates(4)
    now = time.time()
    async with store:
        for update in updates[:3]:
            with patch("time.time", return_value=now):
                await store.write(update)
        assert len(await records(store)) == 3
        with patch("time.time", return_value=now + ttl + 1):
            await store.write(updates[3])
        stored = await records(store)
        assert len(stored) == 2  # the squashed history, then the new update
        assert stored[1][0] == updates[3]
        assert await restored_array(store) == [0, 1, 2, 3]  # content kept, not emptied


@pytest.mark.parametrize("way", ["config", "config_file", "subclass", "keyword", "before_init"])
async def test_the_alias_squashes_on_every_store_with_document_ttl(
    ttl_store: tuple[type[BaseYStore], dict[str, Any]], way: str, tmp_path: Path
) -> None:
    cls, kwargs = ttl_store
    name = cls.__name__
    if way == "config":
        c = Config()
        c[name].squash_after_inactivity_of = 1000
        store = cls("doc", config=c, **kwargs)
    elif way == "config_file":  # how jupyter-server-ydoc 3.x users configure it
        app = from_config_file(tmp_path, f"c.{name}.squash_after_inactivity_of = 1000\n")
        store = cls("doc", parent=app, **kwargs)
    elif way == "subclass":  # pycrdt-store's way
        store = type("Mine", (cls,), {"squash_after_inactivity_of": 1000})("doc", **kwargs)
    elif way == "keyword":
        store = cls("doc", squash_after_inactivity_of=1000, **kwargs)
    else:  # pycrdt-store's own test subclass assigns it before calling __init__

        class Early(cls):  # type: ignore[valid-type,misc]
            def __init__(self, *args: Any, **kw: Any) -> None:
                self.squash_after_inactivity_of = 1000
                super().__init__(*args, **kw)

        store = Early("doc", **kwargs)
    ttl, alias = store.document_ttl, store.squash_after_inactivity_of  # type: ignore[attr-defined]
    assert ttl == alias == 1000
    await assert_squashes_after(store, 1000)


def store_class(which: str, tmp_path: Path) -> type[BaseYStore]:
    """A store class by name; a TempFileYStore's folder is in tmp_path (none left in /tmp)."""
    if which == "postgres":
        return _postgres_class()
    if which == "tempfile":
        return type("TempForTest", (TempFileYStore,), {"base_dir": str(tmp_path / "temp")})
    return {"memory": MemoryYStore, "file": FileYStore, "sqlite": SQLiteYStore}[which]


@pytest.mark.parametrize("which", ["sqlite", "file", "tempfile", "postgres"])
def test_alias_and_document_ttl_are_one_setting(which: str, tmp_path: Path) -> None:
    cls = store_class(which, tmp_path)
    name = cls.__name__
    # either name reads the value set under the other
    assert cls("doc", document_ttl=30).squash_after_inactivity_of == 30
    assert cls("doc", squash_after_inactivity_of=30).document_ttl == 30
    # the same value under both names is fine
    assert cls("doc", document_ttl=30, squash_after_inactivity_of=30).document_ttl == 30
    # changed later under one name, the other follows
    store = cls("doc", document_ttl=30)
    store.squash_after_inactivity_of = 5
    assert store.document_ttl == 5
    store.document_ttl = None
    assert store.squash_after_inactivity_of is None
    # two different values: an error naming both, whichever way each was set
    both = Config()
    both[name].document_ttl = 60
    both[name].squash_after_inactivity_of = 3600
    alias_only = Config()
    alias_only[name].squash_after_inactivity_of = 3600
    ways: list[Callable[[], Any]] = [
        lambda: cls("doc", config=both),
        lambda: cls("doc", document_ttl=60, squash_after_inactivity_of=3600),
        lambda: type("Both", (cls,), {"document_ttl": 60, "squash_after_inactivity_of": 3600})(
            "doc"
        ),
        lambda: type("Ttl", (cls,), {"document_ttl": 60})("doc", config=alias_only),
    ]
    for make in ways:
        with pytest.raises(TraitError) as info:
            make()
        message = str(info.value)
        assert ".squash_after_inactivity_of = 3600" in message
        assert ".document_ttl = 60" in message and "set only one" in message


@pytest.mark.parametrize("value", [-1, "an hour", float("nan")])
def test_a_bad_alias_value_names_the_alias(value: Any) -> None:
    c = Config()
    c.SQLiteYStore.squash_after_inactivity_of = value
    with pytest.raises(TraitError, match="squash_after_inactivity_of"):
        SQLiteYStore("doc", config=c)
    with pytest.raises(TraitError, match="squash_after_inactivity_of"):
        type("Mine", (SQLiteYStore,), {"squash_after_inactivity_of": value})("doc")


def test_the_alias_and_the_refusals_show_in_help_all() -> None:
    """``--help-all`` prints each class's ``class_get_help()``."""
    for cls in (SQLiteYStore, FileYStore, _postgres_class()):
        text = " ".join(cls.class_get_help().split())  # help text is wrapped
        assert f"--{cls.__name__}.squash_after_inactivity_of=" in text
        assert "Alias of document_ttl" in text
        assert "Alias: squash_after_inactivity_of" in text
    text = SQLiteYStore.class_get_help()
    for name in REFUSED:
        assert f"--SQLiteYStore.{name}=" in text
    assert text.count("Not supported (pycrdt-store 0.1.5") == len(REFUSED)
    # memory keeps nothing: there is no history to squash, and no alias
    assert "squash_after_inactivity_of" not in MemoryYStore.class_get_help()


# ---------------------------------------------------------------------- refused settings


@pytest.mark.parametrize("name", list(REFUSED))
@pytest.mark.parametrize(
    "way", ["config", "config_file", "subclass", "keyword", "before_init", "after_init"]
)
def test_pycrdt_store_settings_are_refused_with_what_to_use(
    name: str, way: str, tmp_path: Path
) -> None:
    value, instead = REFUSED[name]
    with pytest.raises(TraitError) as info:
        if way == "config":
            c = Config()
            c.SQLiteYStore[name] = value
            SQLiteYStore("doc", config=c)
        elif way == "config_file":
            app = from_config_file(tmp_path, f"c.SQLiteYStore.{name} = {value!r}\n")
            SQLiteYStore("doc", parent=app)
        elif way == "subclass":
            type("Mine", (SQLiteYStore,), {name: value})("doc")
        elif way == "keyword":
            SQLiteYStore("doc", **{name: value})
        elif way == "before_init":

            class Early(SQLiteYStore):
                def __init__(self, *args: Any, **kwargs: Any) -> None:
                    setattr(self, name, value)
                    super().__init__(*args, **kwargs)

            Early("doc")
        else:
            setattr(SQLiteYStore("doc"), name, value)
    message = str(info.value)
    assert f".{name} = {value!r} is not supported" in message
    assert instead in message


@pytest.mark.parametrize("name", list(REFUSED))
def test_their_off_values_are_accepted(name: str) -> None:
    for value in OFF_VALUES[name]:
        c = Config()
        c.SQLiteYStore[name] = value
        assert getattr(SQLiteYStore("doc", config=c), name) == value
        type("Mine", (SQLiteYStore,), {name: value})("doc")
        SQLiteYStore("doc", **{name: value})


async def test_compression_callbacks_are_refused(tmp_path: Path) -> None:
    store = SQLiteYStore("doc", db_path=str(tmp_path / "y.db"))
    with pytest.raises(NotImplementedError, match="compression callbacks are not supported"):
        store.register_compression_callbacks(zlib.compress, zlib.decompress)
    with pytest.raises(TraitError, match="compression callbacks"):
        store._compress = zlib.compress
    with pytest.raises(TraitError, match="_decompress"):
        type("Mine", (SQLiteYStore,), {"_decompress": staticmethod(zlib.decompress)})("doc")
    async with store:  # the store is untouched and stores plain updates
        update = array_updates(1)[0]
        await store.write(update)
        assert (await records(store))[0][0] == update


# ---------------------------------------------------------------------- TempFileYStore.path


async def test_temp_file_store_path_is_base_dir_slash_name(tmp_path: Path) -> None:
    class Temp(TempFileYStore):
        prefix_dir = "compat_"

    base = Temp.get_base_dir()
    store = Temp("sub/doc.y")
    assert store.path == str(Path(base) / "sub" / "doc.y")  # as ypy-websocket, pycrdt-store
    assert store.file_path == Path(base) / "sub" / "doc.y"
    async with store:
        await store.write(b"\x00\x00")
    assert Path(store.path).is_file()
    # a store made from another's path (with_path, set_aside) is the same document
    again = Temp(store.path)
    assert again.path == store.path
    async with again:
        assert len(await records(again)) == 1
    assert store.with_path(store.path + ".copy").path == store.path + ".copy"
    # the path may still not leave the folder
    for bad in ("../doc.y", "/elsewhere/doc.y", str(Path(base).parent / "doc.y"), base):
        with pytest.raises(YStoreInvalidPath):
            Temp(bad)
    # FileYStore keeps its own rule: relative to root_dir when set, as given otherwise
    root = tmp_path / "root"
    assert FileYStore("sub/doc.y", root_dir=str(root)).path == "sub/doc.y"
    assert FileYStore(str(tmp_path / "x.y")).path == str(tmp_path / "x.y")


# ---------------------------------------------------------------------- version


@pytest.mark.parametrize("which", ["memory", "file", "tempfile", "sqlite", "postgres"])
def test_a_version_attribute_other_than_ours_is_reported_once(
    which: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cls = store_class(which, tmp_path)
    caplog.set_level(logging.WARNING, logger=LOG.name)
    mine = type("Versioned", (cls,), {"version": 3})
    mine("a", log=LOG)
    mine("b", log=LOG)
    warnings = [r.getMessage() for r in caplog.records if "version" in r.getMessage()]
    assert len(warnings) == 1
    assert "YStore version mismatch ignored: Versioned.version = 3" in warnings[0]
    assert "format version 2" in warnings[0]
    caplog.clear()
    type("Ours", (cls,), {"version": 2})("a", log=LOG)
    # the store's own log (another test's leftover background task may log meanwhile)
    assert not [r for r in caplog.records if r.name == LOG.name]


async def test_our_format_is_kept_whatever_version_says(tmp_path: Path) -> None:
    class Versioned(FileYStore):
        version = 3

    class VersionedSQLite(SQLiteYStore):
        version = 3
        db_path = str(tmp_path / "y.db")

    async with Versioned(str(tmp_path / "doc.y"), log=LOG) as store:
        await store.write(b"\x00\x00")
    assert (tmp_path / "doc.y").read_bytes().startswith(b"VERSION:2\n")
    async with VersionedSQLite("doc", log=LOG) as store:
        await store.write(b"\x00\x00")
    with sqlite3.connect(tmp_path / "y.db") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2


# ---------------------------------------------------------------------- their tests, our stores
#
# The assertions of ypy-websocket 0.12.4's tests/test_ystore.py and pycrdt-store 0.1.5's
# tests/test_store.py, rewritten. Differences kept on purpose:
# - they write b"foo", b"bar"...: every store of ours refuses bytes that are not a Yjs update
#   (YStoreInvalidUpdate), so real updates are written instead;
# - ypy-websocket's `await store.start()` returns once the store is ready; ours (like
#   pycrdt-store's) runs until stop(): the start/stop API is used through a task group;
# - they count rows of `yupdates` directly; ours commit first into `ystore_pending`, moved
#   into `yupdates` once writes pause (0.25 s) and on close, so counts go through read();
# - pycrdt-store's checkpoints, history pruning, size cleanup and compression are refused.


class MetadataCounter:
    """An async metadata callback returning b"0", b"1", ... (as their tests use)."""

    def __init__(self) -> None:
        self.count = 0

    async def __call__(self) -> bytes:
        value = str(self.count).encode()
        self.count += 1
        return value


class StartStop:
    """pycrdt-store's second API: ``task_group.start(store.start)`` ... ``await store.stop()``."""

    def __init__(self, store: BaseYStore, task_group: Any) -> None:
        self.store, self.task_group = store, task_group

    async def __aenter__(self) -> BaseYStore:
        await self.task_group.start(self.store.start)
        await self.store.started.wait()
        return self.store

    async def __aexit__(self, *exc: Any) -> None:
        await self.store.stop()


def ported_sqlite(db_path: str) -> type[SQLiteYStore]:
    """pycrdt-store's test subclass: settings assigned before ``__init__``."""

    class PortedSQLiteYStore(SQLiteYStore):
        def __init__(
            self,
            *args: Any,
            checkpoint_interval: int | None = None,
            squash_after_inactivity_of: int | None = 1000,
            **kwargs: Any,
        ) -> None:
            self.db_path = db_path
            self.checkpoint_interval = checkpoint_interval
            self.squash_after_inactivity_of = squash_after_inactivity_of
            super().__init__(*args, **kwargs)

    return PortedSQLiteYStore


def ported_temp(base: Path) -> type[TempFileYStore]:
    return type("PortedTempFileYStore", (TempFileYStore,), {"base_dir": str(base)})


@pytest.mark.parametrize("kind", ["tempfile", "sqlite"])
@pytest.mark.parametrize("api", ["context_manager", "start_stop"])
async def test_their_ystore_test(kind: str, api: str, tmp_path: Path) -> None:
    name = f"my_store_with_api_{api}"
    if kind == "sqlite":
        cls: type[BaseYStore] = ported_sqlite(str(tmp_path / "sql" / "ystore.db"))
    else:
        cls = ported_temp(tmp_path / "temp")
    data = array_updates(3)
    async with anyio.create_task_group() as tg:
        store = cls(name, metadata_callback=MetadataCounter())
        with pytest.raises(YStoreInvalidUpdate):  # their data: b"foo"
            async with store:
                await store.write(b"foo")
        manager = StartStop(store, tg) if api == "start_stop" else store
        async with manager as running:
            for update in data:
                await running.write(update)
            if kind == "tempfile":
                base = Path(running.base_dir)  # type: ignore[attr-defined]
                assert (base / name).exists()
                assert running.path == str(base / name)
            else:
                assert Path(running.db_path).exists()  # type: ignore[attr-defined]
            stored = await records(running)
            assert [r[0] for r in stored] == data
            assert [r[1] for r in stored] == [b"0", b"1", b"2"]


@pytest.mark.parametrize("setting", ["document_ttl", "squash_after_inactivity_of"])
async def test_their_squash_test(setting: str, tmp_path: Path) -> None:
    """ypy-websocket's document_ttl test and pycrdt-store's squash_after_inactivity_of one."""
    db_path = str(tmp_path / "ystore.db")
    if setting == "document_ttl":  # ypy-websocket's way: a class attribute
        store: SQLiteYStore = type(
            "MySQLiteYStore", (SQLiteYStore,), {"db_path": db_path, "document_ttl": 1000}
        )("my_store")
    else:
        store = ported_sqlite(db_path)("my_store")
    ttl = getattr(store, setting)
    assert ttl == 1000
    await assert_squashes_after(store, ttl)
    with sqlite3.connect(db_path) as conn:  # closed: every row is in yupdates
        assert conn.execute("SELECT count(*) FROM yupdates").fetchone()[0] == 2


async def test_their_in_memory_test() -> None:
    class InMemorySQLiteYStore(SQLiteYStore):
        db_path = ":memory:"
        squash_after_inactivity_of = None

    data = array_updates(3)
    async with InMemorySQLiteYStore("in_memory_test_store") as store:
        for update in data:
            await store.write(update)
        assert [r[0] for r in await records(store)] == data


async def test_their_checkpoint_test_without_checkpoints(tmp_path: Path) -> None:
    """pycrdt-store's checkpoint test measures speed; what it checks about content holds with
    checkpoints off and our compaction (the setting that replaces them) on."""
    with pytest.raises(TraitError, match="compact_after_updates"):
        ported_sqlite(str(tmp_path / "a.db"))("checkpoint_test_store", checkpoint_interval=100)
    cls = ported_sqlite(str(tmp_path / "b.db"))
    store = cls(
        "checkpoint_test_store",
        checkpoint_interval=None,
        squash_after_inactivity_of=None,
        compact_after_updates=100,
    )
    async with store:
        for update in array_updates(1000):
            await store.write(update)
        assert await restored_array(store) == list(range(1000))


@pytest.mark.parametrize("cls", ["tempfile", "sqlite"])
async def test_their_version_test(
    cls: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """They set ``YStore.version = -1`` and expect "YStore version mismatch" in the log (and
    the file moved aside); ours says the same words, keeps the file and stores on."""
    caplog.set_level(logging.WARNING, logger=LOG.name)
    store_cls: type[BaseYStore] = (
        ported_temp(tmp_path / "temp")
        if cls == "tempfile"
        else ported_sqlite(str(tmp_path / "y.db"))
    )
    updates = array_updates(3)
    async with store_cls("my_store", log=LOG) as store:
        await store.write(updates[0])
    store_cls.version = -1
    async with store_cls("my_store", log=LOG) as store:
        await store.write(updates[1])
    assert "YStore version mismatch" in caplog.text
    store_cls.version = 2
    async with store_cls("my_store", log=LOG) as store:
        await store.write(updates[2])
        assert await restored_array(store) == [0, 1, 2]  # nothing was moved aside
