"""Several real processes on one document: no lost or duplicated update, compaction by one
at a time without dropping concurrent writes, and live updates across processes.

The worker is this file run as a script: it opens a PostgresYStore, says "ready", waits for
"go" on stdin (so that all workers really write at the same time), then writes ``count``
updates, each appending ``"<seq>,"`` to its own Text ``t<index>``, with metadata
``<index>:<seq>``.
"""

from __future__ import annotations

import collections
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pycrdt
import pytest

WRITES = 2000
PROCESSES = 3


def expected_text(count: int) -> str:
    return "".join(f"{seq}," for seq in range(count))


async def worker(dsn: str, schema: str, index: int, count: int, compact_after: int) -> None:
    from jupyter_ystore.stores.postgres.store import PostgresYStore

    doc = pycrdt.Doc(client_id=1000 + index)
    text = doc.get(f"t{index}", type=pycrdt.Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    for seq in range(count):
        text += f"{seq},"
    seqs = iter(range(count))
    store = PostgresYStore(
        "shared.ipynb",
        metadata_callback=lambda: f"{index}:{next(seqs)}".encode(),
        dsn=dsn,
        schema=schema,
        compact_after_updates=compact_after,
        compact_after_bytes=0,
    )
    async with store:
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        # Bursts of concurrent writes: group commit inside the process, lock waits across.
        for start in range(0, count, 10):
            async with anyio.create_task_group() as tg:
                for update in updates[start : start + 10]:
                    tg.start_soon(store.write, update)
        if compact_after:
            await store.compact()  # racing the other workers' compactions and writes
    print("done", flush=True)


def start_workers(pg_config: dict[str, Any], count: int, compact_after: int, n: int) -> list[subprocess.Popen]:
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, pg_config["dsn"], pg_config["schema"], str(i), str(count), str(compact_after)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).parent,
        )
        for i in range(n)
    ]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return procs


def go_and_wait(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc in procs:
        out, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0 and out.strip() == "done", out


def run_workers(pg_config: dict[str, Any], count: int, compact_after: int, n: int = PROCESSES) -> None:
    procs = start_workers(pg_config, count, compact_after, n)
    try:
        go_and_wait(procs)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


if __name__ != "__main__":
    from postgres_helpers import pg_config  # noqa: F401 (fixture)

    from jupyter_ystore.stores.postgres.store import PostgresYStore

    async def stored(pg_config: dict[str, Any]) -> tuple[list[Any], pycrdt.Doc]:
        async with PostgresYStore("shared.ipynb", **pg_config) as store:
            rows = await store._fetch(
                f"SELECT id, metadata, snapshot FROM {store._table.qualified} ORDER BY id"
            )
            doc = pycrdt.Doc()
            await store.apply_updates(doc)
        return rows, doc

    def check_content(doc: pycrdt.Doc, n: int = PROCESSES) -> None:
        for index in range(n):
            assert str(doc.get(f"t{index}", type=pycrdt.Text)) == expected_text(WRITES)

    @pytest.mark.anyio
    async def test_three_processes_every_update_exactly_once(pg_config: dict[str, Any]) -> None:
        run_workers(pg_config, WRITES, compact_after=0)
        rows, doc = await stored(pg_config)
        assert len(rows) == PROCESSES * WRITES
        counts = collections.Counter(bytes(row["metadata"]).decode() for row in rows)
        assert set(counts.values()) == {1}
        assert set(counts) == {f"{i}:{s}" for i in range(PROCESSES) for s in range(WRITES)}
        check_content(doc)

    @pytest.mark.anyio
    async def test_three_processes_with_concurrent_compactions(pg_config: dict[str, Any]) -> None:
        run_workers(pg_config, WRITES, compact_after=200)
        rows, doc = await stored(pg_config)
        assert rows[0]["snapshot"] and len(rows) < PROCESSES * WRITES
        assert sum(row["snapshot"] for row in rows) == 1
        check_content(doc)

    @pytest.mark.anyio
    async def test_live_updates_from_another_process(pg_config: dict[str, Any]) -> None:
        count = 300
        async with PostgresYStore("shared.ipynb", poll_interval=60, **pg_config) as watcher:
            mine = pycrdt.Doc(client_id=7)
            mine.get("mine", type=pycrdt.Text).insert(0, "watcher's own")
            await watcher.encode_state_as_update(mine)
            doc = pycrdt.Doc()
            await watcher.apply_updates(doc)
            procs = start_workers(pg_config, count, compact_after=0, n=1)
            seen: list[bytes] = []
            try:
                with anyio.fail_after(120):
                    async with anyio.create_task_group() as tg:

                        async def collect() -> None:
                            async for update in watcher.watch():
                                seen.append(update)
                                if len(seen) == count:
                                    return

                        tg.start_soon(collect)
                        await watcher.write(mine.get_update())  # its own: not yielded
                        await anyio.to_thread.run_sync(go_and_wait, procs)
            finally:
                for proc in procs:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
            committed = await watcher._fetch(
                f"SELECT yupdate FROM {watcher._table.qualified} WHERE origin <> $1 ORDER BY id",
                watcher._origin,
            )
            assert seen == [bytes(row["yupdate"]) for row in committed]  # commit order, no gap
            for update in seen:
                doc.apply_update(update)
            assert str(doc.get("t0", type=pycrdt.Text)) == expected_text(count)
            assert str(doc.get("mine", type=pycrdt.Text)) == "watcher's own"


if __name__ == "__main__":
    dsn_arg, schema_arg, index_arg, count_arg, compact_arg = sys.argv[1:6]
    anyio.run(worker, dsn_arg, schema_arg, int(index_arg), int(count_arg), int(compact_arg))
