"""Two real y-websocket clients (pycrdt documents) in a room of a pytest-jupyter server.

Sync both ways, awareness (echo, relay, removal), the save request and the ``state`` map,
the session check, and a server restart that finds the content in the store.
"""

from __future__ import annotations

import contextlib
import json
import urllib.parse
from pathlib import Path
from typing import Any, AsyncIterator

import anyio
import pytest
import tornado.httpclient
import tornado.httpserver
import tornado.testing
from pycrdt import Doc, Text
from traitlets.config import Config

from _server_helpers import YClient, append, read_sources, wait_until, write_notebook, yclient
from jupyter_ystore.server.sessions import history_of
from jupyter_ystore.core.keys import store_key
from jupyter_ystore.stores.sqlite.store import DEFAULT_DB_NAME
from pytest_jupyter.jupyter_server import *  # noqa: F403  (fixtures, by name; see _server_helpers)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def jp_server_config(tmp_path: Path) -> Config:
    return Config(
        {
            "ServerApp": {
                "jpserver_extensions": {"jupyter_ystore": True, "jupyter_server_fileid": True}
            },
            "YStoreExtension": {
                "ystore_class": "jupyter_ystore.stores.sqlite.SQLiteYStore",
                "document_save_delay": 0.2,
                "document_cleanup_delay": 0.2,
                "file_poll_interval": 0.2,
            },
            "BaseFileIdManager": {"db_path": str(tmp_path / "file_ids.db")},
        }
    )


def _ext(app: Any) -> Any:
    return next(iter(app.extension_manager.extension_apps["jupyter_ystore"]))


async def open_session(jp_fetch: Any, path: str) -> tuple[int, dict]:
    response = await jp_fetch(
        "api",
        "collaboration",
        "session",
        path,
        method="PUT",
        body=json.dumps({"format": "json", "type": "notebook"}),
    )
    return response.code, json.loads(response.body)


def room_url(port: int, base_url: str, session: dict, token: str, session_id: str | None = None) -> str:
    room = f"{session['format']}:{session['type']}:{session['fileId']}"
    query = urllib.parse.urlencode({"sessionId": session_id or session["sessionId"], "token": token})
    return f"ws://127.0.0.1:{port}{base_url}api/collaboration/room/{room}?{query}"


@contextlib.asynccontextmanager
async def two_synced(url: str, doc_type: str = "notebook") -> AsyncIterator[tuple[YClient, YClient]]:
    """Two clients of one room, each synced (its step 2 received)."""
    async with yclient(url, doc_type) as c1, yclient(url, doc_type) as c2:
        with anyio.fail_after(10):
            await c1.synced.wait()
            await c2.synced.wait()
        yield c1, c2


@contextlib.asynccontextmanager
async def two_synced_handlers(
    jp_fetch: Any, app: Any, port: int, base_url: str, path: str
) -> AsyncIterator[tuple[dict, str, YClient, YClient, list]]:
    """A session for ``path``, two synced clients of its room, and the server's two
    handlers of them: ``(session, url, c1, c2, handlers)``."""
    _, session = await open_session(jp_fetch, path)
    url = room_url(port, base_url, session, app.identity_provider.token)
    async with two_synced(url) as (c1, c2):
        handlers = list(_ext(app).connections)
        assert len(handlers) == 2
        yield session, url, c1, c2, handlers


def test_session_endpoint(jp_asyncio_loop, jp_fetch, jp_root_dir) -> None:
    write_notebook(jp_root_dir / "dir" / "nb.ipynb", ["a = 1"])
    write_notebook(jp_root_dir / "my dir" / "ünï côdé.ipynb", ["b = 2"])

    async def scenario() -> None:
        code, first = await open_session(jp_fetch, "dir/nb.ipynb")
        assert code == 201
        assert first["format"] == "json" and first["type"] == "notebook"
        assert first["fileId"] and first["sessionId"]
        code, second = await open_session(jp_fetch, "dir/nb.ipynb")
        assert code == 200
        # one document, one history: both tabs' session ids name it; each tab has its own
        assert {k: v for k, v in second.items() if k != "sessionId"} == {
            k: v for k, v in first.items() if k != "sessionId"
        }
        assert history_of(second["sessionId"]) == history_of(first["sessionId"]) != ""
        assert second["sessionId"] != first["sessionId"]
        # a notebook opens as json:notebook only (text:notebook would be a second document)
        with pytest.raises(tornado.httpclient.HTTPClientError) as err:
            await jp_fetch(
                "api", "collaboration", "session", "dir/nb.ipynb",
                method="PUT", body=json.dumps({"format": "text", "type": "notebook"}),
            )
        assert err.value.code == 400
        for missing in ("dir/missing.ipynb", "../outside.ipynb"):
            with pytest.raises(tornado.httpclient.HTTPClientError) as err:
                await open_session(jp_fetch, missing)
            assert err.value.code == 404
        with pytest.raises(tornado.httpclient.HTTPClientError) as err:
            await jp_fetch(
                "api", "collaboration", "session", "dir/nb.ipynb", method="PUT", body="not json"
            )
        assert err.value.code == 400
        # spaces and non-ASCII names arrive URL-encoded
        code, other = await open_session(jp_fetch, "my dir/ünï côdé.ipynb")
        assert code == 201 and other["fileId"] != first["fileId"]

    jp_asyncio_loop.run_until_complete(scenario())


def test_two_clients_sync_awareness_and_save(
    jp_asyncio_loop, jp_serverapp, jp_fetch, jp_root_dir, jp_http_port, jp_base_url
) -> None:
    nb_path = jp_root_dir / "two.ipynb"
    write_notebook(nb_path, ["x = 1", "y = 2"])
    token = jp_serverapp.identity_provider.token

    async def scenario() -> None:
        _, session = await open_session(jp_fetch, "two.ipynb")
        url = room_url(jp_http_port, jp_base_url, session, token)
        async with two_synced(url) as (c1, c2):
            assert c1.sources() == c2.sources() == ["x = 1", "y = 2"]

            # sync both ways
            append(c1.document.ycells[0]["source"], "  # from c1")
            await wait_until(lambda: c2.sources()[0] == "x = 1  # from c1")
            append(c2.document.ycells[1]["source"], "  # from c2")
            await wait_until(lambda: c1.sources()[1] == "y = 2  # from c2")

            # awareness: echoed to the sender, relayed to the other
            before = c1.awareness_frames
            await c1.send_awareness({"user": {"name": "one"}})
            await wait_until(lambda: c1.awareness_frames > before)
            await wait_until(lambda: c2.awareness.states.get(c1.ydoc.client_id) == {"user": {"name": "one"}})

            # save request: answered, file written, state map updated
            assert await c1.save() == "success"
            assert read_sources(nb_path) == ["x = 1  # from c1", "y = 2  # from c2"]
            ext = _ext(jp_serverapp)
            manager = await ext.rooms()
            room = manager.rooms[f"json:notebook:{session['fileId']}"]
            model = await jp_serverapp.contents_manager.get("two.ipynb", content=False, require_hash=True)
            await wait_until(lambda: c2.document.ystate.get("hash") == model["hash"])
            assert c2.document.ystate.get("dirty") is False
            assert room.document.get() == c1.document.get()

            # awareness removal is broadcast when a socket closes
            await c2.send_awareness({"user": {"name": "two"}})
            await wait_until(lambda: c2.ydoc.client_id in c1.awareness.states)
        # (both closed) -- reopen one and check the query-awareness path answers
        async with yclient(url) as c3:
            await c3.synced.wait()
            assert c3.sources() == ["x = 1  # from c1", "y = 2  # from c2"]

    jp_asyncio_loop.run_until_complete(scenario())


def test_a_cursor_frame_shares_a_write_with_the_update_after_it_and_keeps_its_place(
    jp_asyncio_loop, jp_serverapp, jp_fetch, jp_root_dir, jp_http_port, jp_base_url
) -> None:
    """An awareness frame waits (``AWARENESS_WAIT``) for a document frame to go out with
    it; the order of frames never changes, and one that nothing follows still arrives."""
    from jupyter_ystore.server.handlers import AWARENESS_WAIT

    write_notebook(jp_root_dir / "order.ipynb", ["a"])
    token = jp_serverapp.identity_provider.token

    async def scenario() -> None:
        _, session = await open_session(jp_fetch, "order.ipynb")
        url = room_url(jp_http_port, jp_base_url, session, token)
        async with two_synced(url) as (typist, watcher):
            for i in range(5):  # a keystroke: its cursor, then its update
                start = len(watcher.kinds)
                await typist.send_awareness({"user": {"name": "t"}, "cursor": i})
                append(typist.document.ycells[0]["source"], str(i))
                await wait_until(lambda: "SyncUpdate" in watcher.kinds[start:])
                assert watcher.kinds[start:] == ["AwarenessMessage", "SyncUpdate"]
                assert watcher.awareness.states[typist.ydoc.client_id]["cursor"] == i
            assert watcher.sources() == ["a01234"]
            # a cursor move alone: delivered after the wait, not held back for long
            start = len(watcher.kinds)
            clock = anyio.current_time()
            await typist.send_awareness({"user": {"name": "t"}, "cursor": 99})
            await wait_until(lambda: watcher.kinds[start:] == ["AwarenessMessage"], timeout=5)
            assert anyio.current_time() - clock >= AWARENESS_WAIT * 0.9
            assert watcher.awareness.states[typist.ydoc.client_id]["cursor"] == 99

    jp_asyncio_loop.run_until_complete(scenario())


def test_awareness_removal_on_close(
    jp_asyncio_loop, jp_serverapp, jp_fetch, jp_root_dir, jp_http_port, jp_base_url
) -> None:
    write_notebook(jp_root_dir / "aw.ipynb", ["pass"])
    token = jp_serverapp.identity_provider.token

    async def scenario() -> None:
        _, session = await open_session(jp_fetch, "aw.ipynb")
        url = room_url(jp_http_port, jp_base_url, session, token)
        global_url = (
            f"ws://127.0.0.1:{jp_http_port}{jp_base_url}api/collaboration/room/"
            f"JupyterLab:globalAwareness?token={token}"
        )
        async with yclient(url) as c1:
            async with yclient(url) as c2:
                await c2.synced.wait()
                await c2.send_awareness({"user": {"name": "two"}})
                await wait_until(lambda: c2.ydoc.client_id in c1.awareness.states)
            # c2 closed: its state is removed for c1
            await wait_until(lambda: c2.ydoc.client_id not in c1.awareness.states)
        async with yclient(global_url, "file") as g1, yclient(global_url, "file") as g2:
            await g1.synced.wait()
            await g1.send_awareness({"user": {"name": "g1"}, "current": "aw.ipynb"})
            await wait_until(lambda: g2.awareness.states.get(g1.ydoc.client_id, {}).get("current") == "aw.ipynb")

    jp_asyncio_loop.run_until_complete(scenario())


def test_stale_session_closed_once_then_refused(
    jp_asyncio_loop, jp_serverapp, jp_fetch, jp_root_dir, jp_http_port, jp_base_url
) -> None:
    write_notebook(jp_root_dir / "s.ipynb", ["pass"])
    token = jp_serverapp.identity_provider.token

    async def scenario() -> None:
        _, session = await open_session(jp_fetch, "s.ipynb")
        stale = room_url(jp_http_port, jp_base_url, session, token, session_id="old-session")
        async with yclient(stale) as client:
            await wait_until(lambda: client.closed.is_set())
        assert client.close_code == 1003
        reason = json.loads(client.close_reason)
        assert reason["reason"] == "session_expired" and reason["reloadable"] is True
        assert reason["sessionId"] == "old-session"
        assert not client.synced.is_set()
        from websockets.exceptions import InvalidStatus

        with pytest.raises(InvalidStatus) as err:
            async with yclient(stale):
                pass
        assert err.value.response.status_code == 409

    jp_asyncio_loop.run_until_complete(scenario())


def test_an_open_room_keeps_nothing_of_the_requests_that_opened_it(
    jp_asyncio_loop, jp_serverapp, jp_fetch, jp_root_dir, jp_http_port, jp_base_url
) -> None:
    """The session requests that open rooms end; the rooms' tasks, timers and callbacks, and
    the server's own (started by the first request), must not keep them: a task copies the
    context it starts from, and a request's context holds its handler (jupyter_server's call
    context). Each was about 30 objects a room for every full garbage collection, for as long
    as the room stayed open."""
    import asyncio
    import gc
    import weakref

    from jupyter_ystore.server.handlers import SessionHandler

    write_notebook(jp_root_dir / "r.ipynb", ["x = 1"])
    write_notebook(jp_root_dir / "s.ipynb", ["y = 2"])
    seen: list[weakref.ref] = []
    real_put = SessionHandler.put

    async def put(self: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(weakref.ref(self))
        return await real_put(self, *args, **kwargs)

    SessionHandler.put = put  # type: ignore[method-assign]

    def forget_cancelled_timers() -> None:
        """asyncio keeps a cancelled timer (with the context it was made in) until its time
        comes; tornado cancels one such timer of each request. Not a holder to test for."""
        import heapq

        loop = asyncio.get_running_loop()
        loop._scheduled = [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
        heapq.heapify(loop._scheduled)  # type: ignore[attr-defined]
        loop._timer_cancelled_count = 0  # type: ignore[attr-defined]

    async def scenario() -> None:
        try:
            for path in ("r.ipynb", "s.ipynb"):  # the first request starts the room manager
                opened = two_synced_handlers(jp_fetch, jp_serverapp, jp_http_port, jp_base_url, path)
                async with opened as (_session, _url, c1, c2, _handlers):
                    append(c1.document.ycells[0]["source"], "  # one")
                    await wait_until(lambda: c2.sources()[0].endswith("  # one"))
                    forget_cancelled_timers()
                    gc.collect()
                    assert seen and all(ref() is None for ref in seen)
            assert len(seen) == 2
        finally:
            SessionHandler.put = real_put  # type: ignore[method-assign]

    jp_asyncio_loop.run_until_complete(scenario())


def test_an_open_room_websocket_keeps_nothing_of_its_handshake(
    jp_asyncio_loop, jp_serverapp, jp_fetch, jp_root_dir, jp_http_port, jp_base_url
) -> None:
    """Once a room websocket is open, its upgrade request's leftovers (headers, arguments,
    the HTTP connection objects) and the task that ran the handshake are gone: a full garbage
    collection walked them for every open connection. The connection still works both ways,
    and a session refused after that (a bad update) is still refused at the handshake."""
    import asyncio

    from websockets.exceptions import InvalidStatus

    from jupyter_ystore.server.handshake import SPENT_HEADERS

    write_notebook(jp_root_dir / "h.ipynb", ["x = 1"])

    async def scenario() -> None:
        opened = two_synced_handlers(jp_fetch, jp_serverapp, jp_http_port, jp_base_url, "h.ipynb")
        async with opened as (session, url, c1, c2, handlers):
            for handler in handlers:
                request = handler.request
                assert request.connection is None and request.server_connection is None
                assert not request.headers and not request.query_arguments
                # one shared empty instance for every connection, and no future for its end
                assert request.headers is SPENT_HEADERS and handler._headers is SPENT_HEADERS
                # nor lists of the HTTP side (the route's arguments, transforms, body), nor
                # an outbox list between turns of the loop
                assert not any(isinstance(value, list) for value in vars(handler).values())
                assert handler.ws_connection._ended is False
                assert handler.session_id == session["sessionId"]
            running = [getattr(task.get_coro(), "__qualname__", "") for task in asyncio.all_tasks()]
            assert "RequestHandler._execute" not in running

            append(c1.document.ycells[0]["source"], "  # one")
            await wait_until(lambda: c2.sources()[0] == "x = 1  # one")
            append(c2.document.ycells[0]["source"], "  # two")
            await wait_until(lambda: c1.sources()[0] == "x = 1  # one  # two")

            await c1.send(b"\x00\x02\x07\xff\xfe\xfd\xfc\x00\x13\x37")  # an update that does not decode
            await wait_until(lambda: c1.closed.is_set())
            assert c1.close_code == 1003
            assert json.loads(c1.close_reason)["sessionId"] == session["sessionId"]
            await wait_until(lambda: len(_ext(jp_serverapp).connections) == 1)
            append(c2.document.ycells[0]["source"], "  # on")
            await c2.acknowledged()
        with pytest.raises(InvalidStatus) as err:
            async with yclient(url):
                pass
        assert err.value.response.status_code == 409
        # nothing wrote into the shared headers: open, refused and closed connections alike
        assert not list(SPENT_HEADERS.get_all()) and not SPENT_HEADERS._combined_cache

    jp_asyncio_loop.run_until_complete(scenario())


def test_restart_finds_content_in_store_and_file(
    jp_asyncio_loop,
    jp_serverapp,
    jp_configurable_serverapp,
    jp_fetch,
    jp_root_dir,
    jp_http_port,
    jp_base_url,
    jp_server_config,
) -> None:
    nb_path = jp_root_dir / "restart.ipynb"
    write_notebook(nb_path, ["a = 1"])
    token = jp_serverapp.identity_provider.token

    async def first_run() -> dict:
        _, session = await open_session(jp_fetch, "restart.ipynb")
        url = room_url(jp_http_port, jp_base_url, session, token)
        async with two_synced(url) as (c1, c2):
            append(c1.document.ycells[0]["source"], "\nb = 2")
            await c1.acknowledged()
            await wait_until(lambda: c2.sources() == ["a = 1\nb = 2"])
        # shut the server's collaboration down as a SIGTERM would
        await _ext(jp_serverapp).stop_extension()
        return session

    session = jp_asyncio_loop.run_until_complete(first_run())
    # the store is in the server root under jupyter-collaboration's name and key
    db_path = jp_root_dir / DEFAULT_DB_NAME
    assert db_path.exists()
    assert read_sources(nb_path) == ["a = 1\nb = 2"]  # saved when the room closed

    # a second server app on the same root, store and file ids
    from jupyter_server.serverapp import ServerApp

    ServerApp.clear_instance()
    app2 = jp_configurable_serverapp(config=jp_server_config)
    sock, port = tornado.testing.bind_unused_port()
    server = tornado.httpserver.HTTPServer(app2.web_app)
    server.add_sockets([sock])

    async def second_run() -> None:
        from jupyter_ystore.stores.sqlite.store import SQLiteYStore

        # a browser tab that outlived the restart reconnects with its old session id: the
        # history it knew is still in the store
        url = room_url(port, jp_base_url, session, app2.identity_provider.token)
        async with yclient(url) as c3:
            await c3.synced.wait()
            assert c3.sources() == ["a = 1\nb = 2"]
            seen = c3.document.get()
        await _ext(app2).stop_extension()
        # the stored history replayed into a fresh document is what clients saw
        store = SQLiteYStore(path=store_key("notebook", session["fileId"]), db_path=str(db_path))
        async with store:
            replay = Doc()
            await store.apply_updates(replay)
        from jupyter_ydoc import YNotebook

        assert YNotebook(replay).get() == seen

    try:
        jp_asyncio_loop.run_until_complete(second_run())
    finally:
        server.stop()
        jp_asyncio_loop.run_until_complete(app2._cleanup())


def test_text_file_room(
    jp_asyncio_loop, jp_serverapp, jp_fetch, jp_root_dir, jp_http_port, jp_base_url
) -> None:
    (jp_root_dir / "script.py").write_text("print('hello')\r\n", encoding="utf-8")
    token = jp_serverapp.identity_provider.token

    async def scenario() -> None:
        response = await jp_fetch(
            "api", "collaboration", "session", "script.py",
            method="PUT", body=json.dumps({"format": "text", "type": "file"}),
        )
        session = json.loads(response.body)
        assert response.code == 201 and session["type"] == "file"
        url = room_url(jp_http_port, jp_base_url, session, token)
        async with two_synced(url, "file") as (c1, c2):
            assert c1.document.get() == "print('hello')\n"  # line endings normalised
            text = c1.ydoc.get("source", type=Text)
            append(text, "print('world')\n")
            await wait_until(lambda: c2.document.get() == "print('hello')\nprint('world')\n")
            assert await c2.save() == "success"
            assert (jp_root_dir / "script.py").read_text() == "print('hello')\nprint('world')\n"
            assert await c2.save() == "success"  # nothing new: still answered

    jp_asyncio_loop.run_until_complete(scenario())


def test_room_websockets_have_nagle_off(
    jp_asyncio_loop, jp_serverapp, jp_fetch, jp_root_dir, jp_http_port, jp_base_url
) -> None:
    """TCP_NODELAY on every room websocket, read from the server's own socket: tornado turns
    Nagle's algorithm back on after the upgrade, and then a client's second small frame waits
    for its delayed ACK (~40 ms, the p99 of jupyter-collaboration at 3-4 clients a room)."""
    import socket

    write_notebook(jp_root_dir / "nagle.ipynb", ["x = 1"])

    async def scenario() -> None:
        opened = two_synced_handlers(jp_fetch, jp_serverapp, jp_http_port, jp_base_url, "nagle.ipynb")
        async with opened as (_session, _url, _c1, _c2, handlers):
            for handler in handlers:
                sock = handler.ws_connection.stream.socket
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0

    jp_asyncio_loop.run_until_complete(scenario())
