"""Replay a realistic update stream through our stores and the reference ones, in one run.

    python benchmarks/bench_stores.py            # a few minutes on a 2-core machine
    python benchmarks/bench_stores.py --sample 200 --quick

The stream is ``benchmarks/data/updates-50000.bin`` (a notebook typed with pycrdt, one update
a transaction). Contenders: our ``SQLiteYStore`` (synchronous NORMAL, the default, and FULL),
our ``FileYStore``, and the ``SQLiteYStore`` / ``FileYStore`` of ypy-websocket 0.12.4 and
pycrdt-store 0.1.5 (``pip install -e .[bench]``). The reference stores are slow, so their
write figures come from the first ``--sample`` updates of the stream (and 20 × sample/20 for
the concurrent test; sequential: the better of two runs); the output says so on each line.
Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, AsyncContextManager, AsyncIterator, Awaitable, Callable

import anyio
import pycrdt

from jupyter_ystore import SQLiteYStore
from jupyter_ystore.core import ydoc as _ydoc
from jupyter_ystore.core.codec import iter_var_bytes

STREAM = Path(__file__).parent / "data" / "updates-50000.bin"
CONCURRENT_DOCS = 20

Factory = Callable[[str], Any]  # document path -> store (not started)
Running = Callable[[str], AsyncContextManager[Any]]  # document path -> a started store


# ---------------------------------------------------------------------- contenders


@asynccontextmanager
async def run_ours(store: Any) -> AsyncIterator[Any]:
    async with store:
        yield store


@asynccontextmanager
async def run_reference(store: Any) -> AsyncIterator[Any]:
    """ypy-websocket 0.12.4's ``async with`` on SQLiteYStore raises (its start() sees the task
    group that __aenter__ set), so reference stores are started in a task group."""
    async with anyio.create_task_group() as tg:
        await tg.start(store.start)
        yield store
        tg.cancel_scope.cancel()


class Contender:
    def __init__(
        self, name: str, factory: Factory, run: Any, sampled: bool, db: Path | None = None
    ):
        self.name = name
        self.factory = factory
        self.run = run
        self.sampled = sampled
        self.db = db  # SQLite file, to count what was really stored

    def running(self, path: str) -> AsyncContextManager[Any]:
        """A new store of ``path``, started the way this contender needs."""
        return self.run(self.factory(path))


def stored_rows(db: Path, prefix: str) -> int:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "SELECT count(*) FROM yupdates WHERE path LIKE ?", (prefix + "%",)
        ).fetchone()[0]
    finally:
        conn.close()


def contenders(tmp: Path) -> list[Contender]:
    found = [
        Contender(
            "ours SQLite (NORMAL)",
            lambda path: SQLiteYStore(path, db_path=str(tmp / "ours.db")),
            run_ours,
            False,
        ),
        Contender(
            "ours SQLite (FULL)",
            lambda path: SQLiteYStore(
                path,
                db_path=str(tmp / "ours-full.db"),
                synchronous="FULL",
                compact_after_updates=0,
                compact_after_bytes=0,
            ),
            run_ours,
            True,
            tmp / "ours-full.db",
        ),
    ]
    try:
        from jupyter_ystore import FileYStore

        found.append(
            Contender(
                "ours File",
                lambda path: FileYStore(path, root_dir=str(tmp / "ours-files")),
                run_ours,
                False,
            )
        )
    except ImportError:
        print("(jupyter_ystore.stores.file not available: our FileYStore skipped)")
    try:
        from ypy_websocket import ystore as ypy

        class YpySQLite(ypy.SQLiteYStore):
            db_path = str(tmp / "ypy.db")

        found.append(
            Contender("ypy-websocket 0.12.4 SQLite", YpySQLite, run_reference, True, tmp / "ypy.db")
        )
        found.append(
            Contender(
                "ypy-websocket 0.12.4 File",
                lambda path: ypy.FileYStore(str(tmp / "ypy-files" / path)),
                run_reference,
                True,
            )
        )
    except ImportError:
        print("(ypy-websocket not installed: pip install -e .[bench])")
    try:
        from pycrdt.store import FileYStore as PycrdtFile
        from pycrdt.store import SQLiteYStore as PycrdtSQLite

        class PSQLite(PycrdtSQLite):
            db_path = str(tmp / "pycrdt.db")

        found.append(
            Contender("pycrdt-store 0.1.5 SQLite", PSQLite, run_reference, True, tmp / "pycrdt.db")
        )
        found.append(
            Contender(
                "pycrdt-store 0.1.5 File",
                lambda path: PycrdtFile(str(tmp / "pycrdt-files" / path)),
                run_reference,
                True,
            )
        )
    except ImportError:
        print("(pycrdt-store not installed: pip install -e .[bench])")
    return found


# ---------------------------------------------------------------------- measurements


async def sequential_writes(
    running: Running, updates: list[bytes], path: str, settle: float = 0.0
) -> float:
    """Awaited writes one after the other into one document: updates/s. ``settle``: seconds
    to wait before closing (a background compaction in flight), not timed. Shared by every
    benchmark script."""
    async with running(path) as store:
        start = time.perf_counter()
        for update in updates:
            await store.write(update)
        elapsed = time.perf_counter() - start
        await anyio.sleep(settle)
    return len(updates) / elapsed


async def concurrent_writes(running: Running, updates: list[bytes], docs: int) -> float:
    """``docs`` documents written at once, each the same slice of the stream: total updates/s.
    Shared by every benchmark script."""
    async with AsyncExitStack() as stack:
        stores = [await stack.enter_async_context(running(f"conc-{i}")) for i in range(docs)]

        async def fill(store: Any) -> None:
            for update in updates:
                await store.write(update)

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for store in stores:
                tg.start_soon(fill, store)
        elapsed = time.perf_counter() - start
    return docs * len(updates) / elapsed


async def sequential(c: Contender, updates: list[bytes], path: str = "seq") -> float:
    return await sequential_writes(c.running, updates, path)


class CommitSizes:
    """Counts the writes each commit of our SQLite store carried (group commit at work)."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    @asynccontextmanager
    async def counting(self) -> AsyncIterator[None]:
        from jupyter_ystore.stores.sqlite import db as _sqlite_db

        original = _sqlite_db.SharedDatabase._commit_writes

        def counted(db: Any, batch: list[Any]) -> Any:
            self.sizes.append(len(batch))
            return original(db, batch)

        _sqlite_db.SharedDatabase._commit_writes = counted  # type: ignore[method-assign]
        try:
            yield
        finally:
            _sqlite_db.SharedDatabase._commit_writes = original  # type: ignore[method-assign]


async def concurrent(c: Contender, updates: list[bytes], docs: int) -> float:
    return await concurrent_writes(c.running, updates, docs)


def best_of(times: int, fn: Callable[[], Any]) -> float:
    durations = []
    for _ in range(times):
        start = time.perf_counter()
        fn()
        durations.append(time.perf_counter() - start)
    return min(durations)


async def best_of_async(times: int, fn: Callable[[], Awaitable[Any]]) -> float:
    durations = []
    for _ in range(times):
        start = time.perf_counter()
        await fn()
        durations.append(time.perf_counter() - start)
    return min(durations)


def fill_legacy_db(db: Path, path: str, updates: list[bytes], checkpoint_every: int = 0) -> None:
    """Rows exactly as ypy-websocket 0.12.4 / pycrdt-store 0.1.5 leave them, written in bulk
    (writing 50,000 through them would take many minutes)."""
    conn = sqlite3.connect(db)
    conn.execute(
        "CREATE TABLE yupdates (path TEXT NOT NULL, yupdate BLOB, metadata BLOB, "
        "timestamp REAL NOT NULL)"
    )
    conn.execute("CREATE INDEX idx_yupdates_path_timestamp ON yupdates (path, timestamp)")
    conn.execute("PRAGMA user_version = 2")
    base = time.time() - len(updates)
    conn.executemany(
        "INSERT INTO yupdates VALUES (?, ?, ?, ?)",
        ((path, u, b"", base + i) for i, u in enumerate(updates)),
    )
    if checkpoint_every:
        # pycrdt-store keeps a checkpoint of everything but the last < checkpoint_every updates
        covered = len(updates) - len(updates) % checkpoint_every or len(updates) - checkpoint_every
        conn.execute(
            "CREATE TABLE ycheckpoints (path TEXT NOT NULL, checkpoint BLOB NOT NULL, "
            "timestamp REAL NOT NULL, PRIMARY KEY(path))"
        )
        conn.execute(
            "INSERT INTO ycheckpoints VALUES (?, ?, ?)",
            (path, _ydoc.squash(updates[:covered]), base + covered - 0.5),
        )
    conn.commit()
    conn.close()


# ---------------------------------------------------------------------- report


class Report:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str]] = []

    def add(self, what: str, figure: str, note: str = "") -> None:
        self.rows.append((what, figure, note))
        print(f"  {what:<58} {figure:>14}  {note}", flush=True)

    def table(self) -> str:
        lines = ["| measurement | figure | note |", "|---|---:|---|"]
        lines += [f"| {w} | {f} | {n} |" for w, f, n in self.rows]
        return "\n".join(lines)


def failure(exc: BaseException) -> str:
    """The first real error inside (nested) exception groups, and how many there were."""
    leaves: list[BaseException] = []
    todo = [exc]
    while todo:
        current = todo.pop(0)
        inner = getattr(current, "exceptions", None)
        if inner:
            todo.extend(inner)
        else:
            leaves.append(current)
    first = leaves[0]
    count = f" (and {len(leaves) - 1} more)" if len(leaves) > 1 else ""
    return f"{type(first).__name__}: {str(first)[:60]}{count}"


def rate(x: float) -> str:
    return f"{x:,.0f}/s"


def ms(x: float) -> str:
    return f"{x * 1000:,.1f} ms"


def ratio(x: float) -> str:
    return f"{x:,.1f}×"


async def main(args: argparse.Namespace) -> None:
    # pycrdt-store logs (and drops) "database is locked" writes; we count them instead
    logging.getLogger("pycrdt.store").setLevel(logging.CRITICAL)
    logging.getLogger("sqlite_anyio").setLevel(logging.CRITICAL)
    updates = list(iter_var_bytes(STREAM.read_bytes()))
    if args.quick:
        updates = updates[:10_000]
    sample = updates[: args.sample]
    tmp = Path(tempfile.mkdtemp(prefix="ystore-bench-"))
    report = Report()
    print(
        f"{len(updates):,} updates ({sum(map(len, updates)):,} bytes); reference stores "
        f"timed on their first {len(sample)} writes; {os.cpu_count()} CPUs; {tmp}"
    )
    try:
        everyone = contenders(tmp)
        by_name = {c.name: c for c in everyone}
        ours = by_name["ours SQLite (NORMAL)"]

        print("\nSequential awaited writes (one document):")
        seq: dict[str, float] = {}
        for c in everyone:
            n = len(sample) if c.sampled else len(updates)
            try:
                if c.name == "ours SQLite (NORMAL)":  # also the load test's document
                    seq[c.name] = await sequential(c, updates, path="big")
                else:
                    # best of two short runs: the ratio to ours is then a conservative one
                    seq[c.name] = max(
                        [await sequential(c, updates[:n], path=f"seq-{i}") for i in (1, 2)]
                    )
            except Exception as exc:  # a reference store failing is a result too
                report.add(f"sequential writes, {c.name}", "failed", failure(exc))
                continue
            note = f"{n:,} updates" + (", best of 2 runs" if c.sampled else "")
            report.add(f"sequential writes, {c.name}", rate(seq[c.name]), note)
        # like for like: ours on the same short sample as the reference stores
        same = max([await sequential(ours, sample, path=f"sample-{i}") for i in (1, 2)])
        report.add(
            f"sequential writes, {ours.name}, same sample",
            rate(same),
            f"{len(sample):,} updates, best of 2 runs",
        )
        for ref in ("pycrdt-store 0.1.5 SQLite", "ypy-websocket 0.12.4 SQLite"):
            if ref in seq:
                report.add(
                    f"sequential: ours SQLite / {ref}",
                    ratio(seq[ours.name] / seq[ref]) + f" ({ratio(same / seq[ref])} same sample)",
                    "target ≥ 20× pycrdt-store",
                )

        print(f"\n{CONCURRENT_DOCS} documents written concurrently:")
        conc: dict[str, float] = {}
        for c in everyone:
            per_doc = (
                max(1, len(sample) // CONCURRENT_DOCS)
                if c.sampled
                else len(updates) // CONCURRENT_DOCS
            )
            sizes = CommitSizes()
            try:
                if c is ours:
                    async with sizes.counting():
                        conc[c.name] = await concurrent(c, updates[:per_doc], CONCURRENT_DOCS)
                else:
                    conc[c.name] = await concurrent(c, updates[:per_doc], CONCURRENT_DOCS)
            except Exception as exc:
                report.add(f"{CONCURRENT_DOCS} docs concurrently, {c.name}", "failed", failure(exc))
                continue
            note = f"{CONCURRENT_DOCS} × {per_doc:,} updates, total"
            if c.db is not None:
                lost = CONCURRENT_DOCS * per_doc - stored_rows(c.db, "conc-")
                note += f"; {lost} writes lost" if lost else "; none lost"
            report.add(f"{CONCURRENT_DOCS} docs concurrently, {c.name}", rate(conc[c.name]), note)
            if sizes.sizes:
                report.add(
                    "  updates per commit (group commit)",
                    f"{statistics.mean(sizes.sizes):.1f}",
                    f"{len(sizes.sizes):,} commits, largest {max(sizes.sizes)}",
                )
        for ref in ("pycrdt-store 0.1.5 SQLite", "ypy-websocket 0.12.4 SQLite"):
            if ref in conc:
                report.add(
                    f"concurrent: ours SQLite / {ref}", ratio(conc[ours.name] / conc[ref]), ""
                )

        print(f"\nLoading a document with {len(updates):,} stored updates:")
        merged = await anyio.to_thread.run_sync(_ydoc.merge_updates, updates)
        squashed = await anyio.to_thread.run_sync(_ydoc.squash, updates)
        reference = pycrdt.Doc()
        reference.apply_update(squashed)
        t_merged = best_of(5, lambda: pycrdt.Doc().apply_update(merged))
        t_squashed = best_of(5, lambda: pycrdt.Doc().apply_update(squashed))
        report.add("apply the merged state (pycrdt)", ms(t_merged), f"{len(merged):,} bytes")
        report.add("apply the squashed state (pycrdt)", ms(t_squashed), f"{len(squashed):,} bytes")

        async with ours.run(ours.factory("big")) as store:
            await anyio.sleep(0.5)  # let a background compaction in flight finish
            info = {i.path: i for i in await store.list_documents()}["big"]

            async def load_ours() -> None:
                doc = pycrdt.Doc()
                await store.apply_updates(doc)
                assert doc.get_state() == reference.get_state()

            t_ours = await best_of_async(5, load_ours)
            report.add(
                "load, ours SQLite (snapshot + tail, automatic compaction)",
                ms(t_ours),
                f"{info.updates} records stored, {info.snapshots} snapshot",
            )
            report.add("  ours / apply merged state", ratio(t_ours / t_merged), "target ≤ 2×")
            report.add("  ours / apply squashed state", ratio(t_ours / t_squashed), "")

            await store.compact()
        # Size: a database of its own holding just this document, compacted once.
        single = tmp / "ours-single.db"
        async with run_ours(SQLiteYStore("big", db_path=str(single))) as store:
            for update in updates:
                await store.write(update)
            await store.compact()
        compacted = os.path.getsize(single)  # store closed: the WAL is checkpointed

        legacy = tmp / "ypy-50k.db"
        fill_legacy_db(legacy, "big", updates)
        try:
            from ypy_websocket import ystore as ypy
            import y_py

            class YpyLegacy(ypy.SQLiteYStore):
                db_path = str(legacy)

            async with run_reference(YpyLegacy("big")) as store:
                await store.db_initialized.wait()
                start = time.perf_counter()
                await store.apply_updates(y_py.YDoc())
                t_ypy = time.perf_counter() - start
            report.add("load, ypy-websocket 0.12.4 SQLite (every row)", ms(t_ypy), "")
            report.add("  ours / ypy-websocket", ratio(t_ypy / t_ours) + " faster", "target ≥ 20×")
        except ImportError:
            pass
        try:
            from pycrdt.store import SQLiteYStore as PycrdtSQLite

            pycrdt_db = tmp / "pycrdt-50k.db"
            fill_legacy_db(pycrdt_db, "big", updates, checkpoint_every=100)

            class PLegacy(PycrdtSQLite):
                db_path = str(pycrdt_db)

            async with PLegacy("big") as store:
                await store.db_initialized.wait()
                start = time.perf_counter()
                await store.apply_updates(pycrdt.Doc())
                t_pycrdt = time.perf_counter() - start
            report.add("load, pycrdt-store 0.1.5 SQLite (checkpoint + tail)", ms(t_pycrdt), "")
        except ImportError:
            pass
        async with run_ours(SQLiteYStore("big", db_path=str(legacy))) as store:
            t_first = await best_of_async(1, lambda: store.apply_updates(pycrdt.Doc()))
        report.add(
            "load, ours on that ypy-websocket database (not compacted yet)", ms(t_first), ""
        )

        print(f"\nDatabase size after compaction (one document, its {len(updates):,} updates):")
        report.add("ours SQLite file after compact()", f"{compacted:,} B", "")
        report.add("  / merged state", ratio(compacted / len(merged)), "target ≤ 3×")
        report.add("  / squashed state", ratio(compacted / len(squashed)), "")
        report.add("  / the updates' bytes", ratio(compacted / sum(map(len, updates))), "")

        print("\nMarkdown table:\n")
        print(report.table())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", type=int, default=500, help="writes timed on slow stores")
    parser.add_argument("--quick", action="store_true", help="only the first 10,000 updates")
    sys.exit(anyio.run(main, parser.parse_args()))
