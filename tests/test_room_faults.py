"""Rooms that a store outage, a damaged history, a bad client or a slow one cannot break,
through a real ``jupyter server`` and real websocket clients."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

import anyio
import pycrdt
import pytest
from jupyter_ydoc import YNotebook

from _server_helpers import (
    JupyterServerProcess,
    YClient,
    append,
    read_sources,
    wait_until,
    write_notebook,
    yclient,
)
from jupyter_ystore.server import protocol as sync
from jupyter_ystore.stores.sqlite.store import DEFAULT_DB_NAME
from jupyter_ystore.stores.sqlite.store import SQLiteYStore

pytestmark = pytest.mark.anyio

CONFIG = {
    "YStoreExtension": {
        "document_save_delay": 0.3,
        "document_cleanup_delay": 0.3,
        "file_poll_interval": 0.2,
    },
    "SQLiteYStore": {"busy_timeout": 0.2},
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


def spill_files(server: JupyterServerProcess) -> list[Path]:
    folder = server.home / "data" / "jupyter_ystore" / "spill"
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def metric(server: JupyterServerProcess, name: str) -> float | None:
    request = urllib.request.Request(
        server.url + "/metrics", headers={"Authorization": f"token {server.token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return None


async def stored(server: JupyterServerProcess, file_id: str) -> tuple[int, dict | None]:
    """(records, content) stored for a notebook, read like another process would."""
    store = SQLiteYStore(f".notebook:{file_id}.y", db_path=str(server.root / DEFAULT_DB_NAME))
    async with store:
        try:
            records = [record async for record in store.read()]
        except Exception:
            return 0, None
        doc = pycrdt.Doc()
        await store.apply_updates(doc)
    return len(records), YNotebook(doc).get()


class Lock:
    """Another process holding the SQLite database's write lock (a long job, a stuck CLI)."""

    def __init__(self, db: Path) -> None:
        self.conn = sqlite3.connect(db, timeout=10, isolation_level=None)

    def __enter__(self) -> Lock:
        self.conn.execute("BEGIN EXCLUSIVE")
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.execute("ROLLBACK")
        self.conn.close()


async def test_a_store_outage_spills_saves_the_file_and_writes_everything_back(server) -> None:
    nb_path = server.root / "busy.ipynb"
    write_notebook(nb_path, ["x = 1"])
    server.start()
    session = server.session("busy.ipynb")
    async with yclient(server.room_url(session)) as alice, yclient(server.room_url(session)) as bob:
        await synced(alice)
        await synced(bob)
        await alice.acknowledged()
        with Lock(server.root / DEFAULT_DB_NAME):
            append(alice.document.ycells[0]["source"], "  # during the outage")
            await alice.acknowledged()  # answered: the change is durable in the spill file
            await wait_until(lambda: bob.sources() == ["x = 1  # during the outage"])
            assert await bob.save() == "success"  # saving never waits for the failing store
            assert read_sources(nb_path) == ["x = 1  # during the outage"]
            assert spill_files(server)
            assert metric(server, "jupyter_ystore_rooms_in_outage") == 1.0
        await wait_until(lambda: not spill_files(server), timeout=20)
        _count, content = await stored(server, session["fileId"])
        assert content is not None and content["cells"][0]["source"] == "x = 1  # during the outage"
        assert metric(server, "jupyter_ystore_rooms_in_outage") == 0.0
        assert (metric(server, "jupyter_ystore_spilled_updates_total") or 0) >= 1
        # the event loop's longest pause is measured (and it never stalled for seconds)
        lag = metric(server, "jupyter_ystore_event_loop_lag_max_seconds")
        assert lag is not None and 0 <= lag < 5
    log = server.log()
    assert log.count("writing to the store failed") == 1, log
    assert "the store accepts writes again" in log, log


async def test_spilled_changes_outlive_the_room_and_a_crash(server) -> None:
    nb_path = server.root / "crash.ipynb"
    write_notebook(nb_path, ["y = 1"])
    server.start()
    session = server.session("crash.ipynb")
    with Lock(server.root / DEFAULT_DB_NAME):
        async with yclient(server.room_url(session)) as tab:
            await synced(tab)
            append(tab.document.ycells[0]["source"], "  # spilled")
            await tab.acknowledged()
        # the last client left: the room closes during the outage, then the server dies
        await wait_until(lambda: "closing while its store fails" in server.log(), timeout=20)
        server.kill()
        assert spill_files(server)
    server.start()
    await wait_until(lambda: not spill_files(server), timeout=20)  # written back at start-up
    _count, content = await stored(server, session["fileId"])
    assert content is not None and content["cells"][0]["source"] == "y = 1  # spilled"
    async with yclient(server.room_url(server.session("crash.ipynb"))) as tab:
        await synced(tab)
        assert tab.sources() == ["y = 1  # spilled"]


async def test_a_history_deleted_under_an_open_room_is_set_aside_not_trusted(server) -> None:
    nb_path = server.root / "holes.ipynb"
    write_notebook(nb_path, ["keep = 1"])
    server.start()
    session = server.session("holes.ipynb")
    key = f".notebook:{session['fileId']}.y"
    db = server.root / DEFAULT_DB_NAME
    async with yclient(server.room_url(session)) as tab:
        await synced(tab)
        append(tab.document.ycells[0]["source"], "  # one")
        await tab.acknowledged()
        async with SQLiteYStore(key, db_path=str(db)) as store:  # `jupyter ystore delete`
            await store.delete()
        append(tab.document.ycells[0]["source"], "  # two")  # appended on top of nothing
        await tab.acknowledged()
        await wait_until(lambda: read_sources(nb_path) == ["keep = 1  # one  # two"], timeout=20)
    await wait_until(lambda: "no client left, closing" in server.log(), timeout=20)
    async with yclient(server.room_url(server.session("holes.ipynb"))) as tab:
        await synced(tab)
        assert tab.sources() == ["keep = 1  # one  # two"]  # from the file, not the holes
    assert read_sources(nb_path) == ["keep = 1  # one  # two"]  # never overwritten with less
    log = server.log()
    assert "cannot be trusted: updates of client" in log, log
    aside = [line for line in log.splitlines() if "set aside as" in line]
    assert len(aside) == 1, log
    listing = subprocess.run(
        [sys.executable, "-m", "jupyter_ystore.cli", "list", "--json", f"--SQLiteYStore.db_path={db}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    keys = [entry["key"] for entry in json.loads(listing.stdout)]
    assert any(k.startswith(key + ".aside-") for k in keys), keys


async def test_bad_frames_disconnect_only_their_sender_and_every_room_goes_on(server) -> None:
    for name in ("one.ipynb", "two.ipynb"):
        write_notebook(server.root / name, [f"# {name}"])
    server.start()
    one = server.session("one.ipynb")
    async with yclient(server.room_url(one)) as good, yclient(server.room_url(one)) as bad:
        await synced(good)
        await synced(bad)
        before, _ = await stored(server, one["fileId"])
        # the two frames of the issue, back to back (one batch for the old writer)
        for frame in ("0002130101eba28b9de48ba40100a2002200025a4800", "0002130101eba28b9de48ba40200a2002200025a4800"):
            await bad.send(bytes.fromhex(frame))
        await wait_until(lambda: bad.closed.is_set())
        assert bad.close_code == 1003
        append(good.document.ycells[0]["source"], "\nok = True")
        await good.acknowledged()
        after, content = await stored(server, one["fileId"])
        assert after == before + 1 and content is not None
        assert content["cells"][0]["source"] == "# one.ipynb\nok = True"
    async with yclient(server.room_url(server.session("two.ipynb"))) as other:
        await synced(other)  # the room manager is alive: another notebook opens
        assert other.sources() == ["# two.ipynb"]
    log = server.log()
    assert "refused, disconnecting it" in log and "Traceback" not in log, log
    assert "websocket_ping_timeout" not in log, log  # no warning at every connection


async def test_another_format_of_the_same_notebook_is_refused(server) -> None:
    write_notebook(server.root / "same.ipynb", ["z = 1"])
    server.start()
    session = server.session("same.ipynb")
    alias = dict(session, format="text")
    async with yclient(server.room_url(alias)) as client:
        await wait_until(lambda: client.closed.is_set())
    assert client.close_code == 4400
    status, _ = server.request("GET", "/api/collaboration/timeline/same.ipynb?format=text&type=notebook")
    assert status == 400


async def test_a_room_opened_by_the_timeline_closes_when_unused(server) -> None:
    write_notebook(server.root / "hist.ipynb", ["h = 1"])
    server.start()
    status, timeline = server.request("GET", "/api/collaboration/timeline/hist.ipynb?format=json&type=notebook")
    assert status == 200, timeline
    await wait_until(lambda: "no client left, closing" in server.log(), timeout=20)
    # (the gauge drops once the room has saved and stopped its store)
    await wait_until(lambda: metric(server, 'jupyter_ystore_open_rooms{kind="document"}') in (None, 0.0))


async def test_a_client_cannot_touch_another_users_awareness(tmp_path: Path) -> None:
    root, home = tmp_path / "root", tmp_path / "home"
    root.mkdir()
    home.mkdir()
    write_notebook(root / "aw.ipynb", ["a = 1"])
    server = JupyterServerProcess(root, home, config=CONFIG)
    server.start()
    try:
        session = server.session("aw.ipynb")
        async with yclient(server.room_url(session)) as alice:
            await synced(alice)
            await alice.send_awareness({"user": {"name": "alice"}})
            async with yclient(server.room_url(session)) as watcher:
                await synced(watcher)
                await wait_until(lambda: alice.ydoc.client_id in watcher.awareness.states)
                # the same user may take an id over (a reload); another may not: that needs
                # a second identity, so remove alice's state as a forged frame of hers would
                # only be refused for another user. Here: more ids than a tab ever uses.
                forger = YClient()
                forger.username = "mallory"
                async with yclient(server.room_url(session), client=forger):
                    await synced(forger)
                    for fake_id in range(100, 112):
                        other = pycrdt.Awareness(pycrdt.Doc(client_id=fake_id))
                        other.set_local_state({"user": {"name": f"fake {fake_id}"}})
                        await forger.send(sync.awareness_message(other, [fake_id]))
                    await wait_until(lambda: forger.closed.is_set())
                assert forger.close_code == 1002
                assert "awareness ids" in forger.close_reason
                assert watcher.awareness.states.get(alice.ydoc.client_id, {}).get("user") == {"name": "alice"}
    finally:
        server.kill()


async def test_a_client_that_stops_reading_is_disconnected(tmp_path: Path) -> None:
    root, home = tmp_path / "root", tmp_path / "home"
    root.mkdir()
    home.mkdir()
    write_notebook(root / "big.ipynb", ["b = 1"])
    config = {
        **CONFIG,
        "YStoreExtension": {**CONFIG["YStoreExtension"], "max_unsent_size": 256 * 1024},
        # 20 MB of appends: with compaction every 1 MB, squashing a document of many MB
        # under busy_timeout=0.2 can hold the writer's acknowledgement past its 10 s; this
        # test is about the reader, so the store only appends.
        "SQLiteYStore": {**CONFIG["SQLiteYStore"], "compact_after_updates": 0, "compact_after_bytes": 0},
    }
    server = JupyterServerProcess(root, home, config=config)
    server.start()
    try:
        session = server.session("big.ipynb")
        from websockets.asyncio.client import connect

        async with yclient(server.room_url(session)) as writer:
            await synced(writer)
            # a peer that connects and then never reads (its socket buffers fill up)
            async with connect(server.room_url(session), max_queue=1, max_size=None) as stalled:
                for _ in range(40):
                    append(writer.document.ycells[0]["source"], "x" * 500_000)
                    await writer.acknowledged(timeout=30)  # a save of many MB may be under way
                    if "reads too slowly" in server.log():
                        break
                await wait_until(lambda: "reads too slowly" in server.log(), timeout=30)
                del stalled
            await writer.acknowledged(timeout=30)  # the room and the writer go on
    finally:
        server.kill()
