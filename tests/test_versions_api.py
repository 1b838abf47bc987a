"""Named versions and blame over REST, and the timeline across compactions, driven like
the front end would: real y-websocket clients in a pytest-jupyter server (SQLite and
PostgreSQL stores), a writer and a reader token."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pytest_jupyter.jupyter_server import *  # noqa: F403  (fixtures, by name)

from _server_helpers import wait_until, write_notebook, yclient
from jupyter_ystore.core.content import to_py
from jupyter_ystore.core.history import read_history

# after pytest_jupyter's: jp_server_config is test_timeline's (the fixture, by name)
from test_timeline import READER_TOKEN, Api, _edit, _ext, jp_server_config  # noqa: F401, E402

pytestmark = pytest.mark.timeout(120)

NB = {"format": "json", "type": "notebook"}


@pytest.mark.parametrize("jp_server_config", ["sqlite", "postgres"], indirect=True)
def test_versions_save_restore_delete_and_blame(
    jp_asyncio_loop, jp_serverapp, jp_fetch, jp_root_dir, jp_http_port, jp_base_url
) -> None:
    write_notebook(jp_root_dir / "v.ipynb", ["a = 1"])
    writer = Api(jp_fetch, jp_http_port, jp_base_url, jp_serverapp.identity_provider.token)

    async def reader_fetch(*parts: str, **kwargs: Any) -> Any:
        return await jp_fetch(*parts, headers={"Authorization": f"token {READER_TOKEN}"}, **kwargs)

    reader = Api(reader_fetch, jp_http_port, jp_base_url, READER_TOKEN)

    async def scenario() -> None:
        session = await writer.session("v.ipynb")
        root = f"json:notebook:{session['fileId']}"
        async with yclient(writer.url(root, session["sessionId"])) as editor:
            await editor.synced.wait()
            await _edit(editor, "\nb = 2")
            code, reply = await writer.call("PUT", "versions", "v.ipynb", params=NB, body={"name": "good"})
            assert code == 201 and reply["name"] == "good" and reply["saved_by"] == "writer", reply
            code, reply = await writer.call("PUT", "versions", "v.ipynb", params=NB, body={"name": "good"})
            assert code == 409
            code, reply = await reader.call("PUT", "versions", "v.ipynb", params=NB, body={"name": "r"})
            assert code == 403 and "write" in reply["message"]
            assert (await writer.call("PUT", "versions", "v.ipynb", params=NB, body={"name": ""}))[0] == 400
            assert (await writer.call("PUT", "versions", "nope.ipynb", params=NB, body={"name": "x"}))[0] == 404

            await _edit(editor, "\nc = 3")
            code, reply = await writer.call("PUT", "versions", "v.ipynb", params=NB, body={"name": "with c"})
            assert code == 201
            code, listed = await reader.call("GET", "versions", "v.ipynb", params=NB)
            assert code == 200 and [v["name"] for v in listed["versions"]] == ["good", "with c"]
            assert listed["since"] is not None

            # blame: the line loaded from the file, then the writer's two lines
            code, blamed = await reader.call("GET", "blame", "v.ipynb", params=NB)
            assert code == 200 and blamed["kind"] == "notebook", blamed
            lines = blamed["cells"][0]["lines"]
            assert [line["text"] for line in lines] == ["a = 1", "b = 2", "c = 3"]
            assert lines[0]["authors"] == ["server (load)"]
            assert lines[1]["authors"] == lines[2]["authors"] == ["writer (client)"]
            assert lines[1]["time"] < lines[2]["time"] == blamed["cells"][0]["time"]

            # restoring is an edit every client sees; restoring the other version undoes it
            body = {"name": "good", "action": "restore"}
            code, reply = await reader.call("PUT", "versions", "v.ipynb", params=NB, body=body)
            assert code == 403
            code, reply = await writer.call("PUT", "versions", "v.ipynb", params=NB, body=body)
            assert code == 200 and reply["changed"], reply
            await wait_until(lambda: editor.sources() == ["a = 1\nb = 2"])
            code, reply = await writer.call(
                "PUT", "versions", "v.ipynb", params=NB, body={"name": "with c", "action": "restore"}
            )
            assert code == 200
            await wait_until(lambda: editor.sources() == ["a = 1\nb = 2\nc = 3"])
            code, reply = await writer.call(
                "PUT", "versions", "v.ipynb", params=NB, body={"name": "gone", "action": "restore"}
            )
            assert code == 404

            # deleting a name: write access; the point stays
            assert (await reader.call("DELETE", "versions", "v.ipynb", params={**NB, "name": "good"}))[0] == 403
            assert (await writer.call("DELETE", "versions", "v.ipynb", params={**NB, "name": "good"}))[0] == 200
            assert (await writer.call("DELETE", "versions", "v.ipynb", params={**NB, "name": "good"}))[0] == 404
            code, listed = await writer.call("GET", "versions", "v.ipynb", params=NB)
            assert [v["name"] for v in listed["versions"]] == ["with c"]

            # the timeline still reaches the states before the compactions the saves made
            code, timeline = await reader.call("GET", "timeline", "v.ipynb", params=NB)
            assert code == 200 and len(timeline["timestamps"]) >= 4, timeline

            ext = _ext(jp_serverapp)
            room = (await ext.rooms()).rooms[root]
            await room.writer.settle(10)
            history = await read_history(room.store)
            restores = [r for r in history.records if b'"restore"' in r.metadata]
            assert len(restores) == 2
            assert all(json.loads(r.metadata)["user"] == "writer" for r in restores)
            good = history.version("with c")
            assert to_py(history.state_of(good))["cells"][0]["source"] == "a = 1\nb = 2\nc = 3"

    jp_asyncio_loop.run_until_complete(scenario())
