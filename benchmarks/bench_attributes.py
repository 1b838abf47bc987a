"""What document attributes cost: ``get_attributes()`` per call, a 1 MB ``set_attributes``.

    python benchmarks/bench_attributes.py          # PostgreSQL: JUPYTER_YSTORE_DSN or the CI one
    python benchmarks/bench_attributes.py --no-postgres

Per backend, on a document holding 1,000 updates: ``get_attributes()`` awaited in a loop with
only ``history_id`` (36 bytes) stored, then with a 1 MB ``base`` beside it (what a room reads
when it opens); ``set_attributes({"base": 1 MB})`` awaited in a loop, alternating two random
values (nothing to compress, never the value already stored). Medians of 5 rounds. SQLite in
both ``synchronous`` modes; the File store fsyncs the sidecar and its folder on every set.
PostgreSQL work happens in a schema of its own, dropped at the end. Not a test: nothing here
asserts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from typing import Any, Awaitable, Callable

import anyio
import pycrdt

from jupyter_ystore import FileYStore, MemoryYStore, SQLiteYStore

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
MB = 1024 * 1024


def typed_updates(n: int) -> list[bytes]:
    doc = pycrdt.Doc()
    text = doc.get("source", type=pycrdt.Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    for i in range(n):
        text += f"{i},"
    return updates


async def per_call(fn: Callable[[], Awaitable[Any]], calls: int, rounds: int = 5) -> float:
    """Median over ``rounds`` of the mean seconds per awaited call."""
    await fn()  # warm up (connections, statement cache)
    results = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            await fn()
        results.append((time.perf_counter() - start) / calls)
    return statistics.median(results)


async def measure(name: str, factory: Callable[[str], Any]) -> None:
    big, other = os.urandom(MB), os.urandom(MB)
    async with factory("doc") as store:
        for update in typed_updates(1000):
            await store.write(update)
        await store.set_attributes({"history_id": str(uuid.uuid4()).encode()})
        small = await per_call(store.get_attributes, 2000)
        await store.set_attributes({"base": big})
        with_base = await per_call(store.get_attributes, 50)
        values = [{"base": big}, {"base": other}]  # alternate: setting what is stored may
        turn = iter(range(10**9))  # be skipped (the File store does)
        set_big = await per_call(lambda: store.set_attributes(values[next(turn) % 2]), 20)
    print(
        f"{name:28} get (36 B): {small * 1e6:8.1f} µs   get (36 B + 1 MB): "
        f"{with_base * 1e3:7.2f} ms   set 1 MB: {set_big * 1e3:7.2f} ms"
    )


async def main(dsn: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        await measure("MemoryYStore", type("BenchMemory", (MemoryYStore,), {}))
        await measure("FileYStore", lambda p: FileYStore(p, root_dir=f"{tmp}/files"))
        for mode in ("NORMAL", "FULL"):
            db = f"{tmp}/y-{mode}.db"
            await measure(
                f"SQLiteYStore ({mode})", lambda p: SQLiteYStore(p, db_path=db, synchronous=mode)
            )
    if dsn:
        import asyncpg

        from jupyter_ystore import PostgresYStore

        schema = "ystore_bench_" + uuid.uuid4().hex[:10]
        try:
            await measure("PostgresYStore", lambda p: PostgresYStore(p, dsn=dsn, schema=schema))
        finally:
            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await conn.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", default=os.environ.get("JUPYTER_YSTORE_DSN") or DEFAULT_DSN)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    anyio.run(main, None if args.no_postgres else args.dsn)
