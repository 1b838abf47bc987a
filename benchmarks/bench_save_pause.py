"""The event loop's longest pause while a notebook is saved and opened, on a slow disk.

A file server's ``fsync`` (a home directory on NFS) is simulated by a small ``LD_PRELOAD``
library, compiled here with ``cc``, that sleeps ``--fsync-ms`` in every ``fsync`` and
``fdatasync`` of the process: Python's and SQLite's alike (the notary's signature database
commits with them). Each contents manager runs in a fresh interpreter, saves and opens a
trusted 40-cell notebook ``--repeats`` times while a ticker on the loop measures its
longest pause, and the table gives the median and worst pause of each against jupyter_
server's stock manager measured in the same run.

    python benchmarks/bench_save_pause.py [--fsync-ms 20] [--ours-src DIR]

Linux only (``LD_PRELOAD``); run by hand, not in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>
static void slow(void) {
    const char *v = getenv("SLOW_FSYNC_MS");
    long ms = v ? atol(v) : 0;
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, 0);
}
int fsync(int fd) { static int (*real)(int); if (!real) real = dlsym(RTLD_NEXT, "fsync"); slow(); return real(fd); }
int fdatasync(int fd) { static int (*real)(int); if (!real) real = dlsym(RTLD_NEXT, "fdatasync"); slow(); return real(fd); }
"""

MANAGERS = {
    "stock": "jupyter_server.services.contents.largefilemanager:AsyncLargeFileManager",
    "offloop": "jupyter_ystore:OffLoopFileContentsManager",
}


def build_shim(folder: Path) -> Path:
    source, library = folder / "slowfsync.c", folder / "slowfsync.so"
    source.write_text(SHIM)
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", str(library), str(source), "-ldl"], check=True)
    return library


def measure(manager: str, repeats: int) -> dict[str, list[float]]:
    """In this (fresh) interpreter: the loop's longest pause in ms during each save and open."""
    import anyio
    import nbformat
    from traitlets.config import Config

    module, _, name = MANAGERS[manager].partition(":")
    manager_class = getattr(__import__(module, fromlist=[name]), name)
    pauses: dict[str, list[float]] = {"save": [], "open": []}

    async def run(root: str) -> None:
        config = Config({"NotebookNotary": {"data_dir": os.path.join(root, "data")}})
        contents = manager_class(root_dir=root, config=config)
        cells = [
            nbformat.v4.new_code_cell(f"x = {i}", outputs=[nbformat.v4.new_output("stream", text="ok\n")])
            for i in range(40)
        ]
        for cell in cells:
            cell.metadata["trusted"] = True
        nb = nbformat.v4.new_notebook(cells=cells)
        await contents.save({"type": "notebook", "content": nb}, "a.ipynb")  # (the first makes the files)
        for i in range(repeats):
            for kind in ("save", "open"):
                longest = 0.0

                async def tick() -> None:
                    nonlocal longest
                    while True:
                        before = time.perf_counter()
                        await anyio.sleep(0.002)
                        longest = max(longest, time.perf_counter() - before - 0.002)

                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(tick)
                    await anyio.sleep(0.01)
                    if kind == "save":
                        for cell in nb.cells:
                            cell.metadata["trusted"] = True  # (signing takes the flags off)
                        nb.cells[0].source = f"x = {i}"
                        await contents.save({"type": "notebook", "content": nb}, "a.ipynb")
                    else:
                        got = await contents.get("a.ipynb")
                        assert got["content"]["cells"][0]["metadata"].get("trusted") is True, "not trusted"
                    await anyio.sleep(0.01)
                    tasks.cancel_scope.cancel()
                pauses[kind].append(1000 * longest)

    with tempfile.TemporaryDirectory() as root:
        os.makedirs(os.path.join(root, "data"))
        anyio.run(run, root)
    return pauses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fsync-ms", type=int, default=20, help="what every fsync takes (0: the real disk)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--ours-src", type=Path, default=None, help="a folder holding the jupyter_ystore to measure")
    parser.add_argument("--one", choices=sorted(MANAGERS), help=argparse.SUPPRESS)  # (a child's job)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.repeats)))
        return
    env = dict(os.environ, SLOW_FSYNC_MS=str(args.fsync_ms))
    if args.ours_src is not None:
        env["PYTHONPATH"] = str(args.ours_src.resolve())
    with tempfile.TemporaryDirectory() as folder:
        if args.fsync_ms:
            env["LD_PRELOAD"] = str(build_shim(Path(folder)))
        results = {}
        for manager in MANAGERS:
            out = subprocess.run(
                [sys.executable, __file__, "--one", manager, "--repeats", str(args.repeats)],
                env=env, check=True, capture_output=True, text=True,
            ).stdout
            results[manager] = json.loads(out.strip().splitlines()[-1])
    print(f"fsync {args.fsync_ms} ms, {args.repeats} saves and opens of a trusted 40-cell notebook each")
    print("| manager | save: median / worst ms | open: median / worst ms | vs stock (medians) |")
    print("|---|---:|---:|---|")
    base = {kind: statistics.median(results["stock"][kind]) for kind in ("save", "open")}
    for manager, pauses in results.items():
        cols = [f"{statistics.median(v):.1f} / {max(v):.1f}" for v in (pauses["save"], pauses["open"])]
        ratio = ", ".join(f"{kind} {statistics.median(pauses[kind]) / max(base[kind], 1e-9):.2f}x" for kind in ("save", "open"))
        print(f"| {manager} | {cols[0]} | {cols[1]} | {ratio} |")


if __name__ == "__main__":
    main()
