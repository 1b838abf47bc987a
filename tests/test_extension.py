"""The extension as users meet it: listed and enabled, configured by traits, stopped by
SIGTERM promptly, standing aside when jupyter-collaboration's extension is enabled."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import pytest
from traitlets.config import Config

from _server_helpers import JupyterServerProcess, append, read_sources, write_notebook, yclient
from jupyter_ystore import FileYStore, SQLiteYStore
from jupyter_ystore.server.app import YStoreExtension
from pytest_jupyter.jupyter_server import *  # noqa: F403  (fixtures, by name; see _server_helpers)

REPO = Path(__file__).parents[1]

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def jp_server_config(tmp_path: Path) -> Config:
    return Config(
        {
            "ServerApp": {
                "jpserver_extensions": {"jupyter_ystore": True, "jupyter_server_fileid": True}
            },
            "BaseFileIdManager": {"db_path": str(tmp_path / "file_ids.db")},
        }
    )


def _ext(app: Any) -> YStoreExtension:
    return next(iter(app.extension_manager.extension_apps["jupyter_ystore"]))


def test_listed_and_enabled_by_the_shipped_config(tmp_path: Path) -> None:
    """The config file this repository installs as data files enables the extension."""
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"jupyter-config/jupyter_server_config.d" = "etc/jupyter/jupyter_server_config.d"' in pyproject
    config_dir = tmp_path / "config"
    (config_dir / "jupyter_server_config.d").mkdir(parents=True)
    shipped = REPO / "jupyter-config" / "jupyter_server_config.d" / "jupyter_ystore.json"
    shutil.copy(shipped, config_dir / "jupyter_server_config.d" / shipped.name)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(config_dir), JUPYTER_PLATFORM_DIRS="1")
    out = subprocess.run(
        [sys.executable, "-m", "jupyter_server", "extension", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)
    ours = text.split(str(config_dir), 1)[1].split("Config dir:", 1)[0]
    assert "jupyter_ystore enabled" in ours, text
    assert re.search(r"jupyter_ystore [0-9.]+ OK", ours), text


def test_every_trait_has_help_and_sqlite_is_the_default() -> None:
    traits = YStoreExtension.class_own_traits(config=True)
    for name in (
        "ystore_class",
        "document_save_delay",
        "document_cleanup_delay",
        "file_poll_interval",
        "disable_rtc",
    ):
        assert name in traits
        assert len(traits[name].help) > 30, name
    assert YStoreExtension().ystore_class is SQLiteYStore


def test_stores_get_the_default_places_and_the_configured_values(
    jp_configurable_serverapp, jp_root_dir, tmp_path
) -> None:
    app = jp_configurable_serverapp(
        config=Config(
            {
                "ServerApp": {"jpserver_extensions": {"jupyter_ystore": True}},
                "SQLiteYStore": {"document_ttl": 3600.0},
            }
        )
    )
    ext = _ext(app)
    store = ext.create_store("notebook", "abc")
    assert isinstance(store, SQLiteYStore)
    assert store.path == ".notebook:abc.y"  # jupyter-collaboration's key
    assert Path(store.db_path) == Path(app.root_dir) / ".jupyter_ystore.db"
    assert store.document_ttl == 3600.0

    ext.config.SQLiteYStore.db_path = str(tmp_path / "elsewhere.db")
    assert ext.create_store("file", "x").db_path == str(tmp_path / "elsewhere.db")

    ext.ystore_class = FileYStore
    file_store = ext.create_store("notebook", "abc")
    assert Path(file_store.root_dir) == Path(app.root_dir) / ".jupyter_ystore"


@pytest.mark.parametrize(
    "section,value,trait",
    [
        ("ystore_class", "no.such.module.Store", "ystore_class"),
        ("ystore_class", "jupyter_ystore.server.rooms.files.DocumentFile", "ystore_class"),
        ("document_save_delay", -1.0, "document_save_delay"),
        ("file_poll_interval", -5.0, "file_poll_interval"),
    ],
)
def test_a_wrong_setting_stops_start_up_naming_the_trait(
    section, value, trait, jp_configurable_serverapp
) -> None:
    config = Config(
        {
            "ServerApp": {"jpserver_extensions": {"jupyter_ystore": True}},
            "YStoreExtension": {section: value},
        }
    )
    with pytest.raises(SystemExit) as err:
        jp_configurable_serverapp(config=config)
    assert trait in str(err.value.code)


@pytest.mark.parametrize(
    "section,setting,value",
    [("SQLiteYStore", "document_ttl", -5.0), ("SQLiteYStore", "busy_timeout", -1.0)],
)
def test_a_wrong_store_setting_stops_start_up_naming_it(
    section, setting, value, jp_configurable_serverapp
) -> None:
    config = Config(
        {
            "ServerApp": {"jpserver_extensions": {"jupyter_ystore": True}},
            section: {setting: value},
        }
    )
    with pytest.raises(SystemExit) as err:
        jp_configurable_serverapp(config=config)
    assert setting in str(err.value.code)


def test_disable_rtc_reaches_the_page_config(jp_configurable_serverapp) -> None:
    app = jp_configurable_serverapp(
        config=Config(
            {
                "ServerApp": {"jpserver_extensions": {"jupyter_ystore": True}},
                "YStoreExtension": {"disable_rtc": True},
            }
        )
    )
    assert app.web_app.settings["page_config_data"]["disableRTC"] is True


def test_stands_aside_when_jupyter_server_ydoc_is_enabled(
    jp_configurable_serverapp, tmp_path, monkeypatch, capfd
) -> None:
    """A stand-in named jupyter_server_ydoc (the real one is tested in its own venv by
    test_coexist_server_ydoc.py): our endpoints are not registered and one line says why."""
    package = tmp_path / "fake_ext" / "jupyter_server_ydoc"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        textwrap.dedent(
            """
            def _jupyter_server_extension_points():
                return [{"module": "jupyter_server_ydoc"}]

            def _load_jupyter_server_extension(serverapp):
                serverapp.web_app.settings["fake_server_ydoc_loaded"] = True
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path / "fake_ext"))
    app = jp_configurable_serverapp(
        config=Config(
            {
                "ServerApp": {
                    "jpserver_extensions": {"jupyter_ystore": True, "jupyter_server_ydoc": True}
                }
            }
        )
    )
    assert app.web_app.settings.get("fake_server_ydoc_loaded")
    patterns = [rule.matcher.regex.pattern for rule in app.web_app.default_router.rules[0].target.rules]
    assert not any("api/collaboration" in p for p in patterns)
    assert _ext(app).yielded_to_server_ydoc
    # logged while the server initializes (its log is not propagated then): read stderr
    err = capfd.readouterr().err
    assert err.count("registers no endpoint") == 1, err


@pytest.mark.anyio
async def test_sigterm_with_open_sockets_saves_and_exits(tmp_path: Path) -> None:
    root, home = tmp_path / "root", tmp_path / "home"
    write_notebook(root / "open.ipynb", ["a"])
    server = JupyterServerProcess(
        root,
        home,
        config={
            "YStoreExtension": {
                "ystore_class": "jupyter_ystore.stores.sqlite.SQLiteYStore",
                "document_save_delay": None,  # only the shutdown saves
            }
        },
    )
    server.start()
    try:
        session = server.session("open.ipynb")
        async with yclient(server.room_url(session)) as client:
            with anyio.fail_after(20):
                await client.synced.wait()
            append(client.document.ycells[0]["source"], "b")
            await client.acknowledged()
            took = await anyio.to_thread.run_sync(server.terminate)
            with anyio.fail_after(10):
                await client.closed.wait()
        assert client.close_code == 1001
    finally:
        server.kill()
    assert took < 10, server.log()
    assert server.proc is not None and server.proc.returncode == 0, server.log()
    assert read_sources(root / "open.ipynb") == ["ab"]


def test_a_room_manager_that_died_is_started_again(
    jp_serverapp, jp_fetch, jp_root_dir, jp_asyncio_loop, caplog
) -> None:
    write_notebook(jp_root_dir / "again.ipynb", ["x = 1"])
    extension = _ext(jp_serverapp)

    async def scenario() -> None:
        import json

        async def open_session() -> int:
            response = await jp_fetch(
                "api", "collaboration", "session", "again.ipynb",
                method="PUT", body=json.dumps({"format": "json", "type": "notebook"}),
            )
            return response.code

        assert await open_session() in (200, 201)
        manager = extension.manager
        first_stop = manager._stop
        assert first_stop is not None and manager.running
        # the manager ends as a crash would end it (not a shutdown)
        first_stop.set()
        with anyio.fail_after(10):
            while manager._stop is first_stop or not manager.running:
                await anyio.sleep(0.01)
        assert await open_session() == 200  # served by the manager started again
        assert "the room manager stopped unexpectedly; starting it again" in caplog.text

    jp_asyncio_loop.run_until_complete(scenario())


def test_defaults_bound_what_a_client_can_make_the_server_hold() -> None:
    extension = YStoreExtension()
    assert extension.max_message_size == 64 * 1024 * 1024
    assert extension.max_unsent_size >= extension.max_message_size
    assert "64 MiB" in YStoreExtension.class_traits()["max_message_size"].help


@pytest.mark.parametrize("freeze", [True, False])
def test_startup_objects_are_left_out_of_full_collections(tmp_path: Path, freeze: bool) -> None:
    """gc.freeze once started (``freeze_startup_objects``): full collections then walk only
    what the server made since (they stalled the loop 50-120 ms under load)."""
    root, home = tmp_path / "root", tmp_path / "home"
    root.mkdir()
    server = JupyterServerProcess(
        root,
        home,
        config={
            "ServerApp": {"log_level": "DEBUG"},
            "YStoreExtension": {"freeze_startup_objects": freeze},
        },
    )
    server.start()
    try:
        # The extension's start goes on after the server answers: the freeze, then the
        # helper process (its "started" line, at debug level, comes after the freeze).
        deadline = time.monotonic() + 30
        while "squash helper process" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        found = re.search(r"(\d+) objects made at start-up left out of garbage collections", server.log())
        if freeze:
            assert found and int(found.group(1)) > 10_000, server.log()[-2000:]
        else:
            assert found is None
        # the full collections left are timed, either way
        request = urllib.request.Request(
            server.url + "/metrics", headers={"Authorization": f"token {server.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read().decode()
        assert "jupyter_ystore_gc_full_collection_seconds_count " in text
    finally:
        server.kill()


def test_full_collections_are_timed_and_published_from_the_event_loop() -> None:
    """Each full collection's duration is recorded by the collector's callback (in whichever
    thread it runs) and reaches the histogram when ``publish`` runs; only full ones count,
    and installing twice times each collection once."""
    import gc

    from jupyter_ystore.server import gc_pauses

    def observed() -> tuple[float, float]:
        count = gc_pauses.FULL_COLLECTIONS.collect()[0]
        values = {s.name: s.value for s in count.samples}
        return values["jupyter_ystore_gc_full_collection_seconds_count"], values[
            "jupyter_ystore_gc_full_collection_seconds_sum"
        ]

    was_enabled = gc.isenabled()
    gc.disable()  # only the collections this test asks for
    gc_pauses.publish()
    count0, sum0 = observed()
    gc_pauses.time_full_collections()
    gc_pauses.time_full_collections()
    try:
        assert gc.callbacks.count(gc_pauses._on_collection) == 1
        gc.collect(0)
        gc.collect(1)
        gc_pauses.publish()
        assert observed()[0] == count0  # young collections are not full ones
        threading_collect = threading.Thread(target=gc.collect)
        threading_collect.start()
        threading_collect.join()
        gc.collect()
        assert observed()[0] == count0  # recorded, not yet published
        gc_pauses.publish()
        count1, sum1 = observed()
        assert count1 == count0 + 2 and sum1 > sum0
    finally:
        gc.callbacks.remove(gc_pauses._on_collection)
        if was_enabled:
            gc.enable()


@pytest.mark.anyio
@pytest.mark.parametrize("scheduled", [True, False])
async def test_full_collections_wait_for_rooms_to_close(tmp_path: Path, scheduled: bool) -> None:
    """``schedule_full_collections`` (on by default): while a room is open the collector's
    counters start no full collection, and the last room closing starts one at once, with a
    line in the debug log. Off: the collector's own thresholds, and no such line."""
    root, home = tmp_path / "root", tmp_path / "home"
    write_notebook(root / "one.ipynb", ["a"])
    config: dict[str, Any] = {
        "ServerApp": {"log_level": "DEBUG"},
        "YStoreExtension": {"document_cleanup_delay": 0.2, "document_save_delay": 0.2},
    }
    if not scheduled:
        config["YStoreExtension"]["schedule_full_collections"] = False
    server = JupyterServerProcess(root, home, config=config)
    server.start()
    line = re.compile(r"full garbage collection \(1 room\(s\) closed\): \d+ objects freed")
    try:
        session = server.session("one.ipynb")
        async with yclient(server.room_url(session)) as client:
            with anyio.fail_after(20):
                await client.synced.wait()
            append(client.document.ycells[0]["source"], "b")
            await client.acknowledged()
            assert not line.search(server.log())
            assert ("full garbage collections wait for rooms to close" in server.log()) == scheduled
        with anyio.fail_after(15):
            while scheduled and not line.search(server.log()):
                await anyio.sleep(0.05)
        if not scheduled:
            await anyio.sleep(1.0)  # the room closes; no scheduled collection follows
            assert "room(s) closed" not in server.log()
            assert "no client left, closing" in server.log()
    finally:
        server.kill()
    assert read_sources(root / "one.ipynb") == ["ab"]


@pytest.mark.anyio
async def test_a_servers_compactions_run_in_its_helper_process(tmp_path: Path) -> None:
    """While the server runs, a room's automatic compaction squashes and plans its history in
    the helper process (a child of the server), not in a thread that would keep the GIL from
    the event loop; the document comes through it whole."""
    root, home = tmp_path / "root", tmp_path / "home"
    write_notebook(root / "one.ipynb", ["a"])
    db = tmp_path / "y.db"
    config: dict[str, Any] = {
        "ServerApp": {"log_level": "DEBUG"},
        "SQLiteYStore": {"db_path": str(db), "compact_after_updates": 10},
        "YStoreExtension": {"document_cleanup_delay": 0.2, "document_save_delay": 0.2},
    }
    server = JupyterServerProcess(root, home, config=config)
    server.start()
    started = re.compile(r"squash helper process (\d+) started")
    try:
        session = server.session("one.ipynb")
        async with yclient(server.room_url(session)) as client:
            with anyio.fail_after(20):
                await client.synced.wait()
            for letter in "bcdefghijklmnopqrstuvwxyz":
                append(client.document.ycells[0]["source"], letter)
                await client.acknowledged()
            with anyio.fail_after(20):
                while not (found := started.search(server.log())):
                    await anyio.sleep(0.05)
            helper_pid = int(found.group(1))
            stat = Path(f"/proc/{helper_pid}/stat").read_text()
            assert int(stat.rsplit(")", 1)[1].split()[1]) == server.proc.pid  # its parent
        with anyio.fail_after(15):
            while read_sources(root / "one.ipynb") != ["abcdefghijklmnopqrstuvwxyz"]:
                await anyio.sleep(0.05)
    finally:
        server.kill()
    assert "Traceback" not in server.log()
    with closing(sqlite3.connect(db)) as conn:
        (rows,) = conn.execute("SELECT count(*) FROM yupdates").fetchone()
    assert rows < 25  # fewer than the 25 edits written: compacted (a snapshot, then a tail)
