"""PostgresYStore against our SQLiteYStore, same workload, same run.

    python benchmarks/bench_postgres.py                 # DSN: JUPYTER_YSTORE_DSN or the CI one
    python benchmarks/bench_postgres.py --quick         # first 10,000 updates only
    python benchmarks/bench_postgres.py --dsn postgresql://user@host/db

SQLite runs twice: synchronous NORMAL (its default: no fsync per commit) and FULL (an fsync
per commit, the durability of PostgreSQL's default synchronous_commit=on). The workload is
bench_stores.py's: the stream ``benchmarks/data/updates-50000.bin`` (a
notebook typed with pycrdt, one update a transaction) written with awaited writes into one
document, then 20 documents written at once (each the stream's first 1/20th), then loading
the 50,000-update document (snapshot + tail after automatic compaction, and, for
PostgreSQL, the 50,000 rows uncompacted). Also: how fast another store instance (another
pool, as another server would be) sees a write through ``watch()``. Work happens in a
schema of its own, dropped at the end. Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import anyio
import pycrdt

from jupyter_ystore.core import ydoc as _ydoc
from jupyter_ystore.core.codec import iter_var_bytes
from jupyter_ystore.stores.postgres.store import PostgresYStore

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stores import (  # noqa: E402
    STREAM,
    best_of_async,
    concurrent_writes,
    sequential_writes,
)

CONCURRENT_DOCS = 20
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"

Factory = Callable[..., Any]




async def load_time(factory: Factory, path: str, reference: pycrdt.Doc) -> tuple[float, str]:
    async with factory(path) as store:
        info = {i.path: i for i in await store.list_documents()}[path]

        async def load() -> None:
            doc = pycrdt.Doc()
            await store.apply_updates(doc)
            assert doc.get_state() == reference.get_state()

        return await best_of_async(5, load), f"{info.updates:,} records, {info.snapshots} snapshot"


async def watch_latency(dsn: str, schema: str, updates: list[bytes], count: int = 200) -> list[float]:
    """Seconds from a write's return to another pool's watch() yielding it."""
    writer = PostgresYStore("live", dsn=dsn, schema=schema, compact_after_updates=0)
    watcher = PostgresYStore("live", dsn=dsn + "?application_name=watcher", schema=schema)
    latencies: list[float] = []
    async with writer, watcher:
        arrived = anyio.Event()

        async def watch() -> None:
            nonlocal arrived
            async for _update in watcher.watch():
                arrived.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            await anyio.sleep(0.2)
            for update in updates[:count]:
                arrived = anyio.Event()
                await writer.write(update)
                start = time.perf_counter()
                await arrived.wait()
                latencies.append(time.perf_counter() - start)
            tg.cancel_scope.cancel()
    return latencies


def ratios(figures: dict[str, float], what: str) -> list[tuple[str, str, str]]:
    return [
        row(f"  PostgreSQL / {name}", f"{figures['PostgreSQL'] / figures[name]:.2f}×", what)
        for name in figures
        if name != "PostgreSQL"
    ]


def row(what: str, figure: str, note: str = "") -> tuple[str, str, str]:
    print(f"  {what:<52} {figure:>14}  {note}", flush=True)
    return (what, figure, note)


async def server_settings(dsn: str) -> str:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        version = await conn.fetchval("SHOW server_version")
        fsync = await conn.fetchval("SHOW fsync")
        sync = await conn.fetchval("SHOW synchronous_commit")
        await conn.execute("SELECT 1")
    finally:
        await conn.close()
    return f"PostgreSQL {version}, fsync={fsync}, synchronous_commit={sync}"


async def drop_schema(dsn: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def main(args: argparse.Namespace) -> None:
    updates = list(iter_var_bytes(STREAM.read_bytes()))
    if args.quick:
        updates = updates[:10_000]
    dsn = args.dsn
    schema = "ystore_bench_" + uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix="ystore-bench-pg-"))
    print(
        f"{len(updates):,} updates ({sum(map(len, updates)):,} bytes); {os.cpu_count()} CPUs; "
        f"{await server_settings(dsn)}; schema {schema}"
    )

    def postgres(path: str, **kwargs: Any) -> PostgresYStore:
        return PostgresYStore(path, dsn=dsn, schema=schema, **kwargs)

    try:
        from jupyter_ystore import SQLiteYStore

        def sqlite(path: str, **kwargs: Any) -> Any:
            return SQLiteYStore(path, db_path=str(tmp / "ours.db"), **kwargs)

        def sqlite_full(path: str, **kwargs: Any) -> Any:
            # fsync on every commit, like PostgreSQL's default synchronous_commit=on
            return SQLiteYStore(path, db_path=str(tmp / "full.db"), synchronous="FULL", **kwargs)

        contenders: dict[str, Factory] = {
            "SQLite": sqlite,
            "SQLite FULL": sqlite_full,
            "PostgreSQL": postgres,
        }
    except ImportError:
        print("(SQLiteYStore not available: no ratios)")
        contenders = {"PostgreSQL": postgres}

    rows: list[tuple[str, str, str]] = []
    try:
        print("\nSequential awaited writes (one document):")
        seq = {}
        for name, factory in contenders.items():
            # settle: let a background compaction in flight finish
            seq[name] = await sequential_writes(factory, updates, "big", settle=0.5)
            rows.append(row(f"sequential writes, {name}", f"{seq[name]:,.0f}/s", f"{len(updates):,} updates"))
        rows += ratios(seq, "throughput")

        per_doc = len(updates) // CONCURRENT_DOCS
        print(f"\n{CONCURRENT_DOCS} documents written concurrently:")
        conc = {}
        for name, factory in contenders.items():
            conc[name] = await concurrent_writes(factory, updates[:per_doc], CONCURRENT_DOCS)
            rows.append(
                row(f"{CONCURRENT_DOCS} docs concurrently, {name}", f"{conc[name]:,.0f}/s",
                    f"{CONCURRENT_DOCS} × {per_doc:,} updates, total")
            )
        rows += ratios(conc, "throughput")

        print(f"\nLoading the document of {len(updates):,} updates:")
        squashed = await anyio.to_thread.run_sync(_ydoc.squash, updates)
        reference = pycrdt.Doc()
        reference.apply_update(squashed)
        loads = {}
        for name, factory in contenders.items():
            loads[name], note = await load_time(factory, "big", reference)
            rows.append(row(f"load, {name} (snapshot + tail)", f"{loads[name] * 1000:,.1f} ms", note))
        rows += ratios(loads, "time")

        async with postgres("raw", compact_after_updates=0, compact_after_bytes=0) as store:
            start = time.perf_counter()
            await store.import_records([(u, b"", 0.0) for u in updates])
            t_import = time.perf_counter() - start
        rows.append(row("bulk import_records, PostgreSQL", f"{len(updates) / t_import:,.0f}/s", "one transaction"))
        t_raw, note = await load_time(lambda p: postgres(p, compact_after_updates=0, compact_after_bytes=0), "raw", reference)
        rows.append(row("load, PostgreSQL, uncompacted", f"{t_raw * 1000:,.1f} ms", note))
        async with postgres("raw") as store:
            start = time.perf_counter()
            await store.compact()
            t_compact = time.perf_counter() - start
        rows.append(row("compact() of those rows, PostgreSQL", f"{t_compact * 1000:,.1f} ms", ""))

        print("\nLive updates (write returns -> other pool's watch() yields):")
        latencies = await watch_latency(dsn, schema, updates)
        rows.append(
            row("watch latency, median", f"{statistics.median(latencies) * 1000:,.2f} ms",
                f"p95 {sorted(latencies)[int(len(latencies) * 0.95)] * 1000:,.2f} ms, {len(latencies)} writes")
        )

        print("\nMarkdown table:\n")
        print("| measurement | figure | note |\n|---|---:|---|")
        for what, figure, note in rows:
            print(f"| {what.strip()} | {figure} | {note} |")
    finally:
        await drop_schema(dsn, schema)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=os.environ.get("JUPYTER_YSTORE_DSN") or DEFAULT_DSN)
    parser.add_argument("--quick", action="store_true", help="only the first 10,000 updates")
    sys.exit(anyio.run(main, parser.parse_args()))
