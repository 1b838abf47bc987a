"""What the update guard costs a keystroke as a notebook's history gathers client ids.

Every browser session that edits a document adds a client id to its state vector for good:
a notebook a class edited all term holds hundreds. The guard checks the document's state
after each client update; it used to decode the whole state vector in Python for that
(~1.5 µs a client id). This times ``DocumentGuard.apply_now`` for a typing client in
notebooks that N earlier sessions edited, and, in the same run, the reference: the same
keystrokes with the state decoded after each one, as before.

    python benchmarks/bench_guard.py [--sessions 2,30,300,1000] [--keystrokes 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import anyio
from jupyter_ydoc import YNotebook
from pycrdt import Doc

from jupyter_ystore.core import update_guard
from jupyter_ystore.core.content import file_document
from jupyter_ystore.core.item_index import DOCUMENT_ROOTS
from jupyter_ystore.core.yupdate import parse_state_vector


def notebook(sessions: int) -> Doc:
    """A ten-cell notebook that ``sessions`` earlier clients each typed in."""
    content = {
        "cells": [
            {"cell_type": "code", "source": f"print({i})", "metadata": {}, "outputs": [],
             "execution_count": None, "id": f"c{i}"}
            for i in range(10)
        ],
        "metadata": {}, "nbformat": 4, "nbformat_minor": 5,
    }
    doc = Doc()
    doc.apply_update(file_document("notebook", content).ydoc.get_update())
    rng = random.Random(sessions)
    for k in range(sessions):
        past = Doc(client_id=rng.getrandbits(32))
        past.apply_update(doc.get_update())
        source = YNotebook(past).ycells[k % 10]["source"]
        source.insert(len(source), "z")
        doc.apply_update(past.get_update(doc.get_state()))
    return doc


def keystrokes(doc: Doc, count: int) -> list[bytes]:
    client = Doc(client_id=123_456_789)
    client.apply_update(doc.get_update())
    updates: list[bytes] = []
    client.observe(lambda event: updates.append(event.update))
    source = YNotebook(client).ycells[0]["source"]
    for i in range(count):
        source.insert(len(source), "x")
        if i % 9 == 8:
            del source[len(source) - 1]
    return updates


async def time_guard(doc_bytes: bytes, updates: list[bytes], decode_each: bool) -> float:
    """µs of CPU a client update, through the guard (``decode_each``: plus the full decode
    of the state after every update that the check did before)."""
    doc = Doc()
    doc.apply_update(doc_bytes)
    guard = update_guard.DocumentGuard(doc, DOCUMENT_ROOTS["notebook"])
    doc.observe(lambda event: guard.note_change(event.update))
    await guard.prepare()
    started = time.process_time()
    for update in updates:
        assert guard.apply_now(update)
        if decode_each:  # what the check did before: decode, then compare without zeros
            after = parse_state_vector(doc.get_state())
            update_guard._nonzero(after)
            update_guard._nonzero(after)
    return 1e6 * (time.process_time() - started) / len(updates)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", default="2,30,300,1000")
    parser.add_argument("--keystrokes", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print("past sessions | guard µs/keystroke | the same with the decode after each (as before) | ratio")
    for sessions in (int(n) for n in args.sessions.split(",")):
        doc = notebook(sessions)
        doc_bytes, updates = doc.get_update(), keystrokes(doc, args.keystrokes)
        ours, before = [], []
        for _ in range(args.rounds):  # interleaved
            ours.append(await time_guard(doc_bytes, updates, False))
            before.append(await time_guard(doc_bytes, updates, True))
        o, b = statistics.median(ours), statistics.median(before)
        print(
            f"{sessions:13d} | {o:8.1f} ({min(ours):.1f}–{max(ours):.1f}) | "
            f"{b:8.1f} ({min(before):.1f}–{max(before):.1f}) | {o / b:.2f}×"
        )


if __name__ == "__main__":
    anyio.run(main)
