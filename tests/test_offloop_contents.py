"""``OffLoopFileContentsManager``: jupyter_server's saves, with all their file work in a
worker thread (the backup copy and ``fsync`` of the stock manager run on the event loop)."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import anyio
import nbformat
import pytest
from jupyter_server.services.contents import fileio
from nbformat.sign import MemorySignatureStore, NotebookNotary, SQLiteSignatureStore
from traitlets.config import Config
from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager
from tornado.web import HTTPError

from _server_helpers import JupyterServerProcess, append, read_sources, wait_until, write_notebook, yclient
from jupyter_ystore import OffLoopFileContentsManager

pytestmark = pytest.mark.anyio


def notebook_model(sources: list[str]) -> dict[str, Any]:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    return {"type": "notebook", "content": nb}


@asynccontextmanager
async def longest_loop_pause() -> AsyncIterator[list[float]]:
    """The longest a 10 ms sleep on the loop took (s) while the block ran, in ``[0]`` once
    it has: over 10 ms by as long as something held the loop."""
    longest = [0.0]

    async def tick() -> None:
        while True:
            before = time.monotonic()
            await anyio.sleep(0.01)
            longest[0] = max(longest[0], time.monotonic() - before)

    async with anyio.create_task_group() as tg:
        tg.start_soon(tick)
        await anyio.sleep(0.05)
        yield longest
        tg.cancel_scope.cancel()


class FileCallThreads:
    """Which threads the atomic write's backup copy and ``fsync`` ran in."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.names: list[tuple[str, bool]] = []
        copy, fsync = fileio.copy2_safe, os.fsync

        def recording_copy(*args: Any, **kwargs: Any) -> Any:
            self.names.append(("copy", threading.current_thread() is threading.main_thread()))
            return copy(*args, **kwargs)

        def recording_fsync(fd: int) -> None:
            self.names.append(("fsync", threading.current_thread() is threading.main_thread()))
            fsync(fd)

        monkeypatch.setattr(fileio, "copy2_safe", recording_copy)
        monkeypatch.setattr(fileio.os, "fsync", recording_fsync)

    def on_loop(self) -> set[str]:
        return {name for name, main in self.names if main}


@pytest.mark.parametrize("manager_class", [OffLoopFileContentsManager, AsyncLargeFileManager])
async def test_a_save_copies_and_syncs_off_the_loop_and_the_stock_one_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, manager_class: type
) -> None:
    write_notebook(tmp_path / "a.ipynb", ["a = 1"])
    (tmp_path / "b.py").write_text("b = 1\n")
    manager = manager_class(root_dir=str(tmp_path))
    threads = FileCallThreads(monkeypatch)
    await manager.save(notebook_model(["a = 2"]), "a.ipynb")
    await manager.save({"type": "file", "format": "text", "content": "b = 2\n"}, "b.py")
    assert [name for name, _ in threads.names] == ["copy", "fsync", "copy", "fsync"]
    if manager_class is OffLoopFileContentsManager:
        assert threads.on_loop() == set()
    else:  # (what the subclass is for)
        assert threads.on_loop() == {"copy", "fsync"}
    assert read_sources(tmp_path / "a.ipynb") == ["a = 2"]
    assert (tmp_path / "b.py").read_text() == "b = 2\n"


async def test_a_save_is_jupyter_servers_own_signing_checkpoints_and_hooks(tmp_path: Path) -> None:
    hooked: list[str] = []
    manager = OffLoopFileContentsManager(root_dir=str(tmp_path))
    manager.register_pre_save_hook(lambda model, path, **kw: hooked.append(f"pre {path}"))
    manager.register_post_save_hook(lambda model, os_path, **kw: hooked.append("post"))
    model = await manager.save(notebook_model(["x = 1"]), "new.ipynb")
    assert model["type"] == "notebook" and model.get("content") is None
    assert hooked == ["pre new.ipynb", "post"]
    assert await manager.checkpoints.list_checkpoints("new.ipynb")
    saved = nbformat.read(tmp_path / "new.ipynb", as_version=4)
    assert manager.notary.check_signature(saved)  # signed: the server wrote it, outputs trusted
    got = await manager.get("new.ipynb")
    assert [c["source"] for c in got["content"]["cells"]] == ["x = 1"]


async def test_a_write_that_fails_midway_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_notebook(tmp_path / "a.ipynb", ["kept = 1"])
    manager = OffLoopFileContentsManager(root_dir=str(tmp_path))

    def failing_write(nb: Any, fp: Any, **kwargs: Any) -> None:
        fp.write('{"cells": [')  # half a notebook, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nbformat, "write", failing_write)
    with pytest.raises(HTTPError) as failed:
        await manager.save(notebook_model(["lost = 1"]), "a.ipynb")
    assert failed.value.status_code == 500
    assert read_sources(tmp_path / "a.ipynb") == ["kept = 1"]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".ipynb")) == ["a.ipynb"]


@pytest.mark.parametrize("manager_class", [OffLoopFileContentsManager, AsyncLargeFileManager])
async def test_a_save_cancelled_midway_still_writes_the_whole_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, manager_class: type
) -> None:
    """A room closing while its save writes: the write finishes, nothing is half written, as
    with jupyter_server's own manager (a thread call that let go of its caller would not)."""
    write_notebook(tmp_path / "a.ipynb", ["old = 1"])
    manager = manager_class(root_dir=str(tmp_path))
    writing, real_write = threading.Event(), nbformat.write

    def slow_write(nb: Any, fp: Any, **kwargs: Any) -> None:
        writing.set()
        threading.Event().wait(0.3)
        real_write(nb, fp, **kwargs)

    monkeypatch.setattr(nbformat, "write", slow_write)
    with anyio.move_on_after(0.1):
        await manager.save(notebook_model(["new = 1"]), "a.ipynb")
    assert writing.is_set()
    assert read_sources(tmp_path / "a.ipynb") == ["new = 1"]


OURS = "jupyter_ystore.OffLoopFileContentsManager"
STOCK = "jupyter_server.services.contents.largefilemanager.AsyncLargeFileManager"


@pytest.mark.parametrize("configured", [None, OURS, STOCK])
async def test_a_server_saves_a_collaborative_edit_with_it_unless_another_is_configured(
    tmp_path: Path, configured: str | None
) -> None:
    """With no contents manager configured the server's is ours (the extension says so); one
    the user configured, even jupyter_server's own by name, is kept. Ours signs what it
    saved in its signature thread, into the server's data directory."""
    root, home = tmp_path / "root", tmp_path / "home"
    root.mkdir()
    home.mkdir()
    write_notebook(root / "a.ipynb", ["a = 1"])
    config: dict[str, Any] = {"YStoreExtension": {"document_save_delay": 0.2, "document_cleanup_delay": 0.3}}
    if configured:
        config["ServerApp"] = {"contents_manager_class": configured}
    server = JupyterServerProcess(root, home, config=config)
    server.start()
    try:
        session = server.session("a.ipynb")
        async with yclient(server.room_url(session)) as tab:
            with anyio.fail_after(20):
                await tab.synced.wait()
            append(tab.document.ycells[0]["source"], "1")
            await wait_until(lambda: read_sources(root / "a.ipynb") == ["a = 11"], timeout=20)
        log = server.log()
        ours = configured != STOCK
        assert ("saves do their file writes off the event loop (OffLoopFileContentsManager)" in log) is ours
        assert ("set c.ServerApp.contents_manager_class to choose another" in log) is (configured is None)
        assert "Traceback" not in log
        assert "Signature store" not in log  # (its "corrupted or unavailable; recreating")
        notary = NotebookNotary(data_dir=str(home / "data"))
        try:
            assert notary.check_signature(nbformat.read(root / "a.ipynb", as_version=4))
        finally:
            notary.store.close()
    finally:
        server.kill()


@pytest.mark.parametrize("manager_class", [OffLoopFileContentsManager, AsyncLargeFileManager])
async def test_a_slow_disk_does_not_stall_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, manager_class: type
) -> None:
    """A network home directory whose ``fsync`` takes 0.4 s: every room waits that long on
    the stock manager's save, on this one only the room that saves."""
    write_notebook(tmp_path / "a.ipynb", ["a = 1"])
    manager = manager_class(root_dir=str(tmp_path))
    fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        time.sleep(0.4)
        fsync(fd)

    monkeypatch.setattr(fileio.os, "fsync", slow_fsync)
    async with longest_loop_pause() as longest:
        await manager.save(notebook_model(["a = 2"]), "a.ipynb")
    assert read_sources(tmp_path / "a.ipynb") == ["a = 2"]
    if manager_class is OffLoopFileContentsManager:
        assert longest[0] < 0.2
    else:
        assert longest[0] >= 0.4


# ---------------------------------------------------------------------- signing and trust


def trusted_notebook(source: str = "x = 1") -> Any:
    """A notebook whose code cell has an HTML output the user trusted (signed on save)."""
    cell = nbformat.v4.new_code_cell(
        source, outputs=[nbformat.v4.new_output("execute_result", {"text/html": "<b>1</b>"}, execution_count=1)]
    )
    cell.metadata["trusted"] = True
    return nbformat.v4.new_notebook(cells=[cell])


def trust_flags(model: dict[str, Any]) -> list[Any]:
    return [cell["metadata"].get("trusted") for cell in model["content"]["cells"]]


class ThreadRecordingStore(SQLiteSignatureStore):
    """nbformat's SQLite signature store, noting the thread of every use (and of its opening)."""

    threads: list[str] = []

    def _connect_db(self, db_file: str) -> Any:
        self.threads.append(threading.current_thread().name)
        return super()._connect_db(db_file)

    def check_signature(self, digest: Any, algorithm: Any) -> bool:
        self.threads.append(threading.current_thread().name)
        return super().check_signature(digest, algorithm)

    def store_signature(self, digest: Any, algorithm: Any) -> None:
        self.threads.append(threading.current_thread().name)
        super().store_signature(digest, algorithm)


def notary_config(tmp_path: Path, **notary: Any) -> Config:
    (tmp_path / "data").mkdir(exist_ok=True)
    return Config({"NotebookNotary": {"data_dir": str(tmp_path / "data"), **notary}})


@pytest.mark.parametrize("manager_class", [OffLoopFileContentsManager, AsyncLargeFileManager])
async def test_signatures_are_stored_and_checked_in_one_thread_of_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, manager_class: type
) -> None:
    """Saves sign, opens check, in the notary's own thread (an SQLite connection is its
    thread's); the stock manager does both on the event loop."""
    monkeypatch.setattr(ThreadRecordingStore, "threads", [])
    db_file = str(tmp_path / "data" / "nbsignatures.db")
    config = notary_config(tmp_path, store_factory=lambda: ThreadRecordingStore(db_file))
    manager = manager_class(root_dir=str(tmp_path), config=config)
    await manager.save({"type": "notebook", "content": trusted_notebook()}, "a.ipynb")
    assert trust_flags(await manager.get("a.ipynb")) == [True]
    # A new server (a new manager, the same database) trusts what this one signed.
    again = manager_class(root_dir=str(tmp_path), config=notary_config(tmp_path))
    assert trust_flags(await again.get("a.ipynb")) == [True]
    used = ThreadRecordingStore.threads
    assert len(used) >= 4  # opened, checked and stored on save, checked on open
    if manager_class is OffLoopFileContentsManager:
        assert set(used) == {"ystore-signatures_0"}
    else:
        assert set(used) == {"MainThread"}


async def test_a_notebook_nobody_trusted_opens_untrusted_and_the_trust_endpoint_signs_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manager = OffLoopFileContentsManager(root_dir=str(tmp_path), config=notary_config(tmp_path))
    nb = trusted_notebook()
    del nb.cells[0].metadata["trusted"]  # an output from elsewhere: not signed on save
    await manager.save({"type": "notebook", "content": nb}, "a.ipynb")
    with caplog.at_level("WARNING"):
        assert trust_flags(await manager.get("a.ipynb")) == [False]
    assert "Notebook a.ipynb is not trusted" in caplog.text
    await manager.trust_notebook("a.ipynb")  # jupyter_server's own, calling it synchronously
    assert trust_flags(await manager.get("a.ipynb")) == [True]


async def test_a_signature_store_that_fails_is_made_again_in_its_thread(tmp_path: Path) -> None:
    """jupyter_server remakes a failing store and signs again, from inside the signing call:
    that must not wait for its own thread."""
    made: list[str] = []

    class FailsOnce(MemorySignatureStore):
        def store_signature(self, digest: Any, algorithm: Any) -> None:
            if len(made) == 1:
                raise sqlite3.OperationalError("disk I/O error")
            super().store_signature(digest, algorithm)

    def factory() -> MemorySignatureStore:
        made.append(threading.current_thread().name)
        return FailsOnce()

    manager = OffLoopFileContentsManager(root_dir=str(tmp_path), config=notary_config(tmp_path, store_factory=factory))
    with anyio.fail_after(10):
        await manager.save({"type": "notebook", "content": trusted_notebook("x = 1")}, "a.ipynb")
        assert made == ["ystore-signatures_0", "ystore-signatures_0"]  # failed, remade
        assert read_sources(tmp_path / "a.ipynb") == ["x = 1"]  # the save itself went on
        # (jupyter_server's retry finds the trust flags it took off: that save stays unsigned)
        await manager.save({"type": "notebook", "content": trusted_notebook("x = 2")}, "a.ipynb")
        assert trust_flags(await manager.get("a.ipynb")) == [True]  # signed in the new store


@pytest.mark.parametrize("manager_class", [OffLoopFileContentsManager, AsyncLargeFileManager])
async def test_a_slow_signature_database_does_not_stall_the_event_loop(tmp_path: Path, manager_class: type) -> None:
    """The signatures in a home directory on a file server: a commit there is several fsyncs.
    Each save and each open waits for them; with the stock manager every room does."""
    class Slow(MemorySignatureStore):
        def check_signature(self, digest: Any, algorithm: Any) -> bool:
            time.sleep(0.3)
            return super().check_signature(digest, algorithm)

        def store_signature(self, digest: Any, algorithm: Any) -> None:
            time.sleep(0.3)
            super().store_signature(digest, algorithm)

    manager = manager_class(root_dir=str(tmp_path), config=notary_config(tmp_path, store_factory=Slow))
    manager.notary  # (made ahead: its making is not what is measured)
    async with longest_loop_pause() as longest:
        await manager.save({"type": "notebook", "content": trusted_notebook()}, "a.ipynb")
        assert trust_flags(await manager.get("a.ipynb")) == [True]
    if manager_class is OffLoopFileContentsManager:
        assert longest[0] < 0.2
    else:
        assert longest[0] >= 0.3
