"""Living beside jupyter-collaboration's server extension (jupyter_server_ydoc).

This module needs jupyter-server-ydoc installed, which the main test environment must not
have (it would serve /api/collaboration itself). CI runs it in a second virtualenv::

    python -m venv /tmp/venv-coexist
    /tmp/venv-coexist/bin/pip install -e ".[test,coexist]"
    JUPYTER_YSTORE_COEXIST=1 /tmp/venv-coexist/bin/python -m pytest tests/test_coexist_server_ydoc.py

With ``JUPYTER_YSTORE_COEXIST=1`` a missing jupyter_server_ydoc is a failure, not a skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

if os.environ.get("JUPYTER_YSTORE_COEXIST") == "1":
    import jupyter_server_ydoc  # noqa: F401  (must be there: fail loudly)
else:
    pytest.importorskip(
        "jupyter_server_ydoc",
        reason="needs jupyter-server-ydoc; .ci/run runs this module in its own virtualenv",
    )

from jupyter_ydoc import YNotebook  # noqa: E402
from pycrdt import Doc  # noqa: E402

from _server_helpers import (  # noqa: E402
    JupyterServerProcess,
    append,
    read_sources,
    wait_until,
    write_notebook,
    yclient,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]

BOTH = {
    "ServerApp": {
        "jpserver_extensions": {
            "jupyter_ystore": True,
            "jupyter_server_ydoc": True,
            "jupyter_server_fileid": True,
        }
    }
}


def _tracebacks(log: str) -> str:
    """Every traceback of a server log (the lines from 'Traceback' up to the next log line)."""
    out: list[str] = []
    inside = False
    for line in log.splitlines():
        if "Traceback (most recent call last)" in line:
            inside = True
        elif line.startswith("["):
            inside = False
        if inside:
            out.append(line)
    return "\n".join(out)


def test_our_stores_pass_its_ystore_class_trait() -> None:
    from jupyter_server_ydoc.app import YDocExtension

    from jupyter_ystore import FileYStore, MemoryYStore, SQLiteYStore

    for cls in (SQLiteYStore, FileYStore, MemoryYStore):
        ext = YDocExtension()
        ext.ystore_class = f"{cls.__module__}.{cls.__name__}"
        assert ext.ystore_class is cls


def _config(store: str, store_config: dict, **extra: dict) -> dict:
    config = {section: dict(values) for section, values in BOTH.items()}
    config["YDocExtension"] = {
        "ystore_class": store,
        "document_save_delay": 0.2,
        "document_cleanup_delay": 0.5,
        "file_poll_interval": 0.5,
    }
    config.update(store_config)
    config.update(extra)
    return config


@pytest.mark.parametrize(
    "store,section,setting",
    [
        ("jupyter_ystore.stores.sqlite.SQLiteYStore", "SQLiteYStore", "db_path"),
        ("jupyter_ystore.FileYStore", "FileYStore", "root_dir"),
    ],
)
async def test_its_rooms_persist_in_our_store(tmp_path: Path, store: str, section: str, setting: str) -> None:
    root, home = tmp_path / "root", tmp_path / "home"
    nb_path = root / "shared.ipynb"
    write_notebook(nb_path, ["a = 1"])
    location = tmp_path / ("store.db" if setting == "db_path" else "store-dir")
    server = JupyterServerProcess(
        root, home, config=_config(store, {section: {setting: str(location)}})
    )
    server.start()
    try:
        # jupyter_server_ydoc serves the endpoints; ours stood aside and said so once
        assert server.log().count("registers no endpoint") == 1, server.log()
        session = server.session("shared.ipynb")
        async with yclient(server.room_url(session)) as c1, yclient(server.room_url(session)) as c2:
            with anyio.fail_after(20):
                await c1.synced.wait()
                await c2.synced.wait()
            append(c1.document.ycells[0]["source"], "\nb = 2  # via jupyter_server_ydoc")
            await wait_until(lambda: c2.sources() == ["a = 1\nb = 2  # via jupyter_server_ydoc"])
            await wait_until(lambda: read_sources(nb_path) == c1.sources(), timeout=30)
            seen = c1.document.get()
        await anyio.sleep(1.0)  # its room writes to the store in background tasks
        server.terminate()
    finally:
        server.kill()
    # jupyter_server_ydoc itself logs a traceback when it writes to a socket our client has
    # just closed (its race, not ours); no traceback may come from our stores.
    assert "jupyter_ystore/" not in _tracebacks(server.log()), server.log()

    # what its room wrote is in our store, under jupyter-collaboration's key
    from jupyter_ystore import FileYStore
    from jupyter_ystore.stores.sqlite.store import SQLiteYStore

    key = f".notebook:{session['fileId']}.y"
    if section == "SQLiteYStore":
        ours = SQLiteYStore(path=key, db_path=str(location))
    else:
        ours = FileYStore(path=key, root_dir=str(location))
    async with ours:
        doc = Doc()
        await ours.apply_updates(doc)
    assert YNotebook(doc).get()["cells"][0]["source"] == seen["cells"][0]["source"]

    # and its next start reads the document back from our store
    server.start()
    try:
        session = server.session("shared.ipynb")
        async with yclient(server.room_url(session)) as c3:
            with anyio.fail_after(20):
                await c3.synced.wait()
            assert c3.sources() == ["a = 1\nb = 2  # via jupyter_server_ydoc"]
        server.terminate()
    finally:
        server.kill()


async def test_a_jupyter_collaboration_history_is_found_after_switching(tmp_path: Path) -> None:
    """A user of jupyter-collaboration switches to jupyter_ystore with no configuration: the
    history its default SQLite store kept (``.jupyter_ystore.db``, keys ``.notebook:<id>.y``)
    is found, including an edit that never reached the file."""
    root, home = tmp_path / "root", tmp_path / "home"
    nb_path = root / "migrate.ipynb"
    write_notebook(nb_path, ["a = 1"])
    theirs = JupyterServerProcess(
        root,
        home,
        config={
            "ServerApp": {
                "jpserver_extensions": {
                    "jupyter_ystore": False,
                    "jupyter_server_ydoc": True,
                    "jupyter_server_fileid": True,
                }
            },
            # its defaults, except no autosave: the edit stays in its store only
            "YDocExtension": {"document_save_delay": None},
        },
    )
    theirs.start()
    try:
        session = theirs.session("migrate.ipynb")
        async with yclient(theirs.room_url(session)) as client:
            with anyio.fail_after(20):
                await client.synced.wait()
            append(client.document.ycells[0]["source"], "\nb = 2  # only in its store")
            await anyio.sleep(1.0)  # its room writes to its store in background tasks
        theirs.terminate()
    finally:
        theirs.kill()
    assert (root / ".jupyter_ystore.db").exists()
    assert read_sources(nb_path) == ["a = 1"]

    ours = JupyterServerProcess(root, home)  # our extension only, every default
    ours.start()
    try:
        session = ours.session("migrate.ipynb")
        async with yclient(ours.room_url(session)) as client:
            with anyio.fail_after(20):
                await client.synced.wait()
            assert client.sources() == ["a = 1\nb = 2  # only in its store"]
        ours.terminate()
    finally:
        ours.kill()
    assert read_sources(nb_path) == ["a = 1\nb = 2  # only in its store"]
    assert "Traceback" not in ours.log(), ours.log()
