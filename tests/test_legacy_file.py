"""Log files written by ypy-websocket 0.12.4 and pycrdt-store 0.1.5 open in place, and a
crash in the middle of a write loses only the torn record."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pycrdt
import pytest

from jupyter_ystore import FileYStore, YDocNotFound
from jupyter_ystore.stores.file.store import HEADER

pytestmark = pytest.mark.anyio

LOG = logging.getLogger("test_legacy_file")
LEGACY_FILES = ["ypy_file_v2.y", "pycrdt_file_v2.y"]


def content_of(doc: Any) -> dict:
    """The three roots of the legacy documents, as plain Python (pycrdt or y_py doc)."""
    if isinstance(doc, pycrdt.Doc):
        return {
            "source": str(doc.get("source", type=pycrdt.Text)),
            "meta": doc.get("meta", type=pycrdt.Map).to_py(),
            "cells": doc.get("cells", type=pycrdt.Array).to_py(),
        }
    source, meta, cells = doc.get_text("source"), doc.get_map("meta"), doc.get_array("cells")
    return {
        "source": str(source),
        "meta": json.loads(meta.to_json()),
        "cells": json.loads(cells.to_json()),
    }


@pytest.mark.parametrize("name", LEGACY_FILES)
async def test_legacy_file_opens_in_place_and_keeps_growing(
    name: str, legacy_copy, legacy_expected: dict
) -> None:
    import y_py

    expected = legacy_expected[name]
    path = legacy_copy(name)
    original = path.read_bytes()
    folder = sorted(p.name for p in path.parent.iterdir())
    async with FileYStore(name, root_dir=str(path.parent)) as store:
        records = [record async for record in store.read()]
        assert len(records) == expected["updates"]
        assert {metadata for _, metadata, _ in records} == {expected["metadata"].encode()}
        timestamps = [ts for _, _, ts in records]
        assert timestamps == sorted(timestamps) and timestamps[0] > 1.5e9
        doc = pycrdt.Doc()
        await store.apply_updates(doc)
        assert content_of(doc) == expected["content"]
        ypy_doc = y_py.YDoc()
        await store.apply_updates(ypy_doc)
        assert content_of(ypy_doc) == expected["content"]
        # keep writing to it, with y_py this time
        with ypy_doc.begin_transaction() as txn:
            ypy_doc.get_text("source").extend(txn, "\n# more")
        await store.encode_state_as_update(ypy_doc)
    assert path.read_bytes().startswith(original)  # appended, never rewritten
    assert sorted(p.name for p in path.parent.iterdir()) == folder  # nothing moved aside
    async with FileYStore(name, root_dir=str(path.parent)) as store:
        assert len([r async for r in store.read()]) == expected["updates"] + 1
        doc = pycrdt.Doc()
        await store.apply_updates(doc)
        assert content_of(doc) == {
            **expected["content"],
            "source": expected["content"]["source"] + "\n# more",
        }


def make_updates(n: int) -> list[bytes]:
    doc = pycrdt.Doc()
    text = doc.get("source", type=pycrdt.Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    for i in range(n):
        text += f"{i};"
    return updates


async def test_crash_mid_write_keeps_all_but_the_torn_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    n = 30
    updates = make_updates(n + 5)
    target = tmp_path / "docs" / "doc.y"
    async with FileYStore(str(target)) as store:
        for update in updates[:n]:
            await store.write(update)
        sizes = [len(u) for u in updates[:n]]
    data = target.read_bytes()
    last_record = len(updates[n - 1]) + 1 + 1 + 9  # update, its length, empty metadata, stamp
    cut = len(data) - last_record // 2  # the crash came in the middle of the last record
    target.write_bytes(data[:cut])

    with caplog.at_level(logging.WARNING, logger=LOG.name):
        async with FileYStore(str(target), log=LOG) as store:
            records = [r async for r in store.read()]
            assert [r[0] for r in records] == updates[: n - 1]
            assert [len(r[0]) for r in records] == sizes[:-1]
            warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == LOG.name]
            assert len(warnings) == 1 and "torn" in warnings[0].getMessage()
            [aside] = list(target.parent.glob("doc.y.torn-*"))
            assert aside.read_bytes() == data[len(data) - last_record : cut]
            assert target.read_bytes() == data[: len(data) - last_record]
            # the lost update arrives again (a client resends it), and more after it
            for update in updates[n - 1 :]:
                await store.write(update)

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        async with FileYStore(str(target), log=LOG) as store:
            doc = pycrdt.Doc()
            await store.apply_updates(doc)
            assert str(doc.get("source", type=pycrdt.Text)) == "".join(
                f"{i};" for i in range(n + 5)
            )
            assert len([r async for r in store.read()]) == n + 5
    # repaired once, quiet after (the store's own log: another test's leftover background
    # task may log on its logger meanwhile)
    assert not [r for r in caplog.records if r.name == LOG.name]
    assert len(list(target.parent.glob("doc.y.torn-*"))) == 1


async def test_crash_before_the_first_record_completes(tmp_path: Path) -> None:
    target = tmp_path / "doc.y"
    target.write_bytes(HEADER + b"\x11\x01\x01")  # header and a few bytes of record 1
    async with FileYStore(str(target), log=LOG) as store:
        with pytest.raises(YDocNotFound):
            [r async for r in store.read()]
        await store.write(b"\x00\x00")
        assert len([r async for r in store.read()]) == 1
