"""Bad input gets a clear error for the one client that sent it, logged once; the room, the
other clients and everything stored go on."""

from __future__ import annotations

import logging
import urllib.parse
from typing import Any

import anyio
import pytest
from pycrdt import Doc
from traitlets.config import Config

from _server_helpers import append, wait_until, write_notebook, yclient
from jupyter_ystore.server import protocol as sync
from pytest_jupyter.jupyter_server import *  # noqa: F403  (fixtures, by name; see _server_helpers)

pytestmark = pytest.mark.timeout(120)

MAX_MESSAGE = 64 * 1024


@pytest.fixture
def jp_server_config(tmp_path: Any) -> Config:
    return Config(
        {
            "ServerApp": {
                "jpserver_extensions": {"jupyter_ystore": True, "jupyter_server_fileid": True}
            },
            "YStoreExtension": {
                "ystore_class": "jupyter_ystore.MemoryYStore",
                "document_save_delay": None,
                "file_poll_interval": 0,
                "max_message_size": MAX_MESSAGE,
            },
            "BaseFileIdManager": {"db_path": str(tmp_path / "file_ids.db")},
        }
    )


def _ext(app: Any) -> Any:
    return next(iter(app.extension_manager.extension_apps["jupyter_ystore"]))


BAD_FRAMES = {
    "truncated": (b"\x00\x02\x7f\x01\x02", 1002, "truncated"),
    "garbage update": (sync.update_message(b"\xff\xfe\xfd\xfc\x00\x13\x37"), 1003, "initialization_error"),
    "update of the issue": (bytes.fromhex("0002130101eba28b9de48ba40100a2002200025a4800"), 1003, "initialization_error"),
    "update on unknown items": (sync.update_message(bytes.fromhex("0101e7070084006301" "61" "00")), 1003, "session_expired"),
    "unknown sync type": (b"\x00\x09\x00", 1002, "unknown sync message type"),
    "bad awareness": (b"\x01\x03\x05\x01\x02", 1002, "awareness"),
    "oversized": (sync.update_message(b"\x00" * (MAX_MESSAGE + 10)), 1009, "too big"),
}


@pytest.mark.parametrize("kind", list(BAD_FRAMES))
def test_bad_frame_disconnects_only_its_sender(
    kind, jp_asyncio_loop, jp_serverapp, jp_fetch, jp_root_dir, jp_http_port, jp_base_url, caplog
) -> None:
    frame, code, reason = BAD_FRAMES[kind]
    write_notebook(jp_root_dir / "nb.ipynb", ["x = 1"])
    token = jp_serverapp.identity_provider.token

    async def scenario() -> None:
        import json

        response = await jp_fetch(
            "api", "collaboration", "session", "nb.ipynb",
            method="PUT", body=json.dumps({"format": "json", "type": "notebook"}),
        )
        session = json.loads(response.body)
        room_id = f"json:notebook:{session['fileId']}"
        query = urllib.parse.urlencode({"sessionId": session["sessionId"], "token": token})
        url = f"ws://127.0.0.1:{jp_http_port}{jp_base_url}api/collaboration/room/{room_id}?{query}"
        async with yclient(url) as good, yclient(url) as bad:
            with anyio.fail_after(10):
                await good.synced.wait()
                await bad.synced.wait()
            append(good.document.ycells[0]["source"], "  # before")
            await good.acknowledged()
            room = (await _ext(jp_serverapp).rooms()).rooms[room_id]
            store = room.store
            before = [r async for r in store.read()]

            await bad.send(frame)
            await wait_until(lambda: bad.closed.is_set())
            assert bad.close_code == code
            assert reason in bad.close_reason

            # the room and the other client go on
            append(good.document.ycells[0]["source"], "  # after")
            await good.acknowledged()
            assert room.document.get()["cells"][0]["source"] == "x = 1  # before  # after"
            # nothing stored is lost: the old history is a prefix of the new one
            after = [r async for r in store.read()]
            assert after[: len(before)] == before
            replay = Doc()
            await store.apply_updates(replay)
            from jupyter_ydoc import YNotebook

            assert YNotebook(replay).get() == room.document.get()
        logged = [
            r for r in caplog.records
            if "bad message from" in r.getMessage() or "refused, disconnecting it" in r.getMessage()
        ]
        assert len(logged) == 1, [r.getMessage() for r in logged]

    with caplog.at_level(logging.INFO):
        jp_asyncio_loop.run_until_complete(scenario())


def test_text_frames_unknown_rooms_and_unknown_types(
    jp_asyncio_loop, jp_serverapp, jp_fetch, jp_root_dir, jp_http_port, jp_base_url
) -> None:
    token = jp_serverapp.identity_provider.token
    base = f"ws://127.0.0.1:{jp_http_port}{jp_base_url}api/collaboration/room/"

    async def scenario() -> None:
        for room_id, code in [
            ("nonsense", 4400),
            ("json:notebook:no-such-file-id", 4404),
            ("json:weird:abc", 4400),
        ]:
            async with yclient(f"{base}{room_id}?token={token}") as client:
                await wait_until(lambda: client.closed.is_set())
            assert client.close_code == code, room_id
            assert not client.synced.is_set()
        write_notebook(jp_root_dir / "t.ipynb", ["1"])
        import json

        response = await jp_fetch(
            "api", "collaboration", "session", "t.ipynb",
            method="PUT", body=json.dumps({"format": "json", "type": "notebook"}),
        )
        session = json.loads(response.body)
        url = f"{base}json:notebook:{session['fileId']}?token={token}"
        async with yclient(url) as client:
            await client.synced.wait()
            await client.send(bytes([125]) + b"chat")  # an unknown message type is ignored
            await client.acknowledged()
            assert not client.closed.is_set()
            assert client.ws is not None
            await client.ws.send("a text frame")
            await wait_until(lambda: client.closed.is_set())
        assert client.close_code == 1002 and "text frames" in client.close_reason

    jp_asyncio_loop.run_until_complete(scenario())


def test_a_broken_store_is_an_error_for_the_client_not_an_empty_document(
    jp_asyncio_loop, jp_serverapp, jp_fetch, jp_root_dir, jp_http_port, jp_base_url
) -> None:
    from jupyter_ystore import MemoryYStore, YStoreCorruptError

    class BrokenStore(MemoryYStore):
        async def read(self):  # type: ignore[override]
            raise YStoreCorruptError("record 12 does not decode", path=self.path)
            yield  # pragma: no cover

    _ext(jp_serverapp).ystore_class = BrokenStore
    nb_path = jp_root_dir / "kept.ipynb"
    write_notebook(nb_path, ["keep = True"])
    before = nb_path.read_bytes()
    token = jp_serverapp.identity_provider.token

    async def scenario() -> None:
        import json

        response = await jp_fetch(
            "api", "collaboration", "session", "kept.ipynb",
            method="PUT", body=json.dumps({"format": "json", "type": "notebook"}),
        )
        session = json.loads(response.body)
        query = urllib.parse.urlencode({"sessionId": session["sessionId"], "token": token})
        url = (
            f"ws://127.0.0.1:{jp_http_port}{jp_base_url}api/collaboration/room/"
            f"json:notebook:{session['fileId']}?{query}"
        )
        async with yclient(url) as client:
            await wait_until(lambda: client.closed.is_set())
        assert client.close_code == 4500
        assert "record 12 does not decode" in client.close_reason
        assert not client.synced.is_set()
        assert BrokenStore._documents == {}  # nothing rebuilt from the file into the store

    jp_asyncio_loop.run_until_complete(scenario())
    assert nb_path.read_bytes() == before
