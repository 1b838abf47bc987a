"""Big squashes go to a helper process (``stores/squash_helper.py``), so that yrs holding the
GIL for the length of a squash does not stall the server's event loop; in a server, so does
every compaction's whole CPU work (``run``). What it answers must be what the same work here
gives, errors included, and a helper that dies must cost nothing."""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pycrdt
import pytest

from jupyter_ystore import YStoreCorruptError
from jupyter_ystore.core import ydoc as _ydoc
from jupyter_ystore.stores import compaction, squash_helper
from test_compaction_at_close import typed as typed_keys


def typed(count: int) -> list[bytes]:
    return typed_keys(count, then_delete=min(5, count))


@pytest.fixture
def helper(monkeypatch: pytest.MonkeyPatch) -> squash_helper._Helper:
    """A helper of this test's own that every squash uses (no size threshold)."""
    own = squash_helper._Helper()
    monkeypatch.setattr(squash_helper, "_HELPER", own)
    monkeypatch.setattr(squash_helper, "MIN_BYTES", 0)
    yield own
    own.shutdown()


def test_the_helper_answers_what_a_squash_here_gives(helper: squash_helper._Helper) -> None:
    updates = typed(500)
    assert compaction.squash(updates, "doc") == _ydoc.squash_clean(updates)
    assert helper._process is not None and helper._process.poll() is None
    # a hole: the snapshot keeps what waits for it, and is not clean
    holed = updates[:100] + updates[101:]
    snapshot, clean = compaction.squash(holed, "doc")
    assert (snapshot, clean) == _ydoc.squash_clean(holed) and clean is False


def test_the_helper_runs_at_a_lower_cpu_priority_than_the_server(
    helper: squash_helper._Helper,
) -> None:
    """Compactions must not take a core from the event loop: the helper is niced."""
    answer = helper.call(os.nice, (0,))
    assert answer is not None
    assert answer[0] == min(19, os.nice(0) + squash_helper.NICENESS)


def test_an_update_that_is_not_yjs_raises_as_here(helper: squash_helper._Helper) -> None:
    with pytest.raises(YStoreCorruptError):
        compaction.squash([*typed(8), b"\x01\xff\xff\xff"], "doc")
    assert compaction.squash(typed(8), "doc")[1] is True  # the helper still serves


def test_a_helper_that_died_is_replaced_every_time(helper: squash_helper._Helper) -> None:
    """Only failures in a row turn the helper off: one killed (by the OOM killer, say) every
    so often over a server's life is replaced each time."""
    updates = typed(50)
    expected = _ydoc.squash_clean(updates)
    assert compaction.squash(updates, "doc") == expected
    for _ in range(4):
        dead = helper._process
        assert dead is not None
        dead.kill()
        dead.wait()
        assert compaction.squash(updates, "doc") == expected
        assert helper._process is not None and helper._process is not dead
    assert helper._failures == 0 and helper._process.poll() is None


def test_small_histories_and_turning_it_off_squash_here(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    own = squash_helper._Helper()
    monkeypatch.setattr(squash_helper, "_HELPER", own)
    updates = typed(50)
    assert compaction.squash(updates, "doc") == _ydoc.squash_clean(updates)  # under MIN_BYTES
    monkeypatch.setattr(squash_helper, "MIN_BYTES", 0)
    monkeypatch.setenv(squash_helper.ENV, "0")
    assert compaction.squash(updates, "doc") == _ydoc.squash_clean(updates)
    assert own._process is None  # never started


@pytest.mark.anyio
async def test_a_long_uncompacted_sqlite_history_loads_through_the_helper(
    tmp_path: Any, helper: squash_helper._Helper
) -> None:
    """A history longer than a load merges (a legacy database nobody compacted) is squashed
    to load it: in the helper when it is big (here: always), with the same document."""
    from jupyter_ystore import SQLiteYStore
    from jupyter_ystore.stores.sqlite.store import _LONG_TAIL

    db = str(tmp_path / "y.db")
    updates = typed(_LONG_TAIL + 50)
    expected = pycrdt.Doc()
    for update in updates:
        expected.apply_update(update)
    async with SQLiteYStore("doc", db_path=db, compact_after_updates=0, compact_after_bytes=0) as store:
        for update in updates:
            await store.write(update)
    async with SQLiteYStore("doc", db_path=db, compact_after_updates=0, compact_after_bytes=0) as store:
        doc = pycrdt.Doc()
        await store.apply_updates(doc)
        assert store.load_problem is None
    assert str(doc.get("source", type=pycrdt.Text)) == str(expected.get("source", type=pycrdt.Text))
    assert helper._process is not None  # the squash went there


# ------------------------------------------------------- a server's compactions, whole


def test_calls_go_to_the_helper_only_while_offloading(helper: squash_helper._Helper) -> None:
    """``run`` is the identity of ``func(*args)``: here by default, in the helper process
    while a server offloads its compactions, and here again once it stops."""
    assert squash_helper.run(os.getpid) == os.getpid()
    assert helper._process is None
    squash_helper.offload_compactions(True)
    assert squash_helper.run(os.getpid) != os.getpid()
    assert helper._process is not None and squash_helper.run(os.getpid) == helper._process.pid
    assert squash_helper.run(divmod, 17, 5) == (3, 2)
    squash_helper.offload_compactions(False)
    assert squash_helper.run(os.getpid) == os.getpid()


def test_turning_the_helper_off_keeps_calls_here(
    helper: squash_helper._Helper, monkeypatch: pytest.MonkeyPatch
) -> None:
    squash_helper.offload_compactions(True)
    monkeypatch.setenv(squash_helper.ENV, "0")
    assert squash_helper.run(os.getpid) == os.getpid()
    assert helper._process is None


def test_a_call_that_raises_there_raises_here_as_here(
    helper: squash_helper._Helper, caplog: pytest.LogCaptureFixture
) -> None:
    """The exception a caller sees is the one the code here raises (no exception crosses the
    pipe), the helper goes on serving, and what cannot be pickled runs here."""
    squash_helper.offload_compactions(True)
    asked: list[Any] = []
    real_call = helper.call
    helper.call = lambda func, args, **kw: asked.append(real := real_call(func, args, **kw)) or real  # type: ignore[method-assign]
    with pytest.raises(ValueError, match="invalid literal"):
        squash_helper.run(int, "not a number")
    assert asked == [None]  # it went there first, and raised there
    alive = helper._process
    assert alive is not None and alive.poll() is None
    assert squash_helper.run(os.getpid) == alive.pid
    assert squash_helper.run(lambda: os.getpid()) == os.getpid()  # a lambda does not pickle
    assert "cannot go to the helper process" in caplog.text


def test_a_call_that_must_not_wait_runs_here_while_the_helper_is_busy_or_not_up(
    helper: squash_helper._Helper,
) -> None:
    """``run_if_idle`` (a room reading its file) goes to the helper only when it is up and
    free: never behind another call (a compaction's long squash), never waiting for it to
    start; ``warm_up`` starts it without waiting."""
    assert squash_helper.run_if_idle(os.getpid) == os.getpid()  # not offloading
    squash_helper.offload_compactions(True)
    assert squash_helper.run_if_idle(os.getpid) == os.getpid()  # not up, and not started
    assert helper._process is None
    squash_helper.warm_up()
    deadline = time.monotonic() + 30
    while (helper._process is None or helper._lock.locked()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert helper._process is not None
    assert squash_helper.run_if_idle(os.getpid) == helper._process.pid  # up and free

    started = threading.Event()

    def long_call() -> None:
        started.set()
        squash_helper.run(time.sleep, 1.0)

    busy = threading.Thread(target=long_call)
    busy.start()
    started.wait()
    while not helper._lock.locked():
        time.sleep(0.001)
    begun = time.monotonic()
    assert squash_helper.run_if_idle(os.getpid) == os.getpid()  # busy: here, at once
    assert time.monotonic() - begun < 0.5
    busy.join()
    assert squash_helper.run_if_idle(os.getpid) == helper._process.pid

    helper._process.kill()  # died since: here, without waiting for a new one to start
    helper._process.wait()
    begun = time.monotonic()
    assert squash_helper.run_if_idle(os.getpid) == os.getpid()
    assert time.monotonic() - begun < 0.2
    assert squash_helper.run(os.getpid) not in (os.getpid(), None)  # run starts a new one


def test_a_helper_killed_between_calls_is_replaced(helper: squash_helper._Helper) -> None:
    squash_helper.offload_compactions(True)
    first = squash_helper.run(os.getpid)
    assert helper._process is not None
    helper._process.kill()
    helper._process.wait()
    second = squash_helper.run(os.getpid)
    assert second not in (first, os.getpid())  # a new helper answered


def _tables(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    with closing(sqlite3.connect(db)) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {name: sorted(map(tuple, conn.execute(f'SELECT * FROM "{name}"')), key=repr) for name in names}


@pytest.mark.anyio
async def test_a_sqlite_compaction_in_the_helper_writes_what_one_here_writes(
    tmp_path: Path, helper: squash_helper._Helper
) -> None:
    """The same database compacted twice, once with its squash and history plan in the
    helper, once here: the very same rows, history points included."""
    from jupyter_ystore import SQLiteYStore

    source = tmp_path / "source.db"
    async with SQLiteYStore("doc", db_path=str(source), compact_after_updates=0, compact_after_bytes=0) as store:
        for update in typed(400):
            await store.write(update)
        await store.compact()  # a history point and a snapshot to plan over next
        for update in typed(300)[-200:]:
            await store.write(update)
    asked: list[str] = []
    real_call = helper.call
    helper.call = lambda func, args, **kw: asked.append(func.__name__) or real_call(func, args, **kw)  # type: ignore[method-assign]
    results = {}
    for offloading in (False, True):
        db = tmp_path / f"offloading-{offloading}.db"
        shutil.copyfile(source, db)
        squash_helper.offload_compactions(offloading)
        async with SQLiteYStore("doc", db_path=str(db), compact_after_updates=0, compact_after_bytes=0) as store:
            await store.compact()
        results[offloading] = _tables(db)
    # the second compaction went there whole (the first's squash alone: MIN_BYTES is 0 here)
    assert asked == ["squash_clean", "_prepare"]
    assert results[True] == results[False]
    assert any(len(rows) > 0 for name, rows in results[True].items() if "history" in name)
