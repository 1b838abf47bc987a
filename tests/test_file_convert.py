"""A room reads its file into a document away from the event loop (``file_convert``) when it
opens: the first time (the store does not hold it) and after the file changed on disk."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import anyio
import pytest
from jupyter_ydoc import YNotebook
from pycrdt import Doc

from jupyter_ystore.server.rooms import file_convert
from jupyter_ystore.stores import squash_helper
from _server_helpers import read_sources, wait_until, write_notebook
from test_rooms import ROOM, Setup, fresh_store_class, run_manager

pytestmark = pytest.mark.anyio


def recording_threads(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[int]]:
    """The thread of each call of ``file_convert``'s two conversions, by name."""
    threads: dict[str, list[int]] = {"load_update": [], "as_document_has_it": []}
    for name in threads:
        convert = getattr(file_convert, name)

        def recorded(*args: Any, _convert: Any = convert, _name: str = name) -> Any:
            threads[_name].append(threading.get_ident())
            return _convert(*args)

        monkeypatch.setattr(file_convert, name, recorded)
    return threads


async def test_a_first_open_and_an_open_after_a_change_on_disk_read_the_file_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup = Setup(tmp_path, fresh_store_class())
    write_notebook(setup.nb, ["a = 1", "b = 2"])
    threads = recording_threads(monkeypatch)
    loop_thread = threading.get_ident()
    manager = setup.manager()
    async with anyio.create_task_group() as tg:
        await run_manager(manager, tg)
        room = await manager.get_room(ROOM)
        assert [cell["source"] for cell in room.document.get()["cells"]] == ["a = 1", "b = 2"]
        assert len(threads["load_update"]) == 1 and loop_thread not in threads["load_update"]
        await room.close()

        await anyio.sleep(0.05)  # a later modification time
        write_notebook(setup.nb, ["a = 1", "b = 2", "c = 3"])  # changed on disk while closed
        room = await manager.get_room(ROOM)  # from the store, then compared with the file
        assert [cell["source"] for cell in room.document.get()["cells"]] == ["a = 1", "b = 2", "c = 3"]
        assert threads["as_document_has_it"] and loop_thread not in threads["as_document_has_it"]
        assert len(threads["load_update"]) == 1
        await manager.close_all()
        tg.cancel_scope.cancel()
    assert read_sources(setup.nb) == ["a = 1", "b = 2", "c = 3"]


def as_loaded(update: bytes) -> tuple[bytes, Any]:
    """What a load update holds: the items' ids and the notebook they make. (Its bytes are
    not always the same: pycrdt writes the keys of a JSON value, a kernelspec's, in the
    order of a Rust hash map.)"""
    document = YNotebook(Doc())
    document.ydoc.apply_update(update)
    return document.ydoc.get_state(), document.get()


async def test_a_server_reads_files_into_documents_in_its_helper_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the server offloads, the conversion runs in the helper process: here it cannot
    (``file_document`` raises in this process), and the room opens with the file's content,
    the same history as a load here would give."""
    own = squash_helper._Helper()
    monkeypatch.setattr(squash_helper, "_HELPER", own)
    squash_helper.offload_compactions(True)
    squash_helper.warm_up()
    await wait_until(lambda: own._process is not None and not own._lock.locked(), timeout=30)
    setup = Setup(tmp_path, fresh_store_class())
    write_notebook(setup.nb, ["x = 1", "y = 2"])
    content = (await setup.contents.get("nb.ipynb", content=True))["content"]
    expected_update, expected_content = file_convert.load_update("notebook", content)

    def not_here(*_args: Any) -> Any:
        raise AssertionError("read into a document in the server's own process")

    monkeypatch.setattr(file_convert, "file_document", not_here)
    try:
        update, loaded = await file_convert.load("notebook", content)
        assert loaded == expected_content
        assert as_loaded(update) == as_loaded(expected_update)
        manager = setup.manager()
        async with anyio.create_task_group() as tg:
            await run_manager(manager, tg)
            room = await manager.get_room(ROOM)
            assert [cell["source"] for cell in room.document.get()["cells"]] == ["x = 1", "y = 2"]
            await manager.close_all()
            tg.cancel_scope.cancel()
        assert own._process is not None and own._process.poll() is None
    finally:
        squash_helper.offload_compactions(False)
        own.shutdown()
    with pytest.raises(AssertionError, match="own process"):  # and here it would have failed
        await file_convert.load("notebook", content)
