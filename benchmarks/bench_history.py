"""What history that outlives compaction costs: size, load time and reach, per store.

    python benchmarks/bench_history.py            # ~10 minutes on a 2-core machine
    python benchmarks/bench_history.py --quick    # SQLite only, shorter streams

Three workloads, each written through the store with a clock (``clock=``), so that a week
passes in seconds:

* **A week of typing.** ``benchmarks/data/updates-50000.bin`` (a notebook typed character by
  character) replayed with its timestamps spread over 7 days of 8 hours (9:00–17:00), the
  default settings (compaction every 1,000 updates, ``history_retention`` =
  ``10m:every,1h:1m,7d:1h,90d:1d``). Targets: the store within 5x the document's merged
  state, loading within 2x of applying the merged state, the history reaching back the
  whole week.
* **Streaming outputs.** A notebook whose one cell prints a line every 50 ms for an hour
  (72,000 appends to its stream output, as jupyter-ydoc stores them: a Text). Target: the
  store a small multiple of the notebook's own size (its ``.ipynb``).
* **FileYStore, 50,000 updates as fast as they come** (the recent tier then keeps every
  one of them as a point). Targets: loading within 2x of applying the merged state, disk
  within 3x of it.

Not a test: nothing here asserts; it prints the figures and a Markdown table.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import anyio
import pycrdt

from jupyter_ystore import FileYStore, SQLiteYStore
from jupyter_ystore.core.codec import iter_var_bytes

STREAM = Path(__file__).parent / "data" / "updates-50000.bin"
DAY, HOUR = 86400.0, 3600.0
META = b'{"origin": "client", "user": "alice"}'


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


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


def document_state(updates: list[bytes]) -> bytes:
    """The document's merged state: the whole document encoded as one update (deleted content
    garbage-collected, as compaction's snapshot). Not ``merge_updates``: that keeps deleted
    content (the typing stream: 1.12 MB against 0.37 MB, and 9x slower to apply). Updates are
    applied one by one: applying one merge of 72,000 appends to a Text takes memory quadratic
    in their count in pycrdt 0.14 (12,000: ~750 MB)."""
    doc = pycrdt.Doc()
    for update in updates:
        doc.apply_update(update)
    return doc.get_update()


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def make_store(kind: str, where: Path, clock: Clock | None = None, **traits: Any) -> Any:
    if clock is not None:
        traits["clock"] = clock
    if kind == "sqlite":
        return SQLiteYStore("doc", db_path=str(where / "y.db"), **traits)
    return FileYStore("doc", root_dir=str(where / "files"), **traits)


async def settle(store: Any) -> None:
    """Let automatic compactions in flight finish (they run in the store's task)."""
    await anyio.sleep(1.0)


async def measure_load(kind: str, where: Path, merged: bytes) -> tuple[float, float, int]:
    """Best-of-5 load of the stored document, best-of-5 apply of its merged state, and
    the records loading read."""
    reference = pycrdt.Doc()
    reference.apply_update(merged)
    t_merged = best_of(5, lambda: pycrdt.Doc().apply_update(merged))
    async with make_store(kind, where) as store:
        records = len([r async for r in store.read()])

        async def load() -> None:
            doc = pycrdt.Doc()
            await store.apply_updates(doc)
            assert doc.get_state() == reference.get_state()

        t_load = await best_of_async(5, load)
    return t_load, t_merged, records


# ---------------------------------------------------------------------- workloads


async def week(kind: str, updates: list[bytes], where: Path, rows: list[tuple[str, str, str]]) -> None:
    start = time.time() - 9 * DAY
    clock = Clock(start)
    per_day = len(updates) / 7
    merged = await anyio.to_thread.run_sync(document_state, updates)
    began = time.perf_counter()
    async with make_store(kind, where, clock) as store:
        for i, update in enumerate(updates):
            day = int(i // per_day)
            clock.t = start + day * DAY + 9 * HOUR + (i - day * per_day) / per_day * 8 * HOUR
            await store.write(update, metadata=META)
        await settle(store)
        written = time.perf_counter() - began
        stored = await store.read_history()
    now = clock.t
    size = disk_bytes(where)
    t_load, t_merged, records = await measure_load(kind, where, merged)
    oldest = stored.points[0] if stored.points else None
    reach = (now - oldest.end) / DAY if oldest else 0.0
    span = (now - start - 9 * HOUR) / DAY
    history = sum(len(p.delta or b"") for p in stored.points)
    name = f"{kind}, a week of typing ({len(updates):,} updates)"
    print(
        f"{name}: store {size:,} B = {size / len(merged):.2f}x merged ({len(merged):,} B); "
        f"history {len(stored.points)} points, {history:,} B; load {t_load * 1000:.1f} ms = "
        f"{t_load / t_merged:.2f}x merged ({t_merged * 1000:.1f} ms), {records} records; "
        f"reach {reach:.2f} days of {span:.2f}; written in {written:.1f} s"
    )
    rows += [
        (f"{name}: store / merged state", f"{size / len(merged):.2f}× ({size:,} B / {len(merged):,} B)", "≤ 5×"),
        (f"{name}: load / apply merged state", f"{t_load / t_merged:.2f}× ({t_load * 1000:.1f} / {t_merged * 1000:.1f} ms)", "≤ 2×"),
        (f"{name}: history reaches back", f"{reach:.2f} days (typing began {span:.2f} days before)", "the whole week"),
        (f"{name}: retained points", f"{len(stored.points)} ({history:,} B of deltas)", ""),
    ]


@functools.lru_cache(maxsize=1)  # ~80 s to build an hour of it: once for every store
def output_updates(seconds: float, every: float) -> tuple[list[bytes], bytes]:
    """A cell printing a line every ``every`` s for ``seconds``: the updates and the final
    notebook as an .ipynb."""
    from jupyter_ydoc import YNotebook

    nb = YNotebook()
    cell = {
        "cell_type": "code",
        "source": "import time\nfor i in range(72000):\n    print(f'line {i}')\n    time.sleep(0.05)",
        "metadata": {},
        "outputs": [{"output_type": "stream", "name": "stdout", "text": ""}],
        "execution_count": 1,
        "id": "stream",
    }
    updates = []
    before = nb.ydoc.get_state()
    nb.set({"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
    updates.append(nb.ydoc.get_update(before))
    text = nb.ycells[0]["outputs"][0]["text"]
    for i in range(int(seconds / every)):
        before = nb.ydoc.get_state()
        text.insert(len(text), f"line {i}\n")
        updates.append(nb.ydoc.get_update(before))
    ipynb = json.dumps(nb.get(), indent=1).encode()
    return updates, ipynb


async def streaming(kind: str, seconds: float, where: Path, rows: list[tuple[str, str, str]]) -> None:
    every = 0.05
    updates, ipynb = await anyio.to_thread.run_sync(output_updates, seconds, every)
    start = time.time() - 2 * HOUR
    clock = Clock(start)
    merged = await anyio.to_thread.run_sync(document_state, updates)
    began = time.perf_counter()
    async with make_store(kind, where, clock) as store:
        for i, update in enumerate(updates):
            clock.t = start + i * every
            await store.write(update, metadata=b'{"origin": "server", "reason": "output"}')
        await settle(store)
        written = time.perf_counter() - began
        stored = await store.read_history()
    size = disk_bytes(where)
    t_load, t_merged, records = await measure_load(kind, where, merged)
    name = f"{kind}, a cell printing every 50 ms for {seconds / 60:.0f} min ({len(updates):,} updates)"
    print(
        f"{name}: store {size:,} B = {size / len(ipynb):.2f}x the .ipynb ({len(ipynb):,} B); "
        f"{len(stored.points)} points; load {t_load * 1000:.1f} ms ({t_load / t_merged:.2f}x "
        f"merged), {records} records; written in {written:.1f} s"
    )
    rows += [
        (f"{name}: store / notebook file", f"{size / len(ipynb):.2f}× ({size:,} B / {len(ipynb):,} B)", "a small multiple"),
        (f"{name}: load / apply merged state", f"{t_load / t_merged:.2f}×", ""),
    ]


async def file_burst(updates: list[bytes], where: Path, rows: list[tuple[str, str, str]]) -> None:
    merged = await anyio.to_thread.run_sync(document_state, updates)
    began = time.perf_counter()
    async with make_store("file", where) as store:
        for update in updates:
            await store.write(update, metadata=META)
        elapsed = time.perf_counter() - began
        await settle(store)
    size = disk_bytes(where)
    log = (where / "files" / "doc").stat().st_size
    t_load, t_merged, records = await measure_load("file", where, merged)
    name = f"FileYStore, {len(updates):,} updates written at once"
    print(
        f"{name}: {len(updates) / elapsed:,.0f} writes/s; disk {size:,} B = "
        f"{size / len(merged):.2f}x merged (log {log:,} B); load {t_load * 1000:.1f} ms = "
        f"{t_load / t_merged:.2f}x merged, {records} records"
    )
    rows += [
        (f"{name}: load / apply merged state", f"{t_load / t_merged:.2f}× ({t_load * 1000:.1f} / {t_merged * 1000:.1f} ms, {records} records)", "≤ 2×"),
        (f"{name}: disk / merged state", f"{size / len(merged):.2f}× ({size:,} B, the log {log:,} B)", "≤ 3×"),
        (f"{name}: sequential writes", f"{len(updates) / elapsed:,.0f}/s", ""),
    ]


async def main(args: argparse.Namespace) -> None:
    updates = list(iter_var_bytes(STREAM.read_bytes()))
    if args.quick:
        updates = updates[:10_000]
    kinds = ["sqlite"] if args.quick else ["sqlite", "file"]
    minutes = 10 if args.quick else 60
    rows: list[tuple[str, str, str]] = []
    tmp = Path(tempfile.mkdtemp(prefix="ystore-history-bench-"))
    print(f"{len(updates):,} updates; {os.cpu_count()} CPUs; {tmp}")
    try:
        for kind in kinds:
            await week(kind, updates, tmp / f"week-{kind}", rows)
        for kind in kinds:
            await streaming(kind, minutes * 60, tmp / f"stream-{kind}", rows)
        if not args.quick:
            await file_burst(updates, tmp / "burst", rows)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n| figure | measured | target |\n|---|---:|---|")
    for row in rows:
        print(f"| {row[0]} | {row[1]} | {row[2]} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="SQLite only, 10,000 updates, 10 min of output")
    sys.exit(anyio.run(main, parser.parse_args()))
