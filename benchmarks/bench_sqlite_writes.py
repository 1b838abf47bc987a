"""SQLite write throughput of our store alone, with the host's own floor beside it.

``bench_stores.py`` compares every store against the reference implementations and takes
minutes; this script is for working on the write path: it times only our ``SQLiteYStore``
(sequential awaited writes into one document, and 20 documents written concurrently) and,
in the same run, two floors that no store can beat on this host at this minute:

* ``bare round trip``: an event loop handing an empty job to a thread and awaiting the
  answer (``SimpleQueue`` + ``call_soon_threadsafe``), no SQLite at all;
* ``raw SQLite``: ``BEGIN IMMEDIATE`` + ``INSERT`` + ``COMMIT`` in one thread, no event loop.

The host's speed swings by up to 4x within minutes, so read our figures against the floors
printed beside them.

    python benchmarks/bench_sqlite_writes.py --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable


sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stores import (  # noqa: E402
    STREAM,
    CommitSizes,
    concurrent_writes,
    sequential_writes,
)

from jupyter_ystore import SQLiteYStore  # noqa: E402
from jupyter_ystore.core.codec import iter_var_bytes  # noqa: E402

DOCS = 20


async def bare_round_trip(n: int) -> float:
    """Seconds per round trip loop -> thread -> loop with nothing done in the thread."""
    jobs: queue.SimpleQueue = queue.SimpleQueue()
    loop = asyncio.get_running_loop()

    def serve() -> None:
        while True:
            future = jobs.get()
            if future is None:
                return
            loop.call_soon_threadsafe(future.set_result, None)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    start = time.perf_counter()
    for _ in range(n):
        future = loop.create_future()
        jobs.put(future)
        await future
    elapsed = time.perf_counter() - start
    jobs.put(None)
    thread.join()
    return elapsed / n


def raw_sqlite(folder: str, updates: list[bytes]) -> float:
    """Seconds per single-row transaction, straight sqlite3 in this thread (WAL, NORMAL)."""
    conn = sqlite3.connect(os.path.join(folder, "raw.db"), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA wal_autocheckpoint=4000")
    conn.execute(
        "CREATE TABLE yupdates (path TEXT NOT NULL, yupdate BLOB, metadata BLOB, timestamp REAL)"
    )
    conn.execute("CREATE INDEX idx ON yupdates (path, timestamp)")
    start = time.perf_counter()
    for update in updates:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO yupdates VALUES (?, ?, ?, ?)", ("p", update, b"", time.time()))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed / len(updates)


def in_database(folder: str, name: str) -> Callable[[str], SQLiteYStore]:
    """Stores of the database file ``name`` in ``folder`` (default traits: automatic
    compaction runs, as shipped)."""
    db = os.path.join(folder, f"{name}.db")
    return lambda path: SQLiteYStore(path, db_path=db)


async def main(args: argparse.Namespace) -> None:
    updates = list(iter_var_bytes(STREAM.read_bytes()))
    seq_updates = updates[: args.sequential]
    per_doc = updates[: args.concurrent // DOCS]
    print(
        f"{len(seq_updates)} sequential writes, {DOCS} x {len(per_doc)} concurrent writes, "
        f"{args.rounds} rounds, python {sys.version.split()[0]}, loop {type(asyncio.get_running_loop()).__name__}"
    )
    rows: dict[str, list[float]] = {}
    sizes = CommitSizes()
    with tempfile.TemporaryDirectory() as folder:
        for r in range(args.rounds):
            trip = await bare_round_trip(5000)
            raw = raw_sqlite(folder, seq_updates[:5000])
            os.remove(os.path.join(folder, "raw.db"))
            seq = await sequential_writes(in_database(folder, f"seq{r}"), seq_updates, "doc")
            async with sizes.counting():
                conc = await concurrent_writes(in_database(folder, f"conc{r}"), per_doc, DOCS)
            line = {
                "bare round trip (us)": trip * 1e6,
                "raw SQLite commit (us)": raw * 1e6,
                "sequential (updates/s)": seq,
                f"{DOCS} docs concurrently (updates/s)": conc,
            }
            print(f"round {r + 1}: " + ", ".join(f"{k} {v:,.0f}" for k, v in line.items()))
            for k, v in line.items():
                rows.setdefault(k, []).append(v)
    print("\nmedian of rounds:")
    for k, v in rows.items():
        print(f"  {k:40} {statistics.median(v):>10,.0f}   (min {min(v):,.0f}, max {max(v):,.0f})")
    if sizes.sizes:
        print(f"  {'updates per commit (concurrent)':40} {statistics.mean(sizes.sizes):>10.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sequential", type=int, default=20000, help="updates written one by one")
    parser.add_argument("--concurrent", type=int, default=40000, help="total concurrent updates")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop (if installed)")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.install()
    asyncio.run(main(args))
