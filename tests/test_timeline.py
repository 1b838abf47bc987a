"""The document timeline and the fork API, driven like the JupyterLab front end drives them.

Real y-websocket clients (pycrdt) in a pytest-jupyter server with a SQLite store: a client
edits, the "browser" client opens the timeline, connects its document to the fork room,
moves the slider back (the fork shows the old content, the root does not change), restores
(every client of the root sees the old content, the store keeps the history) and reconnects
to the root without duplicating anything.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from pathlib import Path
from typing import Any

import anyio
import pytest
import tornado.httpclient
from jupyter_server.auth import Authorizer, IdentityProvider, User
from traitlets.config import Config

from _server_helpers import YClient, append, read_sources, wait_until, write_notebook, yclient
from jupyter_ystore.server.sessions import history_of
from jupyter_ystore.core.history import read_history
from jupyter_ystore.core.content import to_py
from pytest_jupyter.jupyter_server import *  # noqa: F403  (fixtures, by name; see _server_helpers)

pytestmark = pytest.mark.timeout(120)


READER_TOKEN = "reader-token"


class WriterAndReader(IdentityProvider):
    """The server's token is ``writer``; ``reader-token`` is ``reader``."""

    def get_user(self, handler: Any) -> Any:
        header = handler.request.headers.get("Authorization", "")
        token = header[len("token ") :] if header.startswith("token ") else ""
        token = token or handler.get_argument("token", "")
        handler._token_authenticated = token in (self.token, READER_TOKEN)
        return {self.token: User("writer"), READER_TOKEN: User("reader")}.get(token)


class ReaderReadsOnly(Authorizer):
    def is_authorized(self, handler: Any, user: User, action: str, resource: str) -> bool:
        return user.username == "writer" or action == "read"


@pytest.fixture
def jp_server_config(tmp_path: Path, request: pytest.FixtureRequest) -> Config:
    """A SQLite store by default; ``postgres`` (indirect parameter) for PostgresYStore."""
    backend = getattr(request, "param", "sqlite")
    stores: dict[str, Any] = {"SQLiteYStore": {"db_path": str(tmp_path / "store.db")}}
    store_class = "jupyter_ystore.stores.sqlite.SQLiteYStore"
    if backend == "postgres":
        from postgres_helpers import fresh_config

        stores = {"PostgresYStore": fresh_config(request)}
        store_class = "jupyter_ystore.PostgresYStore"
    return Config(
        {
            "ServerApp": {
                "jpserver_extensions": {"jupyter_ystore": True, "jupyter_server_fileid": True},
                "identity_provider_class": WriterAndReader,
                "authorizer_class": ReaderReadsOnly,
            },
            "YStoreExtension": {
                "ystore_class": store_class,
                "document_save_delay": 0.2,
                "document_cleanup_delay": 60,
                "file_poll_interval": 0,
            },
            **stores,
            "BaseFileIdManager": {"db_path": str(tmp_path / "file_ids.db")},
        }
    )


def _ext(app: Any) -> Any:
    return next(iter(app.extension_manager.extension_apps["jupyter_ystore"]))


def attached(client: YClient, url: str):
    """Connect an existing client's document to ``url`` (root room or fork room)."""
    return yclient(url, client=client)


class Api:
    def __init__(self, jp_fetch: Any, port: int, base_url: str, token: str) -> None:
        self.fetch, self.port, self.base_url, self.token = jp_fetch, port, base_url, token

    async def call(self, method: str, *parts: str, params: dict | None = None, body: Any = None) -> tuple[int, Any]:
        try:
            response = await self.fetch(
                "api",
                "collaboration",
                *parts,
                method=method,
                params=params or {},
                body=None if method in ("GET", "DELETE") else json.dumps(body or {}),
            )
        except tornado.httpclient.HTTPClientError as exc:
            text = exc.response.body if exc.response is not None else b""
            return exc.code, json.loads(text) if text else None
        return response.code, json.loads(response.body) if response.body else None

    async def session(self, path: str) -> dict:
        code, reply = await self.call("PUT", "session", path, body={"format": "json", "type": "notebook"})
        assert code in (200, 201), reply
        return reply

    def url(self, room: str, session_id: str) -> str:
        query = urllib.parse.urlencode({"sessionId": session_id, "token": self.token})
        return f"ws://127.0.0.1:{self.port}{self.base_url}api/collaboration/room/{room}?{query}"


async def _edit(client: YClient, suffix: str) -> None:
    append(client.document.ycells[0]["source"], suffix)
    await client.acknowledged()


@pytest.mark.parametrize("jp_server_config", ["sqlite", "postgres"], indirect=True)
def test_timeline_slider_and_restore(
    jp_asyncio_loop, jp_serverapp, jp_fetch, jp_root_dir, jp_http_port, jp_base_url
) -> None:
    nb_path = jp_root_dir / "nb.ipynb"
    write_notebook(nb_path, ["a = 1"])
    api = Api(jp_fetch, jp_http_port, jp_base_url, jp_serverapp.identity_provider.token)

    async def scenario() -> None:
        session = await api.session("nb.ipynb")
        root = f"json:notebook:{session['fileId']}"
        root_url = api.url(root, session["sessionId"])
        browser = YClient("notebook")
        async with yclient(root_url) as editor:
            await editor.synced.wait()
            await _edit(editor, "\nb = 2")
            await _edit(editor, "\nc = 3")
            assert editor.sources() == ["a = 1\nb = 2\nc = 3"]
            async with attached(browser, root_url):
                await browser.synced.wait()
                assert browser.sources() == ["a = 1\nb = 2\nc = 3"]

            code, timeline = await api.call(
                "GET", "timeline", "nb.ipynb", params={"format": "json", "type": "notebook"}
            )
            assert code == 200, timeline
            assert timeline["roomId"] == root
            assert history_of(timeline["sessionId"]) == history_of(session["sessionId"])
            stamps = timeline["timestamps"]
            # one point per content change (loading, two edits); saves of the state map are not points
            assert len(stamps) == 3 and stamps == sorted(stamps)
            fork = timeline["forkRoom"]

            async with attached(browser, api.url(fork, timeline["sessionId"])):
                await browser.synced.wait()
                params = {"action": "undo", "steps": "2", "forkRoom": fork}
                code, reply = await api.call("PUT", "undo_redo", root, params=params)
                assert (code, reply["code"], reply["status"]) == (200, 200, "undone")
                await wait_until(lambda: browser.sources() == ["a = 1"])
                code, reply = await api.call("PUT", "undo_redo", root, params={**params, "action": "redo", "steps": "1"})
                assert (code, reply["status"]) == (200, "redone")
                await wait_until(lambda: browser.sources() == ["a = 1\nb = 2"])
                # the root document did not move
                assert editor.sources() == ["a = 1\nb = 2\nc = 3"]
                # a timeline fork is read-only: edits sent to it are refused, not merged
                async with yclient(api.url(fork, timeline["sessionId"])) as other:
                    await other.synced.wait()
                    assert other.sources() == ["a = 1\nb = 2"]
                    append(other.document.ycells[0]["source"], "# typed in the timeline")
                    await wait_until(lambda: any(r.get("reason") == "read_only" for r in other.raw))
                assert browser.sources() == ["a = 1\nb = 2"]
                before_restore = editor.ydoc.get_update()

                code, reply = await api.call("PUT", "undo_redo", root, params={**params, "action": "restore", "steps": "0"})
                assert (code, reply["code"]) == (200, 200), reply
                await wait_until(lambda: editor.sources() == ["a = 1\nb = 2"])

            # the fork is gone once restored
            code, reply = await api.call("PUT", "undo_redo", root, params=params)
            assert code == 404
            # the browser reconnects to the root (what the front end does after a restore)
            async with attached(browser, root_url):
                await browser.synced.wait()
                await anyio.sleep(0.2)
                # no duplicated text: the root already holds the fork's edits the browser has
                assert editor.sources() == browser.sources() == ["a = 1\nb = 2"]

            ext = _ext(jp_serverapp)
            room = (await ext.rooms()).rooms[root]
            history = await read_history(room.store)
            metas = [json.loads(r.metadata) for r in history.records]
            assert any(m.get("reason") == "restore" and m.get("user") for m in metas)
            # history kept: the content before the restore is still in the store
            restore_time = max(r.timestamp for r, m in zip(history.records, metas) if m.get("reason") == "restore")
            earlier = to_py(history.state_at(restore_time - 1e-6))
            assert earlier["cells"][0]["source"] == "a = 1\nb = 2\nc = 3"
            assert to_py(before_restore)["cells"][0]["source"] == "a = 1\nb = 2\nc = 3"
            assert to_py(history.state_at(None))["cells"][0]["source"] == "a = 1\nb = 2"
            await wait_until(lambda: read_sources(nb_path) == ["a = 1\nb = 2"])

    jp_asyncio_loop.run_until_complete(scenario())


def test_timeline_errors(jp_asyncio_loop, jp_serverapp, jp_fetch, jp_root_dir, jp_http_port, jp_base_url) -> None:
    write_notebook(jp_root_dir / "e.ipynb", ["x"])
    api = Api(jp_fetch, jp_http_port, jp_base_url, jp_serverapp.identity_provider.token)

    async def scenario() -> None:
        session = await api.session("e.ipynb")
        root = f"json:notebook:{session['fileId']}"
        q = {"format": "json", "type": "notebook"}
        assert (await api.call("GET", "timeline", "missing.ipynb", params=q))[0] == 404
        assert (await api.call("GET", "timeline", "e.ipynb", params={"format": "xml", "type": "notebook"}))[0] == 400
        code, timeline = await api.call("GET", "timeline", "e.ipynb", params=q)
        assert code == 200 and len(timeline["timestamps"]) == 1
        fork = timeline["forkRoom"]
        assert (await api.call("PUT", "undo_redo", root, params={"action": "jump", "steps": "1", "forkRoom": fork}))[0] == 400
        assert (await api.call("PUT", "undo_redo", root, params={"action": "undo", "steps": "x", "forkRoom": fork}))[0] == 400
        assert (await api.call("PUT", "undo_redo", root, params={"action": "undo", "steps": "1", "forkRoom": "nope"}))[0] == 404
        assert (await api.call("PUT", "undo_redo", "json:notebook:other", params={"action": "undo", "steps": "1", "forkRoom": fork}))[0] == 404
        # undo past the first point stays at the first point
        code, reply = await api.call("PUT", "undo_redo", root, params={"action": "undo", "steps": "5", "forkRoom": fork})
        assert code == 200 and reply["position"] == 0

    jp_asyncio_loop.run_until_complete(scenario())


def test_fork_api_synchronize_and_merge(
    jp_asyncio_loop, jp_serverapp, jp_fetch, jp_root_dir, jp_http_port, jp_base_url
) -> None:
    write_notebook(jp_root_dir / "f.ipynb", ["base"])
    api = Api(jp_fetch, jp_http_port, jp_base_url, jp_serverapp.identity_provider.token)

    async def scenario() -> None:
        session = await api.session("f.ipynb")
        root = f"json:notebook:{session['fileId']}"
        async with yclient(api.url(root, session["sessionId"])) as editor:
            await editor.synced.wait()
            code, created = await api.call(
                "PUT", "fork", root, body={"title": "try", "description": "an idea", "synchronize": True}
            )
            assert code == 201
            fork = created["fork_roomid"]
            assert created["fork_info"] == {
                "root_roomid": root, "synchronize": True, "title": "try", "description": "an idea"
            }
            code, listed = await api.call("GET", "fork", root)
            assert code == 200 and list(listed) == [fork]
            async with yclient(api.url(fork, created["sessionId"])) as forker:
                await forker.synced.wait()
                assert forker.sources() == ["base"]
                append(forker.document.ycells[0]["source"], " + fork")
                await forker.acknowledged()
                # synchronize: the root's edits reach the fork; the fork's stay in the fork
                append(editor.document.ycells[0]["source"], " + root")
                # (two inserts at the same place: Yjs orders them by client id)
                both = (["base + fork + root"], ["base + root + fork"])
                await wait_until(lambda: forker.sources() in both)
                merged = forker.sources()
                assert editor.sources() == ["base + root"]
            code, _ = await api.call("DELETE", "fork", fork, params={"merge": "true"})
            assert code == 200
            await wait_until(lambda: editor.sources() == merged)
            assert (await api.call("GET", "fork", root))[1] == {}
            assert (await api.call("DELETE", "fork", fork))[0] == 404
            # deleted without merging, under a connected client: its socket closes, the root stays
            code, created = await api.call("PUT", "fork", root, body={"title": "dropped"})
            assert code == 201 and created["fork_info"]["synchronize"] is False
            async with yclient(api.url(created["fork_roomid"], created["sessionId"])) as viewer:
                await viewer.synced.wait()
                append(viewer.document.ycells[0]["source"], " + dropped")
                await viewer.acknowledged()
                assert (await api.call("DELETE", "fork", created["fork_roomid"], params={"merge": "false"}))[0] == 200
                with anyio.fail_after(10):
                    await viewer.closed.wait()
                assert viewer.close_code == 1000
            assert editor.sources() == merged
            assert (await api.call("PUT", "fork", "json:notebook:nope", body={}))[0] in (400, 404)

    jp_asyncio_loop.run_until_complete(scenario())


def test_reader_views_the_timeline_but_cannot_restore(
    jp_asyncio_loop, jp_serverapp, jp_fetch, jp_root_dir, jp_http_port, jp_base_url
) -> None:
    """The room's permissions: reading the contents opens the timeline and moves the slider;
    restoring and the fork API need write access."""
    write_notebook(jp_root_dir / "r.ipynb", ["one"])
    writer = Api(jp_fetch, jp_http_port, jp_base_url, jp_serverapp.identity_provider.token)

    async def reader_fetch(*parts: str, **kwargs: Any) -> Any:
        return await jp_fetch(*parts, headers={"Authorization": f"token {READER_TOKEN}"}, **kwargs)

    reader = Api(reader_fetch, jp_http_port, jp_base_url, READER_TOKEN)

    async def scenario() -> None:
        session = await writer.session("r.ipynb")
        root = f"json:notebook:{session['fileId']}"
        async with yclient(writer.url(root, session["sessionId"])) as editor:
            await editor.synced.wait()
            await _edit(editor, " two")
            code, timeline = await reader.call(
                "GET", "timeline", "r.ipynb", params={"format": "json", "type": "notebook"}
            )
            assert code == 200 and len(timeline["timestamps"]) == 2
            params = {"action": "undo", "steps": "1", "forkRoom": timeline["forkRoom"]}
            async with yclient(reader.url(timeline["forkRoom"], timeline["sessionId"])) as viewer:
                await viewer.synced.wait()
                assert (await reader.call("PUT", "undo_redo", root, params=params))[0] == 200
                await wait_until(lambda: viewer.sources() == ["one"])
                code, reply = await reader.call("PUT", "undo_redo", root, params={**params, "action": "restore"})
                assert code == 403 and "write" in reply["message"]
                assert (await reader.call("PUT", "fork", root, body={}))[0] == 403
                await anyio.sleep(0.2)
                assert editor.sources() == ["one two"]
                # the fork is still there: the writer can restore it
                assert (await writer.call("PUT", "undo_redo", root, params={**params, "action": "restore"}))[0] == 200
                await wait_until(lambda: editor.sources() == ["one"])

    jp_asyncio_loop.run_until_complete(scenario())


def test_cli_restore_reaches_an_open_room(
    jp_asyncio_loop, jp_serverapp, jp_fetch, jp_root_dir, jp_http_port, jp_base_url, tmp_path
) -> None:
    """`jupyter ystore restore --at` in another process, the document open in this server:
    SQLite's live updates bring the restored version to the connected client."""
    from test_attribution import run_cli

    write_notebook(jp_root_dir / "live.ipynb", ["first"])
    api = Api(jp_fetch, jp_http_port, jp_base_url, jp_serverapp.identity_provider.token)

    async def scenario() -> None:
        session = await api.session("live.ipynb")
        async with yclient(api.url(f"json:notebook:{session['fileId']}", session["sessionId"])) as client:
            await client.synced.wait()
            await _edit(client, " second")
            at = time.time()
            await anyio.sleep(0.05)
            await _edit(client, " third")
            assert client.sources() == ["first second third"]
            key = f".notebook:{session['fileId']}.y"
            done = await anyio.to_thread.run_sync(lambda: run_cli(tmp_path, "restore", key, "--at", repr(at)))
            assert done.returncode == 0, done.stderr
            assert "close it there first" not in done.stderr
            await wait_until(lambda: client.sources() == ["first second"], timeout=10)
            # the room goes on from there: an edit after the restore is kept
            await _edit(client, " fourth")
        await wait_until(lambda: read_sources(jp_root_dir / "live.ipynb") == ["first second fourth"])

    jp_asyncio_loop.run_until_complete(scenario())


def test_restore_after_the_root_room_closed(
    jp_asyncio_loop, jp_serverapp, jp_fetch, jp_root_dir, jp_http_port, jp_base_url
) -> None:
    """The browser is on the fork, nobody on the root: the root room may close meanwhile
    (cleanup delay). Restoring reopens it from the store and applies the version there."""
    write_notebook(jp_root_dir / "c.ipynb", ["p"])
    api = Api(jp_fetch, jp_http_port, jp_base_url, jp_serverapp.identity_provider.token)

    async def scenario() -> None:
        session = await api.session("c.ipynb")
        root = f"json:notebook:{session['fileId']}"
        root_url = api.url(root, session["sessionId"])
        browser = YClient("notebook")
        async with attached(browser, root_url):
            await browser.synced.wait()
            await _edit(browser, " q")
            await _edit(browser, " r")
        code, timeline = await api.call("GET", "timeline", "c.ipynb", params={"format": "json", "type": "notebook"})
        assert code == 200 and len(timeline["timestamps"]) == 3
        fork = timeline["forkRoom"]
        manager = await _ext(jp_serverapp).rooms()
        async with attached(browser, api.url(fork, timeline["sessionId"])):
            await browser.synced.wait()
            params = {"action": "undo", "steps": "1", "forkRoom": fork}
            assert (await api.call("PUT", "undo_redo", root, params=params))[0] == 200
            await wait_until(lambda: browser.sources() == ["p q"])
            await manager.rooms[root].close()
            assert root not in manager.rooms
            assert (await api.call("PUT", "undo_redo", root, params={**params, "action": "restore"}))[0] == 200
        async with attached(browser, root_url):
            await browser.synced.wait()
            async with yclient(root_url) as fresh:
                await fresh.synced.wait()
                await wait_until(lambda: fresh.sources() == ["p q"])
            assert browser.sources() == ["p q"]
        await wait_until(lambda: read_sources(jp_root_dir / "c.ipynb") == ["p q"])

    jp_asyncio_loop.run_until_complete(scenario())


def test_text_file_timeline(jp_asyncio_loop, jp_serverapp, jp_fetch, jp_root_dir, jp_http_port, jp_base_url) -> None:
    """A text file (``text:file`` room) goes through the same slider and restore."""
    (jp_root_dir / "notes.txt").write_text("alpha", encoding="utf-8")
    api = Api(jp_fetch, jp_http_port, jp_base_url, jp_serverapp.identity_provider.token)

    async def scenario() -> None:
        code, session = await api.call("PUT", "session", "notes.txt", body={"format": "text", "type": "file"})
        assert code in (200, 201)
        root = f"text:file:{session['fileId']}"
        async with yclient(api.url(root, session["sessionId"]), "file") as editor:
            await editor.synced.wait()
            for word in (" beta", " gamma"):
                append(editor.document._ysource, word)
                await editor.acknowledged()
            q = {"format": "text", "type": "file"}
            code, timeline = await api.call("GET", "timeline", "notes.txt", params=q)
            assert code == 200 and len(timeline["timestamps"]) == 3
            params = {"action": "undo", "steps": "1", "forkRoom": timeline["forkRoom"]}
            async with yclient(api.url(timeline["forkRoom"], timeline["sessionId"]), "file") as viewer:
                await viewer.synced.wait()
                assert (await api.call("PUT", "undo_redo", root, params=params))[0] == 200
                await wait_until(lambda: viewer.document.get() == "alpha beta")
            assert (await api.call("PUT", "undo_redo", root, params={**params, "action": "restore"}))[0] == 200
            await wait_until(lambda: editor.document.get() == "alpha beta")
        await wait_until(lambda: (jp_root_dir / "notes.txt").read_text(encoding="utf-8") == "alpha beta")

    jp_asyncio_loop.run_until_complete(scenario())


# ---------------------------------------------------------------------------- a real browser

TIMELINE_DRIVER = r"""
// The history icon, the slider and "Restore version" of jupyter-collaboration-ui, clicked.
const path = require('node:path');
const cfg = JSON.parse(process.argv[2]);
const { chromium } = require(path.join(cfg.browserDir, 'node_modules', 'playwright-core'));
const CODE = '.jp-Notebook .jp-CodeCell .cm-content';
const log = (m) => process.stderr.write(m + '\n');
const textIs = (page, text) =>
  page.waitForFunction(([sel, t]) => document.querySelector(sel)?.textContent === t, [CODE, text]);

(async () => {
  const browser = await chromium.launch({ executablePath: cfg.chromium, headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'] });
  const result = {};
  try {
    const page = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
    page.setDefaultTimeout(cfg.timeoutMs);
    page.on('console', (m) => { if (m.type() === 'error') log(`console.error: ${m.text().slice(0, 300)}`); });
    await page.goto(`${cfg.baseUrl}/lab/workspaces/timeline/tree/${cfg.notebook}?reset&token=${cfg.token}`);
    await page.locator(CODE).first().waitFor({ state: 'visible' });
    try {
      const noKernel = page.locator('.jp-Dialog button', { hasText: 'No Kernel' }).first();
      await noKernel.waitFor({ timeout: 15000 });
      await noKernel.click();
    } catch { log('no kernel dialog'); }
    await textIs(page, cfg.versions[cfg.versions.length - 1]);
    await page.locator('[title="Document Timeline"]').first().click();
    const slider = page.locator('input.jp-Slider');
    await slider.waitFor({ state: 'visible' });
    result.max = Number(await slider.getAttribute('max'));
    await slider.fill('0');
    await textIs(page, cfg.versions[0]);
    await slider.fill('1');
    await textIs(page, cfg.versions[1]);
    result.button = await page.locator('button.jp-restoreBtn').textContent();
    await page.locator('button.jp-restoreBtn').click();
    // a second page, opened after the restore, shows the restored version
    const other = await (await browser.newContext()).newPage();
    other.setDefaultTimeout(cfg.timeoutMs);
    await other.goto(`${cfg.baseUrl}/lab/workspaces/other/tree/${cfg.notebook}?reset&token=${cfg.token}`);
    await other.locator(CODE).first().waitFor({ state: 'visible' });
    await textIs(other, cfg.versions[1]);
    // and the first page, back on the document, still edits it
    await page.locator(CODE).first().click();
    await page.keyboard.press('End');
    await page.keyboard.type(' typed');
    await textIs(other, cfg.versions[1] + ' typed');
    result.ok = true;
  } catch (err) {
    result.error = err.message;
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(result) + '\n');
})();
"""


def test_timeline_in_a_real_browser(tmp_path: Path) -> None:
    """JupyterLab in headless Chromium: open the timeline, move the slider to the first and
    the second version (the editor shows them), restore the second; a fresh page shows it,
    the file on disk gets it, and typing goes on."""
    import subprocess
    import sys

    from test_browser import BROWSER_DIR, LabServer, _browser_tools, _cell_sources

    tools = _browser_tools()
    server = LabServer(sys.executable, tmp_path, upstream=False)
    server.root.mkdir(parents=True, exist_ok=True)
    versions = ["v0", "v0 v1", "v0 v1 v2"]
    write_notebook(server.root / "tl.ipynb", [versions[0]])
    server.start()
    try:
        session = server.open_session("tl.ipynb")
        room = f"json:notebook:{session['fileId']}"
        query = urllib.parse.urlencode({"sessionId": session["sessionId"], "token": server.token})
        url = f"ws://127.0.0.1:{server.port}/api/collaboration/room/{room}?{query}"

        async def edit() -> None:
            async with yclient(url) as client:
                await client.synced.wait()
                for version in versions[1:]:
                    await _edit(client, version[len(client.sources()[0]) :])

        anyio.run(edit)
        driver = tmp_path / "timeline_driver.cjs"
        driver.write_text(TIMELINE_DRIVER, encoding="utf-8")
        config = {
            "baseUrl": server.url,
            "token": server.token,
            "notebook": "tl.ipynb",
            "versions": versions,
            "chromium": tools["chromium"],
            "browserDir": str(BROWSER_DIR),
            "timeoutMs": 30000,
        }
        done = subprocess.run(
            [tools["node"], str(driver), json.dumps(config)], capture_output=True, text=True, timeout=180
        )
        result = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {}
        assert result.get("ok"), f"{result} {done.stderr[-2000:]}"
        assert result["max"] == 2 and result["button"].startswith("Restore version")
        deadline = time.monotonic() + 30
        while _cell_sources(server.root / "tl.ipynb") != [versions[1] + " typed"]:
            assert time.monotonic() < deadline, _cell_sources(server.root / "tl.ipynb")
            time.sleep(0.2)
    finally:
        server.terminate(15)
