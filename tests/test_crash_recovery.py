"""A real ``jupyter server`` is SIGKILLed right after acknowledging an edit; nothing is lost.

The server acknowledges an edit by answering the client's next sync step 1 (its step 2 is
sent only once everything the client sent before is durable in the store). The save delay is
longer than the time to the kill, so the ``.ipynb`` does not have the edit when the server
dies: after the restart the store must win and rewrite the file.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest
from jupyter_ydoc import YNotebook
from pycrdt import Doc

from _server_helpers import (
    JupyterServerProcess,
    append,
    read_sources,
    wait_until,
    write_notebook,
    yclient,
)
from jupyter_ystore.core.keys import store_key
from jupyter_ystore.stores.sqlite.store import DEFAULT_DB_NAME

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(240)]

SAVE_DELAY = 1.0


async def stored_history(db_path: Path, file_id: str) -> tuple[int, dict]:
    """(number of stored records, the notebook replayed from them into a fresh document)."""
    from jupyter_ystore.stores.sqlite.store import SQLiteYStore

    store = SQLiteYStore(path=store_key("notebook", file_id), db_path=str(db_path))
    async with store:
        records = [record async for record in store.read()]
        doc = Doc()
        await store.apply_updates(doc)
    return len(records), YNotebook(doc).get()


async def open_and_read(server: JupyterServerProcess) -> tuple[dict, list[str], dict]:
    session = server.session("crash.ipynb")
    async with yclient(server.room_url(session)) as client:
        with anyio.fail_after(20):
            await client.synced.wait()
        return session, client.sources(), client.document.get()


async def test_sigkill_after_ack_loses_nothing(tmp_path: Path) -> None:
    root, home = tmp_path / "root", tmp_path / "home"
    nb_path = root / "crash.ipynb"
    write_notebook(nb_path, ["a = 1", "b = 2"])
    config = {
        # ystore_class left at its default: the embedded SQLite store
        "YStoreExtension": {
            "document_save_delay": SAVE_DELAY,
            "document_cleanup_delay": 0.2,
            "file_poll_interval": 0.2,
        }
    }
    server = JupyterServerProcess(root, home, config=config)
    server.start()
    try:
        session = server.session("crash.ipynb")
        async with yclient(server.room_url(session)) as client:
            with anyio.fail_after(20):
                await client.synced.wait()
            append(client.document.ycells[1]["source"], "\nc = 3  # typed just before the crash")
            await client.acknowledged()
            acked = time.monotonic()
            server.kill()
            kill_gap = time.monotonic() - acked
        assert kill_gap < 0.1, kill_gap
        # the file was not saved yet: the edit lives only in the store
        assert read_sources(nb_path) == ["a = 1", "b = 2"]
    finally:
        server.kill()

    expected = ["a = 1", "b = 2\nc = 3  # typed just before the crash"]
    db_path = root / DEFAULT_DB_NAME
    assert db_path.exists()

    server.start()
    try:
        session, sources, seen = await open_and_read(server)
        assert sources == expected
        # the store won: the file is rewritten after the save delay
        await wait_until(lambda: read_sources(nb_path) == expected, timeout=30)
        took = server.terminate()
    finally:
        server.kill()
    assert took < 10, f"SIGTERM took {took:.1f}s\n{server.log()}"
    count, replayed = await stored_history(db_path, session["fileId"])
    assert replayed == seen
    file_bytes = nb_path.read_bytes()

    # a second and a third restart change nothing: content, file, stored history
    for _ in range(2):
        server.start()
        try:
            _, sources, seen_again = await open_and_read(server)
            assert sources == expected
            assert seen_again == seen
            server.terminate()
        finally:
            server.kill()
        assert nb_path.read_bytes() == file_bytes
        assert await stored_history(db_path, session["fileId"]) == (count, replayed)
    assert "Traceback" not in server.log(), server.log()
