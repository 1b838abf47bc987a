"""Opening a small document: ``async with store`` + ``apply_updates`` into a new document.

What a room pays when a notebook is opened. The first N updates of the benchmark stream
(``benchmarks/data/updates-50000.bin``) are written through each store's own ``write`` (so
each keeps them in the layout it really uses: our snapshot + tail, pycrdt-store's checkpoint +
tail, ypy-websocket's rows), then every round opens each store anew, loads the document into
a new ``pycrdt.Doc`` (``y_py.YDoc`` for ypy-websocket) and closes it. Contenders take turns in
every round (this host is noisy), and the median and spread of the rounds are printed with
ratios against the references.

Ours is measured twice: *cold* (no other store of the database is open, so the first open
starts its database thread and connection) and *warm* (another document of the same database
is open, as in a server where any other room is open).

    python benchmarks/bench_load.py [--updates 1000] [--rounds 40]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import anyio
import pycrdt

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from bench_stores import STREAM, run_reference  # noqa: E402

from jupyter_ystore import SQLiteYStore  # noqa: E402
from jupyter_ystore.core.codec import iter_var_bytes  # noqa: E402

Load = Callable[[], Awaitable[None]]


def read_stream(count: int) -> list[bytes]:
    updates = []
    for update in iter_var_bytes(STREAM.read_bytes()):
        updates.append(update)
        if len(updates) == count:
            break
    return updates


async def ours(tmp: Path, updates: list[bytes], expected: bytes) -> tuple[Load, Load, Any]:
    db = str(tmp / "ours.db")
    async with SQLiteYStore("doc", db_path=db) as store:
        for update in updates:
            await store.write(update)
    keeper = SQLiteYStore("other", db_path=db)

    async def load() -> None:
        doc = pycrdt.Doc()
        async with SQLiteYStore("doc", db_path=db) as store:
            await store.apply_updates(doc)
        assert doc.get_state() == expected

    return load, load, keeper


async def pycrdt_store(tmp: Path, updates: list[bytes], expected: bytes) -> Load | None:
    try:
        from pycrdt.store import SQLiteYStore as Reference
    except ImportError:
        return None

    class Store(Reference):  # type: ignore[misc,valid-type]
        db_path = str(tmp / "pycrdt-store.db")

    async with Store("doc") as store:
        for update in updates:
            await store.write(update)

    async def load() -> None:
        doc = pycrdt.Doc()
        async with Store("doc") as store:
            await store.apply_updates(doc)
        assert doc.get_state() == expected

    return load


async def ypy_websocket(tmp: Path, updates: list[bytes]) -> Load | None:
    try:
        import y_py
        from ypy_websocket.ystore import SQLiteYStore as Reference
    except ImportError:
        return None

    class Store(Reference):  # type: ignore[misc,valid-type]
        db_path = str(tmp / "ypy-websocket.db")

    async with run_reference(Store("doc")) as store:
        await store.db_initialized.wait()
        for update in updates:
            await store.write(update)

    async def load() -> None:
        async with run_reference(Store("doc")) as store:
            await store.db_initialized.wait()
            await store.apply_updates(y_py.YDoc())

    return load


async def timed(load: Load) -> float:
    start = time.perf_counter()
    await load()
    return time.perf_counter() - start


def summary(times: list[float]) -> str:
    q = statistics.quantiles(times, n=4)
    return f"{statistics.median(times) * 1000:7.2f} ms  (quartiles {q[0] * 1000:.2f}–{q[2] * 1000:.2f})"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    updates = read_stream(args.updates)
    reference = pycrdt.Doc()
    for update in updates:
        reference.apply_update(update)
    expected = reference.get_state()
    merged = pycrdt.merge_updates(*updates)

    tmp = Path(tempfile.mkdtemp(prefix="bench-load-"))
    try:
        print(f"Loading a document of {len(updates):,} updates, {args.rounds} interleaved rounds")
        cold, warm, keeper = await ours(tmp, updates, expected)
        contenders: dict[str, Load] = {}
        found = await pycrdt_store(tmp, updates, expected)
        if found:
            contenders["pycrdt-store 0.1.5 SQLite"] = found
        found = await ypy_websocket(tmp, updates)
        if found:
            contenders["ypy-websocket 0.12.4 SQLite"] = found

        async def apply_merged() -> None:
            pycrdt.Doc().apply_update(merged)

        times: dict[str, list[float]] = {
            "ours SQLite, cold": [],
            "ours SQLite, warm": [],
            **{name: [] for name in contenders},
            "apply the merged updates (pycrdt, no store)": [],
        }
        for _ in range(args.rounds):
            times["ours SQLite, cold"].append(await timed(cold))
            async with keeper:
                times["ours SQLite, warm"].append(await timed(warm))
            for name, load in contenders.items():
                times[name].append(await timed(load))
            times["apply the merged updates (pycrdt, no store)"].append(await timed(apply_merged))
        for name, values in times.items():
            print(f"  {name:<46} {summary(values)}")
        for ours_name in ("ours SQLite, cold", "ours SQLite, warm"):
            for name in contenders:
                ratios = [a / b for a, b in zip(times[ours_name], times[name])]
                print(
                    f"  {ours_name} / {name}: {statistics.median(ratios):.2f}× "
                    f"(round by round: quartiles {statistics.quantiles(ratios, n=4)[0]:.2f}–"
                    f"{statistics.quantiles(ratios, n=4)[2]:.2f})"
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    anyio.run(main)
