"""What loading checks: a snapshot our compaction wrote is trusted as it is (it was encoded
from a document), but the updates after it are still checked, so a history with a hole after
a compaction is reported (``load_problem``), never loaded silently short."""

from __future__ import annotations

from typing import Callable

import pycrdt
import pytest

from jupyter_ystore import BaseYStore
from test_compaction_at_close import make, typed  # noqa: F401  (fixture)

pytestmark = pytest.mark.anyio


def two_authors() -> tuple[list[bytes], list[bytes]]:
    """Ten keystrokes of one client, then two of another made on top of them."""
    first = typed(10)
    doc = pycrdt.Doc()
    for update in first:
        doc.apply_update(update)
    text = doc.get("source", type=pycrdt.Text)
    second: list[bytes] = []
    doc.observe(lambda event: second.append(event.update))
    text += "X"
    text += "Y"
    return first, second


async def test_a_hole_after_a_snapshot_is_reported(make: Callable[[str], BaseYStore]) -> None:  # noqa: F811
    first, second = two_authors()
    async with make("doc") as store:
        for update in first:
            await store.write(update)
        await store.compact()
        await store.write(second[1])  # its predecessor second[0] was never stored
    async with make("doc") as store:
        doc = pycrdt.Doc()
        await store.apply_updates(doc)
        assert store.load_problem is not None
        assert "wait for earlier ones" in store.load_problem


async def test_a_snapshot_and_a_whole_tail_load_cleanly(make: Callable[[str], BaseYStore]) -> None:  # noqa: F811
    first, second = two_authors()
    async with make("doc") as store:
        for update in first:
            await store.write(update)
        await store.compact()
        for update in second:
            await store.write(update)
    for _ in range(2):  # with a tail, then as the lone snapshot left by compacting at close
        async with make("doc") as store:
            doc = pycrdt.Doc()
            await store.apply_updates(doc)
            assert store.load_problem is None
            assert str(doc.get("source", type=pycrdt.Text)) == "abcdefghijXY"
            await store.compact()
