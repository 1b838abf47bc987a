"""Time travel, history grouping, times, and document content (export and restore updates)."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import pycrdt
import pytest
from jupyter_ydoc import YNotebook
from pycrdt import Array, Doc, Map, Text

from jupyter_ystore import MemoryYStore
from jupyter_ystore.core.keys import key_document_type, key_file_id
from jupyter_ystore.core.content import (
    ContentError,
    detect_kind,
    export,
    reset_update,
    root_types,
    to_py,
)
from jupyter_ystore.core.history import (
    History,
    HistoryError,
    Record,
    describe_metadata,
    format_time,
    group_points,
    parse_time,
    read_history,
)


def apply_all(*updates: bytes) -> Doc:
    doc = Doc()
    for update in updates:
        doc.apply_update(update)
    return doc


def notebook(cells: list[tuple[str, str]]) -> dict:
    return {
        "cells": [
            {"cell_type": "code", "source": src, "metadata": {}, "outputs": [], "execution_count": None, "id": cid}
            for cid, src in cells
        ],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


# ---------------------------------------------------------------------------- state at a time


def test_state_at_selects_records_by_time():
    doc = Doc()
    text = doc.get("source", type=Text)
    rows = []
    for i, piece in enumerate(["a", "b", "c"]):
        before = doc.get_state()
        text += piece
        rows.append((doc.get_update(before), b"", 100.0 + i))
    history = History.from_rows("k", rows)
    assert to_py(history.state_at(100.0)) == {"source": "a"}
    assert to_py(history.state_at(101.5)) == {"source": "ab"}
    assert to_py(history.state_at(None)) == {"source": "abc"}
    with pytest.raises(HistoryError, match="before the oldest stored record"):
        history.state_at(99.9)


def test_state_before_a_snapshot_is_an_error_not_an_empty_document():
    doc = Doc()
    doc.get("source", type=Text).insert(0, "snap")
    history = History.from_rows("k", [(doc.get_update(), b"", 200.0)], snapshots=1)
    assert history.records[0].snapshot
    with pytest.raises(HistoryError, match="a snapshot: older history was compacted"):
        history.state_at(150.0)
    assert to_py(history.state_at(200.0)) == {"source": "snap"}


def test_legacy_checkpoint_first_but_newer_keeps_older_states_reachable():
    # pycrdt-store layout: the checkpoint is read first, yet the rows it covers are older.
    doc = Doc()
    text = doc.get("source", type=Text)
    rows = []
    for i, piece in enumerate("xyz"):
        before = doc.get_state()
        text += piece
        rows.append((doc.get_update(before), b"", 10.0 + i))
    checkpoint = apply_all(rows[0][0], rows[1][0]).get_update()
    history = History.from_rows("k", [(checkpoint, b"", 11.0), *rows], snapshots=1)
    assert to_py(history.state_at(10.0)) == {"source": "x"}
    assert to_py(history.state_at(11.0)) == {"source": "xy"}
    assert to_py(history.state_at(12.0)) == {"source": "xyz"}


@pytest.mark.anyio
async def test_read_history_from_a_store():
    class Store(MemoryYStore):
        pass

    async with Store("doc", metadata_callback=lambda: b"alice") as store:
        doc = Doc()
        text = doc.get("source", type=Text)
        for piece in ("one ", "two"):
            before = doc.get_state()
            text += piece
            await store.write(doc.get_update(before))
        history = await read_history(store)
    assert [r.metadata for r in history.records] == [b"alice", b"alice"]
    assert [r.size for r in history.records] == [len(u) for u in history.updates]
    assert to_py(history.state_at(None)) == {"source": "one two"}


# ---------------------------------------------------------------------------- grouping


def records_at(times: list[float], snapshot_first: bool = False) -> list[Record]:
    return [
        Record(i, t, 10, b"user-%d" % (i % 2), snapshot_first and i == 0) for i, t in enumerate(times)
    ]


def test_a_day_of_typing_is_grouped_into_few_points():
    start = 1_795_000_000.0
    times = [start + i * 1.7 for i in range(50_000)]  # ~24 hours, an update every 1.7 s
    points, width = group_points(records_at(times), max_points=40)
    assert len(points) <= 40
    assert width == 3600
    assert sum(p.updates for p in points) == 50_000
    assert sum(p.bytes for p in points) == 500_000
    # Points are chronological, contiguous, and each ends at its newest update.
    assert [p.first_index for p in points] == sorted(p.first_index for p in points)
    for a, b in zip(points, points[1:]):
        assert a.last_index + 1 == b.first_index
        assert a.end < b.start
    assert points[-1].end == times[-1]
    assert points[0].authors == ["user-0", "user-1"]


def test_few_updates_get_one_point_each_and_snapshots_stand_alone():
    points, width = group_points(records_at([5.0, 5.1, 5.2], snapshot_first=True))
    assert width == 0
    assert [p.snapshot for p in points] == [True, False, False]
    points, _ = group_points(records_at([5.0, 5.1, 5.2], snapshot_first=True), resolution=60)
    assert [(p.snapshot, p.updates) for p in points] == [(True, 1), (False, 2)]


def test_describe_metadata():
    assert describe_metadata(b"") == ""
    assert describe_metadata(b"user-1") == "user-1"
    assert describe_metadata(json.dumps({"username": "ann", "origin": "client"}).encode()) == "ann (client)"
    assert describe_metadata(b"\xff\x00").startswith("0x")


# ---------------------------------------------------------------------------- times


def test_parse_time_forms():
    assert parse_time("1795844705.7064228") == 1795844705.7064228
    assert parse_time("2026-11-28T09:30:00Z") == datetime(2026, 11, 28, 9, 30, tzinfo=timezone.utc).timestamp()
    assert parse_time("2026-11-28T09:30:00+01:00") == datetime(2026, 11, 28, 8, 30, tzinfo=timezone.utc).timestamp()
    assert parse_time("-10m", now=1000.0) == 400.0
    assert parse_time("-2h", now=10_000.0) == 2800.0
    assert parse_time("-1d", now=100_000.0) == 13_600.0
    assert parse_time("now", now=5.0) == 5.0
    for bad in ("yesterday", "", "-10x", "2026-13-01"):
        with pytest.raises(ValueError, match="cannot read the time"):
            parse_time(bad)


def test_printed_time_given_back_includes_the_update_it_names():
    for ts in (1795844705.7064228, 1795844705.0, time.time(), 1795844705.9999999):
        printed = format_time(ts)
        assert parse_time(printed) >= ts
        assert parse_time(printed) - ts < 0.002


# ---------------------------------------------------------------------------- content


def legacy_like_doc() -> Doc:
    doc = Doc()
    doc["source"] = Text("x = 1\n# ünïcødé ✓ 😀")
    doc["meta"] = Map({"kernel": "python3"})
    doc["cells"] = Array(["a", "c"])
    return doc


def test_root_types_are_found_from_content():
    doc = legacy_like_doc()
    doc["other"] = Map({"k": Text("v")})
    doc["chars"] = Array(["p", "q"])
    types = root_types(doc.get_update())
    assert types == {"source": Text, "meta": Map, "cells": Array, "other": Map, "chars": Array}
    assert to_py(doc.get_update())["chars"] == ["p", "q"]


def test_document_key_parts():
    assert key_document_type("json:notebook:1234-abcd") == "notebook"
    assert key_document_type(".file:9f.y") == "file"
    assert key_document_type("notebook:doc-a") == "notebook"
    assert key_document_type("plain") is None
    assert key_file_id("json:notebook:1234-abcd") == "1234-abcd"
    assert key_file_id(".notebook:11111111-aaaa.y") == "11111111-aaaa"


def test_export_kinds():
    nb = YNotebook()
    nb.set(notebook([("c1", "print(1)"), ("c2", "x = 2")]))
    update = nb.ydoc.get_update()
    assert detect_kind("json:notebook:id", update) == "notebook"
    assert detect_kind("whatever", update) == "notebook"  # by content
    exported = json.loads(export(update, "notebook"))
    assert [c["source"] for c in exported["cells"]] == ["print(1)", "x = 2"]
    assert exported["nbformat"] == 4

    text = Doc()
    text.get("source", type=Text).insert(0, "plain ✓\n")
    assert detect_kind("text:file:id", text.get_update()) == "text"
    assert export(text.get_update(), "text") == "plain ✓\n".encode()

    legacy = legacy_like_doc().get_update()
    # Declared a notebook, but its cells are strings: exported losslessly as JSON instead.
    assert detect_kind("notebook:doc-a", legacy) == "json"
    assert json.loads(export(legacy, "json")) == to_py(legacy)
    with pytest.raises(ContentError):
        export(legacy, "notebook")


# ---------------------------------------------------------------------------- restore update


def check_reset(current: bytes, target: bytes) -> bytes:
    update = reset_update(current, target)
    assert update is not None
    doc = apply_all(current, update)
    assert to_py(doc.get_update()) == to_py(target)
    return update


def test_reset_update_on_text_map_array_with_unicode():
    doc = legacy_like_doc()
    old = doc.get_update()
    doc["source"].insert(len("x = 1\n# ünï".encode()), "NEW ✓")
    del doc["cells"][0]
    doc["cells"].append("z")
    doc["meta"]["added"] = Map({"deep": Text("q")})
    del doc["meta"]["kernel"]
    update = check_reset(doc.get_update(), old)
    # A small edit, not a rewrite of the whole document.
    assert len(update) < len(old)


def test_reset_update_merges_with_concurrent_clients():
    doc = legacy_like_doc()
    old = doc.get_update()
    doc["source"] += " more"
    current = doc.get_update()
    update = check_reset(current, old)
    # A client that holds `current` receives the update like any other edit.
    client = apply_all(current)
    client.apply_update(update)
    assert str(client.get("source", type=Text)) == "x = 1\n# ünïcødé ✓ 😀"


def test_reset_update_on_a_notebook_keeps_cell_identity():
    nb = YNotebook()
    nb.set(notebook([("c1", "a = 1"), ("c2", "b = 2")]))
    old = nb.ydoc.get_update()
    nb.ycells[1]["source"].insert(5, "22")
    nb.ycells.append(nb.create_ycell({"cell_type": "markdown", "source": "# hi", "metadata": {}, "id": "c3"}))
    current = nb.ydoc.get_update()
    update = check_reset(current, old)
    restored = YNotebook(apply_all(current, update)).get()
    assert restored == YNotebook(apply_all(old)).get()
    assert [c["source"] for c in restored["cells"]] == ["a = 1", "b = 2"]


def test_reset_update_none_when_equal_and_roots_cleared_when_new():
    doc = legacy_like_doc()
    old = doc.get_update()
    assert reset_update(old, old) is None
    doc["extra"] = Array([1, 2])
    check_reset(doc.get_update(), old)


def test_reset_update_refuses_a_root_that_changed_type():
    a = Doc()
    a["x"] = Text("t")
    b = Doc()
    b["x"] = Map({"k": 1})
    with pytest.raises(ContentError, match="changed type"):
        reset_update(a.get_update(), b.get_update())


def test_reset_update_after_deletions_round_trips():
    doc = Doc()
    text = doc.get("source", type=Text)
    text += "0123456789"
    snapshots = [doc.get_update()]
    del text[2:5]
    snapshots.append(doc.get_update())
    text.insert(0, "ab")
    snapshots.append(doc.get_update())
    current = doc.get_update()
    for target in snapshots:
        if to_py(target) != to_py(current):
            check_reset(current, target)
    assert pycrdt.get_state(current)
