"""A store closed right after its history passed a compaction threshold compacts before it
closes (the room of a notebook is often closed a moment after its last edits): the next open
reads one snapshot, not the whole tail. Below the threshold nothing is compacted."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import anyio
import pytest
from _compacting_stores import MAKER_IDS, MAKERS, THRESHOLD, content, records, sqlite_maker, typed

from jupyter_ystore import BaseYStore

pytestmark = pytest.mark.anyio


@pytest.fixture(params=MAKERS, ids=MAKER_IDS)
def make(request: Any, tmp_path: Path) -> Callable[[str], BaseYStore]:
    return request.param(tmp_path, request)


@pytest.mark.parametrize("turns", [0, 1, 3, 10])
async def test_a_store_closed_past_the_threshold_reopens_as_one_snapshot(
    make: Callable[[str], BaseYStore], turns: int
) -> None:
    # ``turns``: event-loop turns between the last write and the close, so that the close
    # lands before, during and after the background compaction it asked for.
    # The last write passes the threshold (SQLite and PostgreSQL count the updates after
    # the snapshot, >= THRESHOLD; FileYStore the records after its first, > THRESHOLD).
    updates = typed(THRESHOLD + 1)
    async with make("doc") as store:
        for update in updates:
            await store.write(update)
        for _ in range(turns):
            await anyio.sleep(0)
    async with make("doc") as store:
        assert await records(store) <= 2  # a snapshot (and the write after it, if any)
        assert await content(store) == ("abcdefghij" * 3)[: THRESHOLD + 1]


async def test_below_the_threshold_nothing_is_compacted(make: Callable[[str], BaseYStore]) -> None:
    updates = typed(THRESHOLD - 5)
    async with make("doc") as store:
        for update in updates:
            await store.write(update)
    async with make("doc") as store:
        assert await records(store) == THRESHOLD - 5
        assert await content(store) == ("abcdefghij" * 2)[: THRESHOLD - 5]


async def test_a_failing_compaction_at_close_leaves_the_history_and_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from jupyter_ystore.stores.sqlite import compact

    async def broken(*args: Any, **kwargs: Any) -> bool:
        raise OSError("disk gone")

    make = sqlite_maker(tmp_path)
    updates = typed(THRESHOLD + 5)
    monkeypatch.setattr(compact.Compactor, "compact", broken)
    async with make("doc") as store:
        for update in updates:
            await store.write(update)
    assert "automatic compaction of 'doc' failed" in caplog.text
    monkeypatch.undo()
    async with make("doc") as store:
        assert await records(store) == THRESHOLD + 5  # nothing lost, nothing compacted
        assert await content(store) == ("abcdefghij" * 3)[: THRESHOLD + 5]
