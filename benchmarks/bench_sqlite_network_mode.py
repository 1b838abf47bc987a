"""What SQLite's network-safe mode costs, measured on a local disk.

On a network or FUSE file system ``SQLiteYStore`` (``journal_mode = "auto"``) runs without
WAL: ``journal_mode=DELETE`` and ``synchronous=FULL`` (see ``stores/filesystems.py``). This
times the same writes in both modes, interleaved round by round (the host's speed swings
within minutes), on one local folder: sequential awaited writes into one document, and 20
documents written at once (group commit). On a real NFS mount every fsync is a round trip
to the file server, so the absolute figures there are lower; the ratio is what this shows.

    python benchmarks/bench_sqlite_network_mode.py --rounds 3 --updates 2000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stores import STREAM, concurrent_writes, sequential_writes  # noqa: E402

from jupyter_ystore import SQLiteYStore  # noqa: E402
from jupyter_ystore.core.codec import iter_var_bytes  # noqa: E402

MODES = {
    "WAL, synchronous=NORMAL (local default)": {"journal_mode": "WAL"},
    "WAL, synchronous=FULL": {"journal_mode": "WAL", "synchronous": "FULL"},
    "DELETE, synchronous=FULL (network-safe)": {"journal_mode": "DELETE"},
}


def running(db: Path, settings: dict[str, Any]) -> Any:
    @asynccontextmanager
    async def run(path: str) -> AsyncIterator[Any]:
        async with SQLiteYStore(path, db_path=str(db), **settings) as store:
            yield store

    return run


async def main(args: argparse.Namespace) -> None:
    updates = list(iter_var_bytes(STREAM.read_bytes()))[: args.updates]
    per_doc = updates[: max(1, args.updates // 20)]
    results: dict[str, dict[str, list[float]]] = {m: {"seq": [], "conc": []} for m in MODES}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for r in range(args.rounds):
            for i, (mode, settings) in enumerate(MODES.items()):
                db = Path(tmp) / f"r{r}-{i}.db"
                results[mode]["seq"].append(await sequential_writes(running(db, settings), updates, "seq"))
                db = Path(tmp) / f"r{r}-{i}-c.db"
                results[mode]["conc"].append(await concurrent_writes(running(db, settings), per_doc, 20))
    base = results[next(iter(MODES))]
    print(f"{len(updates)} updates, {args.rounds} rounds, folder {args.dir or tempfile.gettempdir()}")
    for mode, figures in results.items():
        seq, conc = statistics.median(figures["seq"]), statistics.median(figures["conc"])
        print(
            f"{mode:42s} sequential {seq:8.0f}/s ({seq / statistics.median(base['seq']):.2f}x)  "
            f"20 docs {conc:8.0f}/s ({conc / statistics.median(base['conc']):.2f}x)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--updates", type=int, default=2000)
    parser.add_argument("--dir", default=None, help="folder to write in (default: the temp folder)")
    anyio.run(main, parser.parse_args())
