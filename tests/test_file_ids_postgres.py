"""PostgresFileIdManager: jupyter-server-fileid's interface, ids in PostgreSQL.

Two managers in this process stand for two servers: different root paths (symlinks) to one
folder, one database schema. What one does through Jupyter (index, rename, delete) the other
sees; a file renamed on disk is found again by its inode; two servers indexing one new path
at once get one id; ids of a SQLite file-id database are copied so that histories stay.
Also: the cost per call of get_id/get_path/index, printed (they run on the event loop).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import timeit
from pathlib import Path
from typing import Any, Callable

import pytest
from postgres_helpers import pg_config  # noqa: F401  (fixture)
from traitlets.config import Config

from jupyter_ystore import PostgresFileIdManager
from jupyter_ystore.server.fileids import read_sqlite_ids


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    shared = tmp_path / "shared"
    (shared / "sub").mkdir(parents=True)
    (shared / "a.ipynb").write_text("{}")
    (shared / "sub" / "b.ipynb").write_text("{}")
    for name in ("root1", "root2"):
        (tmp_path / name).symlink_to(shared, target_is_directory=True)
    return shared


@pytest.fixture
def managers(tmp_path: Path, folder: Path, pg_config: dict[str, Any]) -> Any:
    made: list[PostgresFileIdManager] = []

    def make(root: str = "root1", **settings: Any) -> PostgresFileIdManager:
        config = Config()
        config.PostgresYStore.dsn = pg_config["dsn"]
        config.PostgresYStore.schema = pg_config["schema"]
        for name, value in settings.items():
            setattr(config.PostgresFileIdManager, name, value)
        manager = PostgresFileIdManager(
            root_dir=str(tmp_path / root), config=config, db_path=str(tmp_path / "ids.db")
        )
        made.append(manager)
        return manager

    yield make
    for manager in made:
        manager.close()


def test_two_servers_with_different_roots_share_ids(managers: Any, folder: Path) -> None:
    one, two = managers("root1"), managers("root2")
    ident = one.index("a.ipynb")
    assert ident is not None
    assert two.index("a.ipynb") == ident  # a round trip finds the other's id
    wait_for(lambda: two.get_id("a.ipynb") == ident)
    assert two.get_path(ident) == "a.ipynb"
    # absolute paths under either form of the root are the same key
    assert one.get_id(str(folder / "a.ipynb")) == ident
    assert one.get_id(os.path.join(one.root_dir, "a.ipynb")) == ident
    assert one.get_id("/tmp/elsewhere.ipynb") is None
    assert one.index("missing.ipynb") is None  # no file, no id
    assert one.get_id("./sub/../a.ipynb") == ident


def test_renames_and_deletes_through_one_server_reach_the_other(managers: Any, folder: Path) -> None:
    one, two = managers("root1"), managers("root2")
    a, b = one.index("a.ipynb"), one.index("sub/b.ipynb")
    os.rename(folder / "a.ipynb", folder / "c.ipynb")
    assert one.move("a.ipynb", "c.ipynb") == a
    wait_for(lambda: two.get_path(a) == "c.ipynb")
    assert two.get_id("a.ipynb") is None and two.get_id("c.ipynb") == a
    # a folder nobody opened: what is below it follows
    os.rename(folder / "sub", folder / "moved")
    one.move("sub", "moved")
    wait_for(lambda: two.get_path(b) == "moved/b.ipynb")
    one.delete("moved")
    wait_for(lambda: two.get_path(b) is None)
    assert two.get_id("moved/b.ipynb") is None
    # a copy is a new file
    (folder / "d.ipynb").write_text("{}")
    copied = two.copy("c.ipynb", "d.ipynb")
    assert copied not in (None, a)
    wait_for(lambda: one.get_id("d.ipynb") == copied)


def test_a_file_renamed_outside_jupyter_keeps_its_id(managers: Any, folder: Path) -> None:
    one, two = managers("root1", verify_interval=0.1), managers("root2", verify_interval=0)
    a, b = one.index("a.ipynb"), one.index("sub/b.ipynb")
    wait_for(lambda: two.get_id("sub/b.ipynb") == b)
    # asked for by its new path (e.g. opened again after `git mv`)
    os.rename(folder / "a.ipynb", folder / "renamed.ipynb")
    assert two.get_id("renamed.ipynb") == a
    wait_for(lambda: one.get_path(a) == "renamed.ipynb")
    # the open document's file moved: found in the background, by inode
    assert one.get_path(b) == "sub/b.ipynb"  # "open": watched
    os.rename(folder / "sub" / "b.ipynb", folder / "b-moved.ipynb")
    wait_for(lambda: two.get_path(b) == "b-moved.ipynb")
    # replaced in place (an editor writing a new file): same path, same id, new inode noted
    (folder / "new.ipynb").write_text("{}")
    os.replace(folder / "new.ipynb", folder / "b-moved.ipynb")
    one.save("b-moved.ipynb")
    assert one.get_id("b-moved.ipynb") == b
    inode = os.lstat(folder / "b-moved.ipynb").st_ino
    wait_for(lambda: two._table.cache.by_id[b].ino == inode)


def test_two_servers_indexing_one_new_path_get_one_id(managers: Any, folder: Path) -> None:
    servers = [managers("root1"), managers("root2"), managers("root1"), managers("root2")]
    for k in range(20):
        (folder / f"n{k}.ipynb").write_text("{}")
    results: dict[tuple[int, int], str | None] = {}
    barrier = threading.Barrier(len(servers))

    def run(i: int) -> None:
        barrier.wait()
        for k in range(20):
            results[i, k] = servers[i].index(f"n{k}.ipynb")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(servers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for k in range(20):
        assert len({results[i, k] for i in range(len(servers))}) == 1, k
        assert results[0, k] is not None


def test_ids_of_a_sqlite_database_are_copied_at_first_start(
    tmp_path: Path, folder: Path, managers: Any
) -> None:
    db = tmp_path / "ids.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE Files (id TEXT PRIMARY KEY, path TEXT NOT NULL UNIQUE)")
    root = str(tmp_path / "root1")
    con.execute("INSERT INTO Files VALUES ('old-a', ?)", (root + "/a.ipynb",))
    con.execute("INSERT INTO Files VALUES ('old-b', ?)", (root + "/sub/b.ipynb",))
    con.execute("INSERT INTO Files VALUES ('elsewhere', '/somewhere/else.ipynb')")
    con.commit()
    con.close()
    assert {r.path for r in read_sqlite_ids(str(db), root)} == {"a.ipynb", "sub/b.ipynb"}
    one = managers("root1")
    assert one.get_id("a.ipynb") == "old-a" and one.get_path("old-b") == "sub/b.ipynb"
    two = managers("root2")  # the table is not empty: nothing copied again
    assert two.get_id("sub/b.ipynb") == "old-b"
    assert len(two._table.cache) == 2


def test_cost_per_call(managers: Any, folder: Path) -> None:
    """get_id/get_path read the local copy (no round trip); index of a new path is one."""
    one, two = managers("root1"), managers("root2")
    ident = one.index("a.ipynb")
    n = 20000
    costs = {
        "get_id": timeit.timeit(lambda: one.get_id("a.ipynb"), number=n) / n,
        "get_path": timeit.timeit(lambda: one.get_path(ident), number=n) / n,
        "index (indexed)": timeit.timeit(lambda: one.index("a.ipynb"), number=n) / n,
    }
    paths = []
    for k in range(200):
        (folder / f"x{k}.ipynb").write_text("{}")
        paths.append(f"x{k}.ipynb")
    started = time.perf_counter()
    for path in paths:
        one.index(path)
    costs["index (new path)"] = (time.perf_counter() - started) / len(paths)
    started = time.perf_counter()
    for k in range(50):
        os.rename(folder / paths[k], folder / f"y{k}.ipynb")
        one.move(paths[k], f"y{k}.ipynb")
    costs["move"] = (time.perf_counter() - started) / 50
    started = time.perf_counter()
    wait_for(lambda: two.get_id("y49.ipynb") is not None)
    print("\nPostgresFileIdManager, µs per call:", {k: round(v * 1e6, 1) for k, v in costs.items()})
    assert costs["get_id"] < 50e-6 and costs["get_path"] < 50e-6


def test_cli_imports_sqlite_ids_and_lists_documents_by_path(
    tmp_path: Path,
    folder: Path,
    pg_config: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """`jupyter ystore file-ids import` copies a LocalFileIdManager database (with a deleted
    file's row at the same path), and `list` then names documents by path from PostgreSQL."""
    import json

    import anyio
    from pycrdt import Doc, Text

    from jupyter_ystore import PostgresYStore
    from jupyter_ystore.cli import main

    for name, value in {
        "JUPYTER_CONFIG_DIR": tmp_path / "config",
        "JUPYTER_DATA_DIR": tmp_path / "data",
        "JUPYTER_RUNTIME_DIR": tmp_path / "runtime",
    }.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.setenv("JUPYTER_CONFIG_PATH", "")
    root = str(tmp_path / "root1")
    db = tmp_path / "local_ids.db"
    con = sqlite3.connect(db)
    con.execute(
        "CREATE TABLE Files (id TEXT PRIMARY KEY NOT NULL, path TEXT NOT NULL, ino INTEGER NOT "
        "NULL UNIQUE, crtime INTEGER, mtime INTEGER NOT NULL, is_dir TINYINT NOT NULL)"
    )
    ino = os.lstat(folder / "a.ipynb").st_ino
    rows = [("gone", f"{root}/a.ipynb", 1), ("live-a", f"{root}/a.ipynb", ino), ("out", "/x/y.ipynb", 2)]
    for ident, path, number in rows:
        con.execute("INSERT INTO Files VALUES (?, ?, ?, NULL, 0, 0)", (ident, path, number))
    con.commit()
    con.close()

    def cli(*args: str) -> tuple[int, str, str]:
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    common = [
        "--ystore-class=PostgresYStore",
        f"--PostgresYStore.dsn={pg_config['dsn']}",
        f"--PostgresYStore.schema={pg_config['schema']}",
        f"--root-dir={root}",
    ]
    code, out, err = cli("file-ids", "import", f"--from={db}", "--json", *common)
    assert code == 0, err
    assert json.loads(out)["copied"] == 1 and json.loads(out)["outside_root"] == 2, out
    code, out, err = cli("file-ids", "import", f"--from={db}", *common)
    assert code == 0 and "copied 0 file ids" in out and "1 already there" in out, (out, err)
    code, out, _ = cli("file-ids", "list", "--json", *common)
    assert json.loads(out) == [{"id": "live-a", "path": "a.ipynb"}]

    async def write_document() -> None:
        doc = Doc()
        updates: list[bytes] = []
        doc.observe(lambda event: updates.append(event.update))
        doc.get("source", type=Text).insert(0, "x")
        async with PostgresYStore(".notebook:live-a.y", **pg_config) as store:
            await store.write(updates[0])

    anyio.run(write_document)
    code, out, err = cli("list", "--json", *common)
    assert code == 0, err
    assert [(d["key"], d["path"]) for d in json.loads(out)] == [(".notebook:live-a.y", "a.ipynb")]
    code, _out, err = cli("file-ids", "export", *common)
    assert code == 2 and "import or list" in err
