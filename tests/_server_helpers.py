"""Shared test utilities for the server extension.

- ``YClient``: a y-websocket peer built on pycrdt and ``websockets``, behaving like the
  JupyterLab front end (answers step 1, counts as synced on step 2, sends its own changes,
  awareness, save requests).
- ``JupyterServerProcess``: a real ``jupyter server`` subprocess on a free 127.0.0.1 port
  with a token and explicit config (only our extension and the file id service enabled).
- pytest-jupyter's fixtures, imported by name (see ``server_fixtures``): its plugin is not
  registered globally because its ``pytest_pyfunc_call`` hook would run every coroutine test,
  the anyio-marked ones of other modules included, in its own loop. Our server tests are
  plain functions that drive ``jp_asyncio_loop`` themselves.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

import anyio
import nbformat
from jupyter_ydoc import ydocs as YDOCS
from pycrdt import Awareness, Doc
from websockets.asyncio.client import ClientConnection, connect

from jupyter_ystore.server import protocol as sync


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_notebook(path: Path, sources: list[str]) -> dict:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(nbformat.writes(nb), encoding="utf-8")
    return nb


def append(text: Any, suffix: str) -> None:
    """Type at the end of a shared text (``cell["source"] += s`` would replace the Text)."""
    text.insert(len(text), suffix)


def read_sources(path: Path) -> list[str] | None:
    """The cells' sources of a notebook file (None while it is being rewritten)."""
    try:
        nb = nbformat.read(str(path), as_version=4)
    except (OSError, ValueError, nbformat.reader.NotJSONError):
        return None
    return [cell.source for cell in nb.cells]


async def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, step: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy (never a timed assertion: the
    timeout only bounds a hang)."""
    with anyio.fail_after(timeout):
        while True:
            value = predicate()
            if value:
                return value
            await anyio.sleep(step)


class YClient:
    """A y-websocket client with a pycrdt document, like the JupyterLab front end."""

    def __init__(self, doc_type: str = "notebook", *, username: str = "tester") -> None:
        self.ydoc = Doc()
        self.document = YDOCS.get(doc_type, YDOCS["file"])(self.ydoc)
        self.awareness = Awareness(self.ydoc)
        self.username = username
        self.ws: ClientConnection | None = None
        self.synced = anyio.Event()
        self.closed = anyio.Event()
        self.close_code: int | None = None
        self.close_reason: str = ""
        self.raw: list[dict] = []
        self.awareness_frames = 0
        self.updates_received = 0
        self.step2_received = 0
        self.kinds: list[str] = []  # what each frame received was, in order
        self._applying = False
        self._next_save = 0
        self._sub = self.ydoc.observe(self._on_local_change)
        self._tg: Any = None

    async def _receive(self) -> None:
        ws = self.ws
        assert ws is not None
        try:
            async for frame in ws:
                await self._handle(frame)
        except Exception:
            pass
        finally:
            self.close_code, self.close_reason = ws.close_code, ws.close_reason or ""
            self.closed.set()

    async def _handle(self, frame: Any) -> None:
        message = sync.parse_message(frame)
        self.kinds.append(type(message).__name__)
        if isinstance(message, sync.SyncStep1):
            await self.send(sync.sync_step2(self.ydoc, message.state_vector))
        elif isinstance(message, (sync.SyncStep2, sync.SyncUpdate)):
            self._applying = True
            try:
                self.ydoc.apply_update(message.update)
            finally:
                self._applying = False
            self.updates_received += 1
            if isinstance(message, sync.SyncStep2):
                self.step2_received += 1
                self.synced.set()
        elif isinstance(message, sync.AwarenessMessage):
            self.awareness_frames += 1
            self.awareness.apply_awareness_update(message.update, origin="remote")
        elif isinstance(message, sync.RawMessage):
            self.raw.append(json.loads(message.text))

    def _on_local_change(self, event: Any) -> None:
        if self._applying or self.ws is None:
            return
        update = event.update
        if self._tg is not None:
            self._tg.start_soon(self.send, sync.update_message(update))

    # -------------------------------------------------------------- actions
    async def send(self, frame: bytes) -> None:
        if self.ws is None:
            return
        try:
            await self.ws.send(frame)
        except Exception:
            pass

    async def send_awareness(self, state: dict) -> None:
        self.awareness.set_local_state(state)
        await self.send(sync.awareness_message(self.awareness, [self.ydoc.client_id]))

    async def save(self, timeout: float = 10.0) -> str:
        """Send a save request; return the server's status."""
        request_id = self._next_save = self._next_save + 1
        from pycrdt import Encoder

        encoder = Encoder()
        encoder.write_var_uint(sync.MessageType.RAW)
        encoder.write_var_string("save")
        encoder.write_var_uint(request_id)
        await self.send(encoder.to_bytes())
        reply = await wait_until(
            lambda: next(
                (r for r in self.raw if r.get("type") == "save" and r.get("responseTo") == request_id),
                None,
            ),
            timeout,
        )
        return reply["status"]

    async def acknowledged(self, timeout: float = 10.0) -> None:
        """Send a step 1 and wait for its step 2: the server answers once what we sent before
        is durable in its store."""
        before = self.step2_received  # (relayed updates, our own echoes included, do not count)
        await self.send(sync.sync_step1(self.ydoc))
        await wait_until(lambda: self.step2_received > before, timeout)

    def sources(self) -> list[str]:
        return [str(cell["source"]) for cell in self.document.ycells]


@asynccontextmanager
async def yclient(
    url: str,
    doc_type: str = "notebook",
    *,
    headers: dict[str, str] | None = None,
    client: YClient | None = None,
) -> AsyncIterator[YClient]:
    """A connected ``YClient`` (its step 1 sent); disconnected on exit. ``client``: connect
    that client's existing document instead of a new one (what the front end does when it
    switches its shared model between the root room and a fork room)."""
    if client is None:
        client = YClient(doc_type)
    else:
        client.synced = anyio.Event()
        client.closed = anyio.Event()
        client.close_code, client.close_reason = None, ""
    async with connect(url, additional_headers=headers or {}, max_size=None, compression=None) as ws:
        client.ws = ws
        async with anyio.create_task_group() as tg:
            client._tg = tg
            tg.start_soon(client._receive)
            await client.send(sync.sync_step1(client.ydoc))
            try:
                yield client
            finally:
                client.ws = None
                tg.cancel_scope.cancel()


class JupyterServerProcess:
    """``jupyter server`` in a subprocess, only our extension (and file ids) enabled."""

    def __init__(
        self,
        root: Path,
        home: Path,
        *,
        config: dict[str, Any] | None = None,
        token: str = "secret-token",
    ) -> None:
        self.root = root
        self.home = home
        self.token = token
        self.port = free_port()
        self.config = config or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = home / f"server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> JupyterServerProcess:
        self.port = free_port()
        self.log_path = self.home / f"server-{self.port}.log"
        config_dir = self.home / "config"
        config_dir.mkdir(parents=True, exist_ok=True)
        config = {
            "ServerApp": {
                "jpserver_extensions": {
                    "jupyter_ystore": True,
                    "jupyter_server_fileid": True,
                    "jupyterlab": False,
                    "jupyter_lsp": False,
                    "notebook_shim": False,
                    "jupyter_server_terminals": False,
                    "jupyter_server_ydoc": False,
                    "jupyter_collaboration": False,
                    "jupyter_server_ydoc_legacy": False,
                },
                "ip": "127.0.0.1",
                "port": self.port,
                "port_retries": 0,
                "open_browser": False,
                "root_dir": str(self.root),
                "allow_root": True,
            },
            "IdentityProvider": {"token": self.token},
            "BaseFileIdManager": {"db_path": str(self.home / "file_id_manager.db")},
        }
        for section, values in self.config.items():
            config.setdefault(section, {}).update(values)
        config_file = config_dir / "jupyter_server_config.json"
        config_file.write_text(json.dumps(config), encoding="utf-8")
        env = dict(os.environ)
        env.update(
            {
                "JUPYTER_CONFIG_DIR": str(config_dir),
                "JUPYTER_DATA_DIR": str(self.home / "data"),
                "JUPYTER_RUNTIME_DIR": str(self.home / "runtime"),
                "JUPYTER_PLATFORM_DIRS": "1",
                "HOME": str(self.home),
            }
        )
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter_server", f"--config={config_file}"],
            cwd=str(self.root),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                self.request("GET", "/api/status")
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"jupyter server did not start:\n{self.log()}") from None
                time.sleep(0.1)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"token {self.token}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                text = resp.read()
                return resp.status, json.loads(text) if text else None
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def session(self, path: str, file_type: str = "notebook", file_format: str = "json") -> dict:
        status, reply = self.request(
            "PUT",
            "/api/collaboration/session/" + urllib.parse.quote(path),
            {"format": file_format, "type": file_type},
        )
        assert status in (200, 201), (status, reply)
        return reply

    def room_url(self, session: dict) -> str:
        room = f"{session['format']}:{session['type']}:{session['fileId']}"
        query = urllib.parse.urlencode({"sessionId": session["sessionId"], "token": self.token})
        return f"{self.ws_url}/api/collaboration/room/{room}?{query}"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 20.0) -> float:
        """SIGTERM; return how long the process took to exit."""
        assert self.proc is not None
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        return time.monotonic() - start
