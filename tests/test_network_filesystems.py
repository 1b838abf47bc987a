"""Stores on network file systems: found from the mount table, said at start-up in one line,
and SQLite run without WAL there (journal_mode=DELETE, synchronous=FULL).

There is no NFS here: the mount table is injected (``JUPYTER_YSTORE_MOUNTINFO``, a file in
the kernel's mountinfo format that names the test's folder as an NFS or FUSE mount).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from _server_helpers import JupyterServerProcess, write_notebook

from jupyter_ystore import FileYStore, SQLiteYStore
from jupyter_ystore.stores.filesystems import (
    MOUNTINFO_ENV,
    mount_of,
    network_mount,
    network_warning,
    parse_mountinfo,
)

pytestmark = pytest.mark.anyio

LOCAL = "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"


def mountinfo(tmp_path: Path, folder: Path, fs_type: str, source: str = "files:/export") -> Path:
    point = str(folder).replace(" ", "\\040")
    text = LOCAL + f"90 27 0:77 / {point} rw,relatime shared:5 - {fs_type} {source} rw,vers=4.2\n"
    path = tmp_path / "mountinfo"
    path.write_text(text)
    return path


def test_mountinfo_is_parsed_and_the_longest_mount_point_wins(tmp_path: Path) -> None:
    text = (
        LOCAL
        + "50 27 0:50 / /home rw - nfs4 srv:/home rw\n"
        + "51 50 0:51 / /home/a\\040b rw master:1 - fuse.sshfs me@host: rw\n"
        + "52 27 0:52 / /data rw - cifs //nas/data rw\n"
        + "garbage line\n"
    )
    mounts = parse_mountinfo(text)
    assert [m.mount_point for m in mounts] == ["/", "/home", "/home/a b", "/data"]
    assert mount_of("/home/alice/x.db", mounts).fs_type == "nfs4"
    assert mount_of("/home/a b/x.db", mounts).fs_type == "fuse.sshfs"
    assert mount_of("/homework/x.db", mounts).fs_type == "ext4"  # not under /home
    assert network_mount("/data/nb/.jupyter_ystore.db", mounts).fs_type == "cifs"
    assert network_mount("/srv/x.db", mounts) is None
    assert mount_of("/x", []) is None


def test_sqlite_on_nfs_runs_without_wal_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    share = tmp_path / "share"
    share.mkdir()
    monkeypatch.setenv(MOUNTINFO_ENV, str(mountinfo(tmp_path, share, "nfs4")))
    db = share / "sub" / "ystore.db"  # not created yet: its nearest folder decides
    store = SQLiteYStore("doc", db_path=str(db))
    line = network_warning(store)
    assert line is not None and "nfs4 (files:/export on" in line
    assert "journal_mode=DELETE" in line and "PostgresYStore" in line and "db_path" in line
    assert network_warning(SQLiteYStore("doc", db_path=str(tmp_path / "local.db"))) is None
    assert network_warning(SQLiteYStore("doc", db_path=str(share / "w.db"), journal_mode="WAL"))
    assert "forced" in network_warning(SQLiteYStore("doc", db_path=str(share / "w.db"), journal_mode="WAL"))


async def test_the_sqlite_file_on_nfs_is_in_rollback_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pycrdt import Doc, Text

    share = tmp_path / "share"
    share.mkdir()
    monkeypatch.setenv(MOUNTINFO_ENV, str(mountinfo(tmp_path, share, "fuse.sshfs")))
    doc = Doc()
    text = doc.get("t", type=Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    text += "hello"
    for db, mode in ((share / "ystore.db", "delete"), (tmp_path / "local.db", "wal")):
        async with SQLiteYStore("doc", db_path=str(db)) as store:
            await store.write(updates[0])
            con = sqlite3.connect(db)
            assert con.execute("PRAGMA journal_mode").fetchone()[0] == mode
            con.close()
        async with SQLiteYStore("doc", db_path=str(db)) as store:
            assert [u async for u, _m, _t in store.read()] == updates
    assert not (share / "ystore.db-wal").exists()


async def test_a_wal_database_kept_open_elsewhere_stays_wal_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "ystore.db"
    async with SQLiteYStore("doc", db_path=str(db)):
        pass  # a WAL database, as every local store makes
    other = sqlite3.connect(db)  # another process's connection, reading
    other.execute("SELECT count(*) FROM yupdates").fetchone()
    monkeypatch.setenv(MOUNTINFO_ENV, str(mountinfo(tmp_path, tmp_path, "nfs")))
    with caplog.at_level("WARNING"):
        async with SQLiteYStore("doc", db_path=str(db)):
            pass
    other.close()
    assert any("stays in journal_mode=WAL" in r.getMessage() for r in caplog.records), caplog.text


def test_file_store_folder_on_smb_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MOUNTINFO_ENV, str(mountinfo(tmp_path, tmp_path, "cifs", "//nas/home")))
    line = network_warning(FileYStore("doc", root_dir=str(tmp_path / "ystore")))
    assert line is not None and "cifs (//nas/home" in line and "root_dir" in line


@pytest.mark.parametrize("stock_contents", [False, True])
def test_a_server_on_nfs_says_it_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stock_contents: bool) -> None:
    """The store's line; and with jupyter_server's own contents manager configured (ours is
    the default), one for the notebooks."""
    root = tmp_path / "root"
    write_notebook(root / "a.ipynb", ["x = 1"])
    monkeypatch.setenv(MOUNTINFO_ENV, str(mountinfo(tmp_path, root, "nfs4")))
    stock = "jupyter_server.services.contents.largefilemanager.AsyncLargeFileManager"
    config = {"ServerApp": {"contents_manager_class": stock}} if stock_contents else None
    server = JupyterServerProcess(root, tmp_path / "home", config=config)
    try:
        server.start()
        status, _ = server.request("GET", "/api/status")
        assert status == 200
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.terminate()
        server.kill()
    lines = [line for line in server.log().splitlines() if "network file system" in line]
    assert len(lines) == (2 if stock_contents else 1), server.log()
    assert lines[0].startswith("[W ") and "SQLiteYStore.db_path" in lines[0], lines
    assert "PostgresYStore" in lines[0] and "local disk" in lines[0]
    if stock_contents:
        # the notebooks too: their saves' copy and fsync on the loop, and what to do about it
        assert lines[1].startswith("[W ") and "the notebooks" in lines[1] and "nfs4" in lines[1], lines
        assert "OffLoopFileContentsManager" in lines[1]
    else:
        assert "saves do their file writes off the event loop (OffLoopFileContentsManager)" in server.log()
    con = sqlite3.connect(root / ".jupyter_ystore.db")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    con.close()


def test_notebooks_on_a_network_file_system_get_a_hint_unless_saved_off_the_loop(tmp_path: Path) -> None:
    from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager

    from jupyter_ystore import OffLoopFileContentsManager
    from jupyter_ystore.server.offloop_contents import network_contents_hint

    share, local = tmp_path / "share", tmp_path / "local"
    share.mkdir()
    local.mkdir()
    mounts = parse_mountinfo(mountinfo(tmp_path, share, "nfs4").read_text())
    line = network_contents_hint(AsyncLargeFileManager(root_dir=str(share)), mounts)
    assert line is not None and "nfs4 (files:/export on" in line and "AsyncLargeFileManager" in line
    assert "OffLoopFileContentsManager" in line
    assert network_contents_hint(OffLoopFileContentsManager(root_dir=str(share)), mounts) is None
    assert network_contents_hint(AsyncLargeFileManager(root_dir=str(local)), mounts) is None
    assert network_contents_hint(object(), mounts) is None  # (not a file manager: none of ours to say)


def test_notebook_signatures_on_a_network_file_system_get_a_hint_unless_signed_off_the_loop(tmp_path: Path) -> None:
    """Local notebooks, but the notary's database in a home directory on a file server:
    each save and open commits there on the event loop. The hint reads where it is from
    the configuration, without making the notary (whose database would open here)."""
    from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager
    from traitlets.config import Config

    from jupyter_ystore import OffLoopFileContentsManager
    from jupyter_ystore.server.offloop_contents import network_contents_hint

    share, local = tmp_path / "share", tmp_path / "local"
    share.mkdir()
    local.mkdir()
    mounts = parse_mountinfo(mountinfo(tmp_path, share, "nfs4").read_text())
    on_share = Config({"NotebookNotary": {"data_dir": str(share / "jupyter")}})
    manager = AsyncLargeFileManager(root_dir=str(local), config=on_share)
    line = network_contents_hint(manager, mounts)
    assert line is not None and f"notebook signatures ({share / 'jupyter' / 'nbsignatures.db'})" in line
    assert "the notebooks (" not in line and "OffLoopFileContentsManager" in line
    assert not manager.trait_has_value("notary")
    assert network_contents_hint(OffLoopFileContentsManager(root_dir=str(local), config=on_share), mounts) is None
    in_memory = Config({"NotebookNotary": {"db_file": ":memory:"}})
    assert network_contents_hint(AsyncLargeFileManager(root_dir=str(local), config=in_memory), mounts) is None
    both = network_contents_hint(AsyncLargeFileManager(root_dir=str(share), config=on_share), mounts)
    assert both is not None and "the notebooks (" in both and "notebook signatures" in both
