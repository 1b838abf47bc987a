"""Stores of every backend with a low compaction threshold, and what tests of automatic
compaction ask of them (``test_compaction_at_close.py``, ``test_compaction_turns.py``).

A test module parametrizes its ``make`` fixture with ``MAKERS``: ``make(path)`` opens
nothing, it builds a store of that backend (PostgreSQL in a fresh schema of the test server).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pycrdt

from jupyter_ystore import BaseYStore, FileYStore, SQLiteYStore

#: ``compact_after_updates`` of every store made here.
THRESHOLD = 20


def sqlite_maker(tmp_path: Path, request: Any = None) -> Callable[[str], BaseYStore]:
    return lambda path: SQLiteYStore(
        path, db_path=str(tmp_path / "y.db"), compact_after_updates=THRESHOLD
    )


def file_maker(tmp_path: Path, request: Any = None) -> Callable[[str], BaseYStore]:
    return lambda path: FileYStore(
        path, root_dir=str(tmp_path / "files"), compact_after_updates=THRESHOLD
    )


def postgres_maker(tmp_path: Path, request: Any) -> Callable[[str], BaseYStore]:
    from postgres_helpers import fresh_config

    from jupyter_ystore import PostgresYStore

    config = fresh_config(request)
    return lambda path: PostgresYStore(path, compact_after_updates=THRESHOLD, **config)


#: ``pytest.fixture(params=MAKERS, ids=MAKER_IDS)``: every backend.
MAKERS = [sqlite_maker, file_maker, postgres_maker]
MAKER_IDS = ["sqlite", "file", "postgres"]


def typed(count: int, *, letters: str = "abcdefghij", then_delete: int = 0) -> list[bytes]:
    """``count`` keystrokes of ``letters`` in turn, one update each; then one update deleting
    the first ``then_delete`` characters (deleted content for a squash to collect)."""
    doc = pycrdt.Doc()
    text = doc.get("source", type=pycrdt.Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    for i in range(count):
        text += letters[i % len(letters)]
    if then_delete:
        del text[0:then_delete]
    return updates


async def records(store: BaseYStore) -> int:
    return len([record async for record in store.read()])


async def content(store: BaseYStore) -> str:
    doc = pycrdt.Doc()
    await store.apply_updates(doc)
    return str(doc.get("source", type=pycrdt.Text))
