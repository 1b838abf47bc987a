"""Permissions come from jupyter_server: a read-only user gets the document, not a say in it."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import anyio
import pytest
import tornado.httpclient
from jupyter_server.auth import Authorizer, IdentityProvider, User
from traitlets.config import Config

from _server_helpers import append, wait_until, write_notebook, yclient
from pytest_jupyter.jupyter_server import *  # noqa: F403  (fixtures, by name; see _server_helpers)

pytestmark = pytest.mark.timeout(120)

READER_TOKEN = "reader-token"


class TwoUsers(IdentityProvider):
    """The server's token is the writer; ``reader-token`` is a second, read-only user."""

    def get_user(self, handler: Any) -> Any:
        header = handler.request.headers.get("Authorization", "")
        token = header[len("token ") :] if header.startswith("token ") else ""
        token = token or handler.get_argument("token", "")
        handler._token_authenticated = token in (self.token, READER_TOKEN)  # no xsrf for tokens
        if token == self.token:
            return User("writer")
        if token == READER_TOKEN:
            return User("reader")
        return None


class ReadOnlyForReader(Authorizer):
    def is_authorized(self, handler: Any, user: User, action: str, resource: str) -> bool:
        return user.username == "writer" or action == "read"


@pytest.fixture
def jp_server_config(tmp_path: Any) -> Config:
    return Config(
        {
            "ServerApp": {
                "jpserver_extensions": {"jupyter_ystore": True, "jupyter_server_fileid": True},
                "identity_provider_class": TwoUsers,
                "authorizer_class": ReadOnlyForReader,
            },
            "YStoreExtension": {
                "ystore_class": "jupyter_ystore.MemoryYStore",
                "document_save_delay": 0.2,
                "file_poll_interval": 0,
            },
            "BaseFileIdManager": {"db_path": str(tmp_path / "file_ids.db")},
        }
    )


def _url(port: int, base_url: str, session: dict, token: str) -> str:
    room = f"{session['format']}:{session['type']}:{session['fileId']}"
    query = urllib.parse.urlencode({"sessionId": session["sessionId"], "token": token})
    return f"ws://127.0.0.1:{port}{base_url}api/collaboration/room/{room}?{query}"


def test_read_only_user_receives_but_cannot_change(
    jp_asyncio_loop, jp_serverapp, jp_fetch, jp_root_dir, jp_http_port, jp_base_url
) -> None:
    write_notebook(jp_root_dir / "shared.ipynb", ["x = 1"])
    writer_token = jp_serverapp.identity_provider.token

    async def scenario() -> None:
        # the reader may open a session (reading is enough)
        response = await jp_fetch(
            "api", "collaboration", "session", "shared.ipynb",
            method="PUT",
            body=json.dumps({"format": "json", "type": "notebook"}),
            headers={"Authorization": f"token {READER_TOKEN}"},
        )
        session = json.loads(response.body)
        writer_url = _url(jp_http_port, jp_base_url, session, writer_token)
        reader_url = _url(jp_http_port, jp_base_url, session, READER_TOKEN)
        async with yclient(writer_url) as writer, yclient(reader_url) as reader:
            with anyio.fail_after(10):
                await writer.synced.wait()
                await reader.synced.wait()
            assert reader.sources() == ["x = 1"]

            append(reader.document.ycells[0]["source"], "  # reader was here")
            await wait_until(lambda: any(r.get("reason") == "read_only" for r in reader.raw))
            assert await reader.save() == "failed"

            append(writer.document.ycells[0]["source"], "  # writer")
            await wait_until(lambda: "# writer" in reader.sources()[0])
            await writer.acknowledged()
            assert writer.sources() == ["x = 1  # writer"]
            ext = next(iter(jp_serverapp.extension_manager.extension_apps["jupyter_ystore"]))
            room = (await ext.rooms()).rooms[f"json:notebook:{session['fileId']}"]
            assert "reader was here" not in room.document.get()["cells"][0]["source"]
            assert not reader.closed.is_set()  # refused, not disconnected
            assert sum(1 for r in reader.raw if r.get("reason") == "read_only") == 1

    jp_asyncio_loop.run_until_complete(scenario())


def test_unauthenticated_requests_are_refused(
    jp_asyncio_loop, jp_serverapp, jp_fetch, jp_root_dir, jp_http_port, jp_base_url
) -> None:
    write_notebook(jp_root_dir / "private.ipynb", ["secret = 1"])

    async def scenario() -> None:
        response = await jp_fetch(
            "api", "collaboration", "session", "private.ipynb",
            method="PUT",
            body=json.dumps({"format": "json", "type": "notebook"}),
        )
        session = json.loads(response.body)
        with pytest.raises(tornado.httpclient.HTTPClientError) as err:
            await jp_fetch(
                "api", "collaboration", "session", "private.ipynb",
                method="PUT",
                body=json.dumps({"format": "json", "type": "notebook"}),
                headers={"Authorization": "token wrong"},
            )
        assert err.value.code == 403
        from websockets.exceptions import InvalidStatus

        with pytest.raises(InvalidStatus) as ws_err:
            async with yclient(_url(jp_http_port, jp_base_url, session, "wrong")):
                pass
        assert ws_err.value.response.status_code == 403

    jp_asyncio_loop.run_until_complete(scenario())
