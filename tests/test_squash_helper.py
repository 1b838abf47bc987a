"""Big squashes go to a helper process (``stores/squash_helper.py``), so that yrs holding the
GIL for the length of a squash does not stall the server's event loop. What it answers must be
what a squash here gives, errors included, and a helper that dies must cost nothing."""

from __future__ import annotations

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
