"""End-to-end: the official JupyterLab RTC front end in headless Chromium.

Two pages edit one notebook through a real ``jupyter lab`` subprocess; the server
is SIGKILLed right after page B has seen page A's edit, restarted on the same
root and database, and a fresh page C must still show the edit (and, after the
save delay, the ``.ipynb`` on disk must hold it). Page A, which outlived the crash
and was typed in while the server was down (a closed laptop), reconnects by itself
without a reload dialog, and its offline text reaches C exactly once. Then Ctrl+S
in C must report "Saving completed" with the file written, a change made to the
file by another program must reach C, and SIGTERM must end the server promptly
while C is still connected. This is the test that proves the front end and our
endpoints actually talk, and that a crash loses nothing.

Needs Debian's ``chromium``, Node.js and ``tests/browser/node_modules``
(``tests/browser/install.sh`` installs them). It fails, never skips, when they
are missing: CI must run it.

Environment knobs (for working on the harness, not for CI):
- ``JUPYTER_YSTORE_BROWSER_PYTHON``: interpreter that runs ``jupyter lab``
  (default: this one, with our extension). Pointed at a venv with
  jupyter-collaboration, the upstream ``jupyter_server_ydoc`` serves instead.
- ``JUPYTER_YSTORE_BROWSER_KILL_AFTER``: ``relay`` (default) kills as soon as
  page B shows the edit, before the debounced save can write the file, so only
  the store can bring it back; ``file`` waits for the ``.ipynb`` to hold the
  edit first (upstream restores from the file, not the store).
- ``JUPYTER_YSTORE_CHROMIUM``: browser binary (default ``/usr/bin/chromium``).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable, TypeVar

import pytest

from jupyter_ystore.server.sessions import history_of

BROWSER_DIR = Path(__file__).parent / "browser"
DRIVER = BROWSER_DIR / "two_pages.mjs"
NOTEBOOK = "demo.ipynb"
SAVE_DELAY = 3.0  # long enough that the SIGKILL lands before the debounced save
START_TIMEOUT = 60.0
STEP_TIMEOUT = 60.0
INSTALL_HINT = "Install them with `sh tests/browser/install.sh` (apt-get chromium, npm ci)."

T = TypeVar("T")


def _wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.1) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _browser_tools() -> dict[str, str]:
    """Locate chromium, node and playwright-core, or fail saying how to install them."""
    chromium = os.environ.get("JUPYTER_YSTORE_CHROMIUM", "/usr/bin/chromium")
    node = shutil.which("node")
    missing = []
    if not (os.path.isfile(chromium) and os.access(chromium, os.X_OK)):
        missing.append(f"Chromium at {chromium} (Debian package `chromium`)")
    if node is None:
        missing.append("Node.js (`node` on PATH)")
    if not (BROWSER_DIR / "node_modules" / "playwright-core" / "package.json").is_file():
        missing.append(f"playwright-core in {BROWSER_DIR}/node_modules (`npm ci` there)")
    if missing:
        pytest.fail(
            "The real-browser test needs " + "; ".join(missing) + ". " + INSTALL_HINT, pytrace=False
        )
    return {"chromium": chromium, "node": node or "node"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_notebook(path: Path) -> None:
    """A markdown cell and one code cell; no kernelspec, the test runs no code."""
    nb = {
        "cells": [
            {"cell_type": "markdown", "id": "intro", "metadata": {}, "source": ["# Browser test"]},
            {
                "cell_type": "code",
                "execution_count": None,
                "id": "code-1",
                "metadata": {},
                "outputs": [],
                "source": ["x = 1"],
            },
        ],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(nb, indent=1), encoding="utf-8")


def _cell_sources(path: Path) -> list[str]:
    """Cell sources of the notebook on disk ([] while it is being rewritten)."""
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [
        "".join(c["source"]) if isinstance(c["source"], list) else c["source"] for c in nb["cells"]
    ]


def _edit_on_disk(path: Path, code: str) -> None:
    """Replace the code cell's source the way an editor would: write aside, then rename."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    nb["cells"][1]["source"] = code
    aside = path.with_name(path.name + ".tmp")
    aside.write_text(json.dumps(nb, indent=1), encoding="utf-8")
    os.replace(aside, path)


class LabServer:
    """A ``jupyter lab`` subprocess with everything (config, data, store) under one temp dir."""

    def __init__(self, python: str, base: Path, upstream: bool) -> None:
        self.python = python
        self.base = base
        self.root = base / "root"
        self.port = _free_port()
        self.token = uuid.uuid4().hex
        self.upstream = upstream
        self.proc: subprocess.Popen[bytes] | None = None
        self.logs: list[Path] = []
        self.env = self._environment()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        for name in ("config", "data", "runtime"):
            (self.base / name).mkdir(exist_ok=True)
        env.update(
            JUPYTER_CONFIG_DIR=str(self.base / "config"),
            JUPYTER_DATA_DIR=str(self.base / "data"),  # file-id database lives here
            JUPYTER_RUNTIME_DIR=str(self.base / "runtime"),
            JUPYTER_PLATFORM_DIRS="1",
        )
        env.pop("JUPYTER_NO_CONFIG", None)
        # No news toast over the notebook, no requests to the internet.
        settings = (
            self.base / "config" / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
        )
        settings.mkdir(parents=True, exist_ok=True)
        (settings / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False})
        )
        # Same values under both extensions' class names; each reads its own.
        config = {
            "YStoreExtension": {"document_save_delay": SAVE_DELAY},
            "YDocExtension": {"document_save_delay": SAVE_DELAY},
            "SQLiteYStore": {"db_path": str(self.base / "ystore.db")},
        }
        (self.base / "config" / "jupyter_server_config.json").write_text(
            json.dumps(config, indent=1)
        )
        return env

    def command(self) -> list[str]:
        ours, theirs = ("False", "True") if self.upstream else ("True", "False")
        return [
            self.python, "-m", "jupyterlab",
            "--no-browser", "--allow-root",
            "--ip=127.0.0.1", f"--port={self.port}", "--port-retries=0",
            f"--ServerApp.root_dir={self.root}",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.jpserver_extensions=jupyter_ystore={ours}",
            f"--ServerApp.jpserver_extensions=jupyter_server_ydoc={theirs}",
            "--KernelSpecManager.allowed_kernelspecs=__none__",  # no kernel to start or orphan
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]  # fmt: skip

    def start(self) -> None:
        log = self.base / f"server-{len(self.logs) + 1}.log"
        self.logs.append(log)
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                self.command(), cwd=self.root, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        _wait_for(
            f"jupyter lab to answer on {self.url} (log: {log})", self._ready, START_TIMEOUT, 0.2
        )

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(
                f"jupyter lab exited with code {self.proc.returncode} while starting"
            )
        try:
            status, _ = self.request("GET", "/api/status")
        except OSError:
            return False
        return status == 200

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path, data=data, method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(errors="replace")[:500]

    def open_session(self, path: str) -> dict[str, Any]:
        """What the front end does first: PUT the collaboration session of ``path``."""
        quoted = urllib.parse.quote(path, safe="")
        status, reply = self.request(
            "PUT", f"/api/collaboration/session/{quoted}", {"format": "json", "type": "notebook"}
        )
        assert status in (200, 201), (
            f"PUT /api/collaboration/session/{quoted} -> {status} {reply!r}"
        )
        missing = {"format", "type", "fileId", "sessionId"} - set(reply)
        assert not missing, f"session reply lacks {sorted(missing)}: {reply!r}"
        return reply

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float) -> float | None:
        """SIGTERM; seconds until exit, or None if it outlived ``timeout`` (then SIGKILL)."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
            return time.monotonic() - start
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return None

    def log_text(self) -> str:
        return "\n".join(
            f"----- {p.name} -----\n{p.read_text(errors='replace')}"
            for p in self.logs
            if p.exists()
        )


class Driver:
    """The node process driving Chromium; JSON lines both ways (see two_pages.mjs)."""

    def __init__(self, node: str, config: dict[str, Any], log: Path) -> None:
        self.log = log
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._stderr = open(log, "wb")
        self.proc = subprocess.Popen(
            [node, str(DRIVER), json.dumps(config)],
            cwd=BROWSER_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                self.events.put({"event": "garbage", "line": line.decode(errors="replace")})
        self.events.put(None)

    def send(self, cmd: str, **extra: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"cmd": cmd, **extra}) + "\n").encode())
        self.proc.stdin.flush()

    def expect(self, name: str, timeout: float = STEP_TIMEOUT) -> dict[str, Any]:
        try:
            event = self.events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"browser driver sent no {name!r} within {timeout:.0f}s") from None
        if event is None:
            raise AssertionError(
                f"browser driver exited (code {self.proc.wait(5)}) before {name!r}"
            )
        if event.get("event") != name:
            raise AssertionError(f"browser driver: expected {name!r}, got {event}")
        return event

    def expect_after(self, cmd: str, event: str, **extra: Any) -> dict[str, Any]:
        self.send(cmd, **extra)
        return self.expect(event)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("quit")
                self.proc.wait(20)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(10)
        self._stderr.close()


@pytest.mark.timeout(240)
def test_two_pages_edit_survives_sigkill(tmp_path: Path) -> None:
    tools = _browser_tools()
    python = os.environ.get("JUPYTER_YSTORE_BROWSER_PYTHON", sys.executable)
    upstream = "JUPYTER_YSTORE_BROWSER_PYTHON" in os.environ and _has_module(
        python, "jupyter_server_ydoc"
    )
    kill_after = os.environ.get("JUPYTER_YSTORE_BROWSER_KILL_AFTER", "relay")
    assert kill_after in ("relay", "file"), f"JUPYTER_YSTORE_BROWSER_KILL_AFTER={kill_after!r}"

    server = LabServer(python, tmp_path, upstream)
    server.root.mkdir()
    notebook = server.root / NOTEBOOK
    _write_notebook(notebook)
    marker = f"# ystore-e2e-{uuid.uuid4().hex[:10]}"
    driver: Driver | None = None
    t0 = time.monotonic()

    def step(name: str) -> None:  # timings, shown with -s or on failure
        print(f"[{time.monotonic() - t0:6.2f}s] {name}")

    try:
        server.start()
        step("server started")
        first_session = server.open_session(NOTEBOOK)
        driver = Driver(
            tools["node"],
            {
                "baseUrl": server.url,
                "token": server.token,
                "notebook": NOTEBOOK,
                "marker": marker,
                "screenshotDir": str(tmp_path / "screenshots"),
                "timeoutMs": int(STEP_TIMEOUT * 1000 / 2),
                "chromium": tools["chromium"],
            },
            tmp_path / "driver.log",
        )
        edited = driver.expect("edited", timeout=STEP_TIMEOUT * 2)
        step("A and B open, edit seen in B")
        assert edited["cellsA"] == edited["cellsB"] == 2, edited

        if kill_after == "file":
            _wait_for(
                "the edit in the .ipynb before the kill",
                lambda: marker in "".join(_cell_sources(notebook)),
                30,
            )
        server.kill()
        step("server SIGKILLed")
        saved_before_kill = marker in "".join(_cell_sources(notebook))
        if kill_after == "relay":
            assert not saved_before_kill, (
                "the .ipynb already held the edit when the server was killed; with "
                f"document_save_delay={SAVE_DELAY} this test cannot tell whether the store "
                "restored it"
            )
        # A stays open across the restart, as a forgotten tab (or a closed laptop) would, and
        # is typed in while the server is down.
        driver.send("close_pages", names=["B"])
        driver.expect("closed")
        offline = f"# offline-{uuid.uuid4().hex[:10]}"
        driver.send("type", name="A", text=offline)
        typed = driver.expect("typed")
        step(f"typed in A while the server is down (dismissed {typed['dismissed']})")

        server.start()
        step("server restarted")
        second_session = server.open_session(NOTEBOOK)
        assert second_session["fileId"] == first_session["fileId"], (first_session, second_session)
        if not upstream:
            # the session id names the stored history, which the restart kept
            assert history_of(second_session["sessionId"]) == history_of(first_session["sessionId"]), (
                first_session,
                second_session,
            )

        driver.send("reopen")
        reopened = driver.expect("reopened")
        step("page C shows the edit")
        assert reopened["cells"] == 2, (
            f"expected the notebook's 2 cells after restart, page shows {reopened}"
        )
        assert sum(text.count(marker) for text in reopened["code"]) == 1, reopened
        # A reconnected by itself: what it typed offline reaches C, once, and A shows no
        # "Session expired" dialog.
        merged = driver.expect_after("expect_text", "text_seen", name="C", text=offline)
        step("page C shows what A typed offline")
        assert sum(text.count(offline) for text in merged["code"]) == 1, merged
        assert sum(text.count(marker) for text in merged["code"]) == 1, merged
        on_a = driver.expect_after("expect_text", "text_seen", name="A", text=offline)
        assert not any("expired" in d.lower() or "reload" in d.lower() for d in on_a["dialogs"]), on_a

        sources = _wait_for(
            "the restarted server to write the edit into the .ipynb",
            lambda: (s := _cell_sources(notebook)) and marker in "".join(s) and s,
            SAVE_DELAY + 30,
        )
        step(".ipynb on disk holds the edit")
        assert len(sources) == 2 and sources[1].count(marker) == 1, sources
        assert sources[1].startswith("x = 1"), sources
        _wait_for("A's offline text in the .ipynb", lambda: offline in "".join(_cell_sources(notebook)), 30)

        # An explicit save (Ctrl+S) answered "success" means the file holds the text now.
        marker2 = f"# saved-{uuid.uuid4().hex[:10]}"
        driver.send("save", text=marker2)
        saved = driver.expect("saved")
        step(f"Ctrl+S: {saved}")
        assert saved["dialogs"] == [], f"Ctrl+S raised a dialog: {saved}"
        assert saved["saving"] == "Saving completed", f"Ctrl+S status: {saved}"
        assert saved["dirty"] == 0, f"the tab stays dirty after a successful save: {saved}"
        sources = _cell_sources(notebook)
        assert len(sources) == 2 and marker in sources[1] and marker2 in sources[1], (
            f"'Saving completed' was shown but the .ipynb lacks the saved text: {sources}"
        )

        # Another program rewrites the file while page C has it open: the change reaches the
        # page as a small edit merged from the last save, with no dialog.
        marker3 = f"# on-disk-{uuid.uuid4().hex[:10]}"
        _edit_on_disk(notebook, f"y = 3  {marker3}")
        seen = driver.expect_after("expect_text", "text_seen", name="C", text=marker3)
        step("page C shows the on-disk edit")
        assert seen["code"] == [f"y = 3  {marker3}"], seen
        assert seen["dialogs"] == [], f"an on-disk edit raised a dialog: {seen}"

        # Shutdown with a collaborating page still connected must be prompt.
        took = server.terminate(timeout=15)
        assert took is not None, "jupyter lab ignored SIGTERM for 15 s with a page connected"
        print(f"SIGTERM to exit with page C connected: {took:.2f}s")
    except BaseException:
        if driver is not None and driver.proc.poll() is None:
            try:
                driver.send("screenshot", tag="assertion")
                driver.expect("screenshot", timeout=20)
            except (AssertionError, OSError):
                pass
        print(server.log_text())
        if (tmp_path / "driver.log").exists():
            print(
                "----- driver.log -----\n" + (tmp_path / "driver.log").read_text(errors="replace")
            )
        print(f"screenshots (if any) in {tmp_path / 'screenshots'}")
        raise
    finally:
        if driver is not None:
            driver.close()
        server.terminate(timeout=10)


def _has_module(python: str, module: str) -> bool:
    probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    return subprocess.run([python, "-c", probe], capture_output=True).returncode == 0


def test_binder_config_sets_real_traits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """binder/jupyter_server_config.py: traitlets ignores a misspelt class or trait silently,
    so check every setting names a real configurable trait and takes effect."""
    from jupyter_server.serverapp import ServerApp
    from traitlets.config.loader import PyFileConfigLoader

    from jupyter_ystore.server.app import YStoreExtension
    from jupyter_ystore.stores.sqlite.store import SQLiteYStore

    monkeypatch.setenv("HOME", str(tmp_path))
    config = PyFileConfigLoader(
        "jupyter_server_config.py", path=str(BROWSER_DIR.parent.parent / "binder")
    ).load_config()
    classes = {cls.__name__: cls for cls in (ServerApp, YStoreExtension, SQLiteYStore)}
    for section, values in config.items():
        assert section in classes, f"binder config sets unknown class {section}"
        traits = classes[section].class_traits(config=True)
        unknown = set(values) - set(traits)
        assert not unknown, f"binder config sets unknown {section} traits {sorted(unknown)}"

    extensions = config.ServerApp.jpserver_extensions.get_value({})
    assert extensions == {"jupyter_ystore": True, "jupyter_server_ydoc": False}
    assert YStoreExtension(config=config).ystore_class is SQLiteYStore
    assert SQLiteYStore("binder-check", config=config).db_path == str(
        tmp_path / ".jupyter_ystore.db"
    )
