"""How long a compaction's squash keeps the event loop from running, in a worker thread
(as before) and in the helper process (``stores/squash_helper.py``).

    python benchmarks/bench_squash_pause.py [--rounds 3] [--squashes 10]

The history squashed is the one a compaction of the week-of-typing document meets: the
50,000-update stream squashed to a snapshot (370 KB), plus the stream's last 1,000 updates as
the tail. A task asks to wake every millisecond while the squashes run one after another in
a worker thread (``anyio.to_thread``, as every backend calls it); its lateness is the loop's
pause. Both ways take turns in every round. Prints the longest pause and the 99th percentile.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from pathlib import Path

import anyio

from jupyter_ystore.core.codec import iter_var_bytes
from jupyter_ystore.core.ydoc import squash
from jupyter_ystore.stores import compaction, squash_helper

STREAM = Path(__file__).parent / "data" / "updates-50000.bin"


async def pauses_during(squashes: int, history: list[bytes]) -> tuple[list[float], float]:
    """The loop's lateness (s) at every wake-up while ``squashes`` squashes run, and their time."""
    await anyio.to_thread.run_sync(compaction.squash, history, "doc")  # warm: thread, helper
    lags: list[float] = []
    done = False

    async def ticker() -> None:
        while not done:
            start = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - start - 0.001)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    began = time.perf_counter()
    for _ in range(squashes):
        await anyio.to_thread.run_sync(compaction.squash, history, "doc")
    took = time.perf_counter() - began
    done = True
    await task
    return lags, took


async def main(args: argparse.Namespace) -> None:
    updates = list(iter_var_bytes(STREAM.read_bytes()))
    history = [squash(updates), *updates[-1000:]]
    print(f"history: a {len(history[0]):,} B snapshot + {len(history) - 1} updates; {os.cpu_count()} CPUs")
    results: dict[str, list[tuple[float, float, float]]] = {"worker thread": [], "helper process": []}
    for _ in range(args.rounds):
        for way, env in (("worker thread", "0"), ("helper process", "1")):
            os.environ[squash_helper.ENV] = env
            lags, took = await pauses_during(args.squashes, history)
            lags.sort()
            results[way].append((lags[-1], lags[int(len(lags) * 0.99)], took / args.squashes))
    for way, runs in results.items():
        worst = [r[0] * 1000 for r in runs]
        p99 = [r[1] * 1000 for r in runs]
        each = [r[2] * 1000 for r in runs]
        print(
            f"{way:15s} longest pause {min(worst):5.1f}-{max(worst):5.1f} ms, "
            f"p99 {min(p99):5.1f}-{max(p99):5.1f} ms, a squash {statistics.median(each):5.1f} ms"
        )
    squash_helper._HELPER.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--squashes", type=int, default=10)
    asyncio.run(main(parser.parse_args()))
