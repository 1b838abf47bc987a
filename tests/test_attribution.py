"""Who made each update: stored by the room manager, shown by `jupyter ystore history`/`info`.

A pytest-jupyter server whose users are known by name writes a SQLite store: the server
loads the file, alice edits, bob restores an older version through the timeline endpoint.
Then the real CLI (a subprocess, as a user runs it, while the server still runs) shows
``server (load)``, ``alice (client)`` and ``bob (client, restore)``. A store class with its
own ``metadata_callback`` keeps its metadata: the room manager does not replace it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from jupyter_server.auth import IdentityProvider, User
from traitlets.config import Config

from _server_helpers import append, write_notebook, yclient, wait_until
from jupyter_ystore.core.keys import store_key
from jupyter_ystore.stores.sqlite.store import SQLiteYStore
from pytest_jupyter.jupyter_server import *  # noqa: F403  (fixtures, by name; see _server_helpers)
from test_timeline import Api

pytestmark = pytest.mark.timeout(120)

BOB_TOKEN = "bob-token"


class NamedUsers(IdentityProvider):
    """The server's token is alice; ``bob-token`` is bob."""

    def get_user(self, handler: Any) -> Any:
        header = handler.request.headers.get("Authorization", "")
        token = header[len("token ") :] if header.startswith("token ") else ""
        token = token or handler.get_argument("token", "")
        handler._token_authenticated = token in (self.token, BOB_TOKEN)
        if token == self.token:
            return User("alice")
        if token == BOB_TOKEN:
            return User("bob")
        return None


class TaggedStore(SQLiteYStore):
    """A deployment's own store class that tags every update itself."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.metadata_callback = self._tag

    async def _tag(self) -> bytes:
        return b"release-bot"


def _config(tmp_path: Path, store_class: str) -> Config:
    return Config(
        {
            "ServerApp": {
                "jpserver_extensions": {"jupyter_ystore": True, "jupyter_server_fileid": True},
                "identity_provider_class": NamedUsers,
            },
            "YStoreExtension": {
                "ystore_class": store_class,
                "document_save_delay": 0.2,
                "file_poll_interval": 0,
            },
            "SQLiteYStore": {"db_path": str(tmp_path / "store.db")},
            "BaseFileIdManager": {"db_path": str(tmp_path / "file_ids.db")},
        }
    )


@pytest.fixture
def jp_server_config(tmp_path: Path, request: pytest.FixtureRequest) -> Config:
    return _config(tmp_path, getattr(request, "param", "jupyter_ystore.stores.sqlite.SQLiteYStore"))


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`jupyter ystore ARGS` as a user runs it (jupyter_core's dispatch, a private config)."""
    env = dict(os.environ)
    env.update(
        {
            "JUPYTER_CONFIG_DIR": str(tmp_path / "cli-config"),
            "JUPYTER_DATA_DIR": str(tmp_path / "cli-data"),
            "JUPYTER_RUNTIME_DIR": str(tmp_path / "cli-runtime"),
            "JUPYTER_PLATFORM_DIRS": "1",
            "JUPYTER_CONFIG_PATH": "",
            "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
        }
    )
    env.pop("COLUMNS", None)
    store = ["--ystore-class=SQLiteYStore", f"--SQLiteYStore.db_path={tmp_path / 'store.db'}"]
    return subprocess.run(
        [sys.executable, "-m", "jupyter", "ystore", *args, *store],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    # In a thread: the server under test runs in this event loop.
    return await anyio.to_thread.run_sync(lambda: run_cli(tmp_path, *args))


def test_history_and_info_show_who(jp_asyncio_loop, jp_serverapp, jp_fetch, jp_root_dir, jp_http_port, jp_base_url, tmp_path) -> None:
    write_notebook(jp_root_dir / "who.ipynb", ["start"])
    alice = Api(jp_fetch, jp_http_port, jp_base_url, jp_serverapp.identity_provider.token)

    async def bob_fetch(*parts: str, **kwargs: Any) -> Any:
        headers = {"Authorization": f"token {BOB_TOKEN}"}
        return await jp_fetch(*parts, headers=headers, **kwargs)

    bob = Api(bob_fetch, jp_http_port, jp_base_url, BOB_TOKEN)

    async def scenario() -> None:
        session = await alice.session("who.ipynb")
        root = f"json:notebook:{session['fileId']}"
        async with yclient(alice.url(root, session["sessionId"])) as client:
            await client.synced.wait()
            append(client.document.ycells[0]["source"], " + alice")
            await client.acknowledged()
            code, timeline = await bob.call(
                "GET", "timeline", "who.ipynb", params={"format": "json", "type": "notebook"}
            )
            assert code == 200 and len(timeline["timestamps"]) == 2
            params = {"action": "undo", "steps": "1", "forkRoom": timeline["forkRoom"]}
            assert (await bob.call("PUT", "undo_redo", root, params=params))[0] == 200
            params["action"] = "restore"
            assert (await bob.call("PUT", "undo_redo", root, params=params))[0] == 200
            await wait_until(lambda: client.sources() == ["start"])

        key = store_key("notebook", session["fileId"])
        history = await cli(tmp_path, "history", key, "--all")
        assert history.returncode == 0, history.stderr
        by = [line.split("  ")[-1].strip() for line in history.stdout.splitlines()[3:]]
        assert "server (load)" in by
        assert "alice (client)" in by
        assert "bob (client, restore)" in by
        assert by.index("server (load)") < by.index("alice (client)") < by.index("bob (client, restore)")

        info = await cli(tmp_path, "info", key, "--json", "--last", "50")
        assert info.returncode == 0, info.stderr
        recent = json.loads(info.stdout)["recent"]
        authors = [r["author"] for r in recent]
        assert {"server (load)", "alice (client)", "bob (client, restore)"} <= set(authors)
        stored = [json.loads(r["metadata"]) for r in recent]
        assert {"origin": "client", "user": "alice"} in stored
        text = await cli(tmp_path, "info", key)
        assert text.returncode == 0 and "bob (client, restore)" in text.stdout

    jp_asyncio_loop.run_until_complete(scenario())


@pytest.mark.parametrize("jp_server_config", ["test_attribution.TaggedStore"], indirect=True)
def test_own_metadata_callback_is_kept(jp_asyncio_loop, jp_serverapp, jp_fetch, jp_root_dir, jp_http_port, jp_base_url, tmp_path) -> None:
    write_notebook(jp_root_dir / "tag.ipynb", ["x"])
    api = Api(jp_fetch, jp_http_port, jp_base_url, jp_serverapp.identity_provider.token)

    async def scenario() -> None:
        session = await api.session("tag.ipynb")
        async with yclient(api.url(f"json:notebook:{session['fileId']}", session["sessionId"])) as client:
            await client.synced.wait()
            append(client.document.ycells[0]["source"], "y")
            await client.acknowledged()
        info = await cli(tmp_path, "info", store_key("notebook", session["fileId"]), "--json")
        assert info.returncode == 0, info.stderr
        recent = json.loads(info.stdout)["recent"]
        assert len(recent) >= 2
        assert {r["metadata"] for r in recent} == {"release-bot"}
        assert {r["author"] for r in recent} == {"release-bot"}

    jp_asyncio_loop.run_until_complete(scenario())
