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
