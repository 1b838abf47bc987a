"""The rooms' file polls: stats asked together share one worker-thread call."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from jupyter_ystore.server.rooms import fingerprints

pytestmark = pytest.mark.anyio


async def test_stats_asked_together_share_one_thread_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []
    real = fingerprints._fingerprints

    def counted(os_paths: list[str]) -> list[fingerprints.Fingerprint | None]:
        calls.append(list(os_paths))
        return real(os_paths)

    monkeypatch.setattr(fingerprints, "_fingerprints", counted)
    files = [tmp_path / f"nb{i}.ipynb" for i in range(10)]
    for i, path in enumerate(files):
        path.write_text("x" * i)
    results: dict[int, fingerprints.Fingerprint | None] = {}

    async def poll(i: int, path: Path) -> None:
        results[i] = await fingerprints.of(str(path))

    async with anyio.create_task_group() as tasks:
        for i, path in enumerate(files + [tmp_path / "gone.ipynb"]):
            tasks.start_soon(poll, i, path)
    assert len(calls) == 1 and len(calls[0]) == 11
    for i, path in enumerate(files):
        info = os.stat(path)
        assert results[i] == (info.st_ino, i, info.st_mtime_ns, info.st_ctime_ns)
    assert results[10] is None  # gone: the contents manager will say why


async def test_a_cancelled_poll_leaves_the_others_their_answer(tmp_path: Path) -> None:
    path = tmp_path / "nb.ipynb"
    path.write_text("{}")
    got: list[object] = []

    async def poll() -> None:
        got.append(await fingerprints.of(str(path)))

    async with anyio.create_task_group() as tasks:
        with anyio.CancelScope() as cancelled:
            cancelled.cancel()
            await fingerprints.of(str(path))  # asked, then cancelled before its answer
        tasks.start_soon(poll)
    assert got == [fingerprints.fingerprint(str(path))]


async def test_a_file_that_changes_gets_another_fingerprint(tmp_path: Path) -> None:
    path = tmp_path / "nb.ipynb"
    path.write_text("{}")
    before = await fingerprints.of(str(path))
    path.write_text('{"cells": []}')
    assert await fingerprints.of(str(path)) != before


@pytest.mark.parametrize("interval", [1.0, 0.2, 7.5])
def test_polls_are_due_at_slot_boundaries_shared_by_the_rooms(interval: float) -> None:
    """Rooms that opened at different moments poll at one of ``SLOTS`` boundaries of the
    interval: at least ``interval`` after the last poll, less than a slot later than that."""
    slot = interval / fingerprints.SLOTS
    dues = set()
    for step in range(400):
        now = 1000.0 + step * interval / 97  # rooms' last polls, spread over four intervals
        delay = fingerprints.poll_delay(interval, now)
        assert interval - 1e-9 <= delay < interval + slot + 1e-9
        dues.add(round(now + delay, 9))
    # every due time is a slot boundary, so the 400 rooms share a handful of wake-ups
    assert all(abs(due / slot - round(due / slot)) < 1e-6 for due in dues)
    span = 399 * interval / 97
    assert len(dues) <= span / slot + 2  # one per slot the 400 moments cover, not 400


async def test_rooms_polling_in_one_slot_share_one_thread_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pollers sleeping ``poll_delay`` from different moments of one slot wake together and
    their stats go to the worker thread in one call."""
    calls: list[int] = []
    real = fingerprints._fingerprints

    def counted(paths: list[str]) -> list:
        calls.append(len(paths))
        return real(paths)

    monkeypatch.setattr(fingerprints, "_fingerprints", counted)
    files = []
    for i in range(6):
        path = tmp_path / f"f{i}"
        path.write_text("x")
        files.append(str(path))
    # slots of 0.3 s; the pollers start 0.025 s apart, 0.125 s in all: without slots they
    # would poll as far apart, more than a stat batch's WINDOW (a slow machine has 0.17 s to spare)
    interval = 1.2

    async def poller(path: str) -> None:
        await anyio.sleep(fingerprints.poll_delay(interval, anyio.current_time()))
        assert await fingerprints.of(path) is not None

    start = anyio.current_time()
    slot = interval / fingerprints.SLOTS
    # begin just after a boundary so that all six starts fall in one slot
    await anyio.sleep((int(start / slot) + 1) * slot - start + 0.001)
    async with anyio.create_task_group() as tg:
        for path in files:
            tg.start_soon(poller, path)
            await anyio.sleep(0.025)
    assert calls == [6]
