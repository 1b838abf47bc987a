"""Two real processes writing one SQLite database: every update lands (no "database is
locked" loss), with and without compaction running in both."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pycrdt
import pytest

from jupyter_ystore import SQLiteYStore

pytestmark = pytest.mark.anyio

WRITES = 300  # per process and document: bounded for a 2-core machine

WRITER = textwrap.dedent(
    """
    import sys
    import anyio, pycrdt
    from jupyter_ystore import SQLiteYStore

    db, me, count, compact = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

    def make(path):
        return SQLiteYStore(path, db_path=db, busy_timeout=60,
                            compact_after_updates=compact, compact_after_bytes=0)

    async def fill(store, key):
        doc = pycrdt.Doc()
        items = doc.get("items", type=pycrdt.Array)
        for i in range(count):
            before = doc.get_state()
            items.append(f"{me}-{key}-{i}")
            await store.write(doc.get_update(before))

    async def main():
        print("ready", flush=True)
        sys.stdin.readline()  # start together
        async with make("shared") as shared, make(f"own-{me}") as own:
            async with anyio.create_task_group() as tg:
                tg.start_soon(fill, shared, "a")
                tg.start_soon(fill, shared, "b")
                tg.start_soon(fill, own, "a")
        print("done", flush=True)

    anyio.run(main)
    """
)


def run_writers(db: Path, compact: int) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db), str(me), str(WRITES), str(compact)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for me in (1, 2)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            assert line == "ready", (line, proc.stderr.read() if proc.stderr else "")
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in procs:
            out, err = proc.communicate(timeout=240)
            assert proc.returncode == 0 and "done" in out, err[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


async def items_of(db: Path, path: str) -> list[str]:
    async with SQLiteYStore(path, db_path=str(db)) as store:
        doc = pycrdt.Doc()
        await store.apply_updates(doc)
    return sorted(doc.get("items", type=pycrdt.Array).to_py())


def expected(me: int, keys: str) -> list[str]:
    return sorted(f"{me}-{key}-{i}" for key in keys for i in range(WRITES))


async def test_two_processes_every_row_counted(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    await anyio.to_thread.run_sync(run_writers, db, 0)
    conn = sqlite3.connect(db)
    counts = dict(conn.execute("SELECT path, count(*) FROM yupdates GROUP BY path"))
    conn.close()
    assert counts == {"shared": 4 * WRITES, "own-1": WRITES, "own-2": WRITES}
    assert await items_of(db, "shared") == sorted(expected(1, "ab") + expected(2, "ab"))
    assert await items_of(db, "own-1") == expected(1, "a")


async def test_two_processes_compacting_lose_nothing(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    await anyio.to_thread.run_sync(run_writers, db, 50)
    conn = sqlite3.connect(db)
    (total,) = conn.execute("SELECT count(*) FROM yupdates").fetchone()
    conn.close()
    assert total < 6 * WRITES  # compaction did run
    assert await items_of(db, "shared") == sorted(expected(1, "ab") + expected(2, "ab"))
    assert await items_of(db, "own-1") == expected(1, "a")
    assert await items_of(db, "own-2") == expected(2, "a")


OPENER = textwrap.dedent(
    """
    import sys
    import anyio
    from jupyter_ystore import SQLiteYStore

    async def main():
        sys.stdin.readline()  # start together
        async with SQLiteYStore("doc-" + sys.argv[2], db_path=sys.argv[1]) as store:
            await store.write(b"\\x00\\x00")

    anyio.run(main)
    """
)


def test_processes_creating_one_new_database_at_once(tmp_path: Path) -> None:
    """Opening a file that does not exist yet, from three processes at the same moment:
    each waits for the others' schema work instead of failing with "database is locked"."""
    for round_ in range(3):
        db = tmp_path / f"new-{round_}.db"
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", OPENER, str(db), str(me)],
                stdin=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for me in range(3)
        ]
        try:
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
            for proc in procs:
                _, err = proc.communicate(timeout=120)
                assert proc.returncode == 0, err[-3000:]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        conn = sqlite3.connect(db)
        assert conn.execute("SELECT count(*) FROM yupdates").fetchone()[0] == 3
        conn.close()
