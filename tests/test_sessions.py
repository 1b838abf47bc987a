"""Sessions that survive a restart, a crash, offline edits and changes made on disk, through
a real ``jupyter server`` and real websocket clients (issue: closed laptops and `git pull`)."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import anyio
import nbformat
import pytest
from websockets.exceptions import InvalidStatus

from _server_helpers import (
    JupyterServerProcess,
    YClient,
    append,
    read_sources,
    wait_until,
    write_notebook,
    yclient,
)
from jupyter_ystore.server.sessions import history_of

pytestmark = pytest.mark.anyio

CONFIG = {
    "YStoreExtension": {
        "document_save_delay": 0.3,
        "document_cleanup_delay": 0.2,
        "file_poll_interval": 0.2,
    }
}


@pytest.fixture
def server(tmp_path: Path):
    root, home = tmp_path / "root", tmp_path / "home"
    root.mkdir()
    home.mkdir()
    server = JupyterServerProcess(root, home, config=CONFIG)
    yield server
    server.kill()


async def synced(tab: YClient) -> YClient:
    with anyio.fail_after(20):
        await tab.synced.wait()
    return tab


def edit_cell(path: Path, index: int, source: str) -> None:
    """Change one cell of a notebook on disk, as `git pull` or an editor would."""
    nb = nbformat.read(str(path), as_version=4)
    nb.cells[index].source = source
    path.write_text(nbformat.writes(nb), encoding="utf-8")


async def test_a_tab_reconnects_after_a_crash_and_its_offline_edits_merge_once(server) -> None:
    nb_path = server.root / "lab.ipynb"
    write_notebook(nb_path, ["a = 1", "b = 2"])
    server.start()
    session = server.session("lab.ipynb")
    async with yclient(server.room_url(session)) as tab:
        await synced(tab)
        append(tab.document.ycells[0]["source"], "  # before the crash")
        await tab.acknowledged()
        server.kill()  # SIGKILL: nothing saved, nothing said to the tab
    # the laptop goes on offline: edits in two cells, made while nobody listens
    append(tab.document.ycells[0]["source"], "  # offline")
    append(tab.document.ycells[1]["source"], "\nc = 3  # offline")
    expected = ["a = 1  # before the crash  # offline", "b = 2\nc = 3  # offline"]
    assert tab.sources() == expected

    server.start()
    # the same tab, the same session id, a new server process: accepted, not asked to reload
    async with yclient(server.room_url(session), client=tab):
        await synced(tab)
        async with yclient(server.room_url(server.session("lab.ipynb"))) as other:
            await synced(other)
            await wait_until(lambda: other.sources() == expected)
            assert not tab.closed.is_set()
    # exactly once, also when the tab sends its edits again (another reconnect)
    async with yclient(server.room_url(session), client=tab):
        await synced(tab)
        await tab.acknowledged()
        async with yclient(server.room_url(server.session("lab.ipynb"))) as other:
            await synced(other)
            assert other.sources() == expected and tab.sources() == expected
    await wait_until(lambda: read_sources(nb_path) == expected, timeout=20)
    assert "Traceback" not in server.log(), server.log()


async def test_a_tab_whose_history_was_deleted_is_asked_to_reload(server) -> None:
    nb_path = server.root / "gone.ipynb"
    write_notebook(nb_path, ["x = 1"])
    server.start()
    session = server.session("gone.ipynb")
    async with yclient(server.room_url(session)) as tab:
        await synced(tab)
        append(tab.document.ycells[0]["source"], "  # typed")
        await tab.acknowledged()
        await wait_until(lambda: read_sources(nb_path) == ["x = 1  # typed"], timeout=20)
    server.terminate()
    # the document's history is deleted while the server is down
    from jupyter_ystore.stores.sqlite.store import DEFAULT_DB_NAME
    from jupyter_ystore.stores.sqlite.store import SQLiteYStore

    key = f".notebook:{session['fileId']}.y"
    async with SQLiteYStore(key, db_path=str(server.root / DEFAULT_DB_NAME)) as store:
        await store.delete()
    server.start()
    fresh = server.session("gone.ipynb")
    assert history_of(fresh["sessionId"]) != history_of(session["sessionId"])
    async with yclient(server.room_url(session), client=tab) as stale:
        await wait_until(lambda: stale.closed.is_set())
    assert stale.close_code == 1003
    assert json.loads(stale.close_reason)["reason"] == "session_expired"
    with pytest.raises(InvalidStatus) as err:  # its retries are refused at the handshake
        async with yclient(server.room_url(session)):
            pass
    assert err.value.response.status_code == 409
    # a reloaded tab works, and got the content from the file (the history was deleted)
    async with yclient(server.room_url(fresh)) as reloaded:
        with anyio.fail_after(20):
            await reloaded.synced.wait()
        assert reloaded.sources() == ["x = 1  # typed"]


async def test_a_change_on_disk_merges_with_what_two_people_type(server) -> None:
    nb_path = server.root / "pull.ipynb"
    write_notebook(nb_path, ["alpha = 1", "beta = 2", "gamma = 3"])
    server.start()
    async with yclient(server.room_url(server.session("pull.ipynb"))) as alice, yclient(
        server.room_url(server.session("pull.ipynb"))
    ) as bob:
        await synced(alice)
        await synced(bob)
        await wait_until(lambda: read_sources(nb_path) is not None)
        # typed, and not yet saved when the file changes (save delay 0.3 s: type on)
        cell_ids = [cell["id"] for cell in alice.document.get()["cells"]]
        append(alice.document.ycells[0]["source"], "  # alice")
        append(bob.document.ycells[2]["source"], "  # bob")
        await alice.acknowledged()
        await bob.acknowledged()
        updates_before = bob.updates_received
        edit_cell(nb_path, 1, "beta = 20  # from git pull")
        expected = ["alpha = 1  # alice", "beta = 20  # from git pull", "gamma = 3  # bob"]
        await wait_until(lambda: alice.sources() == expected and bob.sources() == expected, timeout=20)
        # cells kept their identity (ids), and the change came as a small update, not a reload
        assert [cell["id"] for cell in bob.document.get()["cells"]] == cell_ids
        assert bob.updates_received - updates_before < 10
        await wait_until(lambda: read_sources(nb_path) == expected, timeout=20)
        # a touch (same bytes, new time) changes nothing
        before = bob.updates_received
        nb_path.write_bytes(nb_path.read_bytes())
        await anyio.sleep(1.0)
        assert bob.sources() == expected
        assert bob.updates_received - before <= 2  # at most the state map's hash
    log = server.log()
    assert "changed on disk while open; merged into the open document" in log, log
    assert "Traceback" not in log, log


async def test_a_crash_then_a_change_on_disk_keeps_both(server) -> None:
    nb_path = server.root / "stash.ipynb"
    write_notebook(nb_path, ["one = 1", "two = 2"])
    server.start()
    session = server.session("stash.ipynb")
    async with yclient(server.room_url(session)) as tab:
        await synced(tab)
        append(tab.document.ycells[0]["source"], "  # typed just before the crash")
        await tab.acknowledged()
        server.kill()
    assert read_sources(nb_path) == ["one = 1", "two = 2"]  # the edit lives only in the store
    edit_cell(nb_path, 1, "two = 22  # git stash pop")  # the file changes before the restart
    server.start()
    expected = ["one = 1  # typed just before the crash", "two = 22  # git stash pop"]
    async with yclient(server.room_url(server.session("stash.ipynb"))) as fresh:
        with anyio.fail_after(20):
            await fresh.synced.wait()
        assert fresh.sources() == expected
    await wait_until(lambda: read_sources(nb_path) == expected, timeout=20)
    log = server.log()
    assert "changed on disk since the last save; merged into the open document" in log, log


SAVE_HOOK = textwrap.dedent(
    '''
    import os
    from tornado.web import HTTPError

    def refuse_if_marked(model, path, contents_manager, **kwargs):
        if os.path.exists(os.path.join(contents_manager.root_dir, ".refuse-saves")):
            raise HTTPError(507, "no space left on device (test)")
    '''
)


async def test_a_failing_save_keeps_the_tab_dirty_says_why_once_and_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "save_hooks.py").write_text(SAVE_HOOK, encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", str(hooks) + (":" + ":".join(sys.path)))
    root, home = tmp_path / "root", tmp_path / "home"
    root.mkdir()
    home.mkdir()
    config = {
        **CONFIG,
        "ContentsManager": {"pre_save_hook": "save_hooks.refuse_if_marked"},
    }
    server = JupyterServerProcess(root, home, config=config)
    nb_path = root / "full.ipynb"
    write_notebook(nb_path, ["data = 1"])
    marker = root / ".refuse-saves"
    server.start()
    try:
        async with yclient(server.room_url(server.session("full.ipynb"))) as tab:
            with anyio.fail_after(20):
                await tab.synced.wait()
            marker.write_text("")
            append(tab.document.ycells[0]["source"], "  # not saved yet")
            tab.document.ystate["dirty"] = True  # what the front end does on an edit
            await tab.acknowledged()
            assert await tab.save() == "failed"
            await anyio.sleep(1.5)  # autosave tries and fails again meanwhile
            assert tab.document.ystate.get("dirty") is True
            assert read_sources(nb_path) == ["data = 1"]
            marker.unlink()
            await wait_until(lambda: read_sources(nb_path) == ["data = 1  # not saved yet"], timeout=20)
            await wait_until(lambda: tab.document.ystate.get("dirty") is False)
    finally:
        server.kill()
    log = server.log()
    assert log.count("cannot save full.ipynb") == 1, log
    assert "full.ipynb saved again" in log, log
