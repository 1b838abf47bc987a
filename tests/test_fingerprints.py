"""The rooms' file polls: one watcher per loop stats the files of a slot in one thread call
and wakes a room only when its file or its path is not what the room confirmed."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import anyio
import pytest

from jupyter_ystore.server.rooms import fingerprints

pytestmark = pytest.mark.anyio

INTERVAL = 0.2  # slots of 50 ms


class Room:
    """What a room does with its watch: take the watcher's news, confirm it, rearm."""

    def __init__(self, path: Path, *, on_disk: bool = True) -> None:
        self.path = str(path)
        self.on_disk = on_disk
        self.fail = False
        self.wakes: list[Any] = []
        self.watch = fingerprints.watch(INTERVAL, self.path_of, self.os_path_of, self.changed)

    def path_of(self) -> str:
        if self.fail:
            raise LookupError("no file has that id")
        return self.path

    def os_path_of(self, path: str) -> str | None:
        return path if self.on_disk else None

    def changed(self, found: fingerprints.Found) -> None:
        seen, fingerprint = found
        self.wakes.append(found)
        if fingerprint is not None:
            self.watch.known = (seen, fingerprint)  # type: ignore[assignment]  (the contents manager agreed)
        self.watch.rearm()

    async def run(self) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            fingerprints.unwatch(self.watch)


def counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = fingerprints._fingerprints

    def counted(os_paths: list[str]) -> list[fingerprints.Fingerprint | None]:
        calls.append(len(os_paths))
        return real(os_paths)

    monkeypatch.setattr(fingerprints, "_fingerprints", counted)
    return calls


async def woken(room: Room, times: int) -> None:
    """Wait (5 s at most) until ``room`` was woken ``times`` times."""
    with anyio.fail_after(5):
        while len(room.wakes) < times:
            await anyio.sleep(0.01)


async def test_a_rooms_file_as_it_confirmed_never_wakes_it_and_a_change_does(tmp_path: Path) -> None:
    path = tmp_path / "nb.ipynb"
    path.write_text("{}")
    room = Room(path)
    async with anyio.create_task_group() as tg:
        tg.start_soon(room.run)
        await anyio.sleep(INTERVAL * 1.5)
        assert room.wakes == [(room.path, fingerprints.fingerprint(room.path))]  # nothing known yet
        await anyio.sleep(INTERVAL * 3)
        assert len(room.wakes) == 1  # three intervals as confirmed: never woken
        path.write_text('{"cells": []}')
        await woken(room, 2)
        assert room.wakes[1] == (room.path, fingerprints.fingerprint(room.path))
        assert room.wakes[1][1] != room.wakes[0][1]
        tg.cancel_scope.cancel()


async def test_a_rename_wakes_the_room_with_the_new_path(tmp_path: Path) -> None:
    path = tmp_path / "nb.ipynb"
    path.write_text("{}")
    room = Room(path)
    async with anyio.create_task_group() as tg:
        tg.start_soon(room.run)
        await anyio.sleep(INTERVAL * 1.5)
        renamed = tmp_path / "renamed.ipynb"
        os.rename(path, renamed)
        room.path = str(renamed)
        # (a tick that read the old path just before the rename may wake the room with it
        # first, the file gone: the rename's own wake follows)
        with anyio.fail_after(5):
            while not any(seen == str(renamed) for seen, _found in room.wakes[1:]):
                await anyio.sleep(0.01)
        found = next(found for seen, found in room.wakes[1:] if seen == str(renamed))
        assert found == fingerprints.fingerprint(str(renamed))
        tg.cancel_scope.cancel()


async def test_rooms_it_cannot_stat_are_woken_every_interval(tmp_path: Path) -> None:
    """A path lookup that fails, a file that is gone, a contents manager off the file
    system: the watcher cannot tell, so the room asks the contents manager each interval."""
    failing = Room(tmp_path / "a.ipynb")
    failing.fail = True
    gone = Room(tmp_path / "gone.ipynb")
    elsewhere = Room(tmp_path / "c.ipynb", on_disk=False)
    async with anyio.create_task_group() as tg:
        for room in (failing, gone, elsewhere):
            tg.start_soon(room.run)
        await anyio.sleep(INTERVAL * 3.5)
        tg.cancel_scope.cancel()
    assert len(failing.wakes) >= 2 and set(failing.wakes) == {(None, None)}
    assert len(gone.wakes) >= 2 and set(gone.wakes) == {(gone.path, None)}
    assert len(elsewhere.wakes) >= 2 and set(elsewhere.wakes) == {(elsewhere.path, None)}


async def test_the_files_of_a_slot_share_one_thread_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight rooms: two a slot, so each tick stats two files in one call, and every room is
    looked at once an interval."""
    calls = counting(monkeypatch)
    rooms = []
    for i in range(8):
        path = tmp_path / f"nb{i}.ipynb"
        path.write_text("x" * i)
        rooms.append(Room(path))
    watcher = rooms[0].watch.watcher
    assert watcher is not None and [len(slot) for slot in watcher.slots] == [2, 2, 2, 2]
    async with anyio.create_task_group() as tg:
        for room in rooms:
            tg.start_soon(room.run)
        await anyio.sleep(INTERVAL * 2.1)
        tg.cancel_scope.cancel()
    assert calls and set(calls) == {2}
    assert SLOTS_PER_INTERVAL * 2 - 1 <= len(calls) <= SLOTS_PER_INTERVAL * 2 + 1
    assert all(len(room.wakes) == 1 for room in rooms)  # confirmed once, then left asleep


SLOTS_PER_INTERVAL = fingerprints.SLOTS


async def test_a_room_busy_with_a_change_is_not_looked_at(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While a room is busy with a change (asking the contents manager, not rearmed), its
    file is not stated again nor the room called twice for one change."""
    calls = counting(monkeypatch)
    path = tmp_path / "nb.ipynb"
    path.write_text("{}")
    found: list[fingerprints.Found] = []
    watch = fingerprints.watch(INTERVAL, lambda: str(path), lambda p: p, found.append)
    try:
        with anyio.fail_after(5):
            while not found:
                await anyio.sleep(0.01)
        await anyio.sleep(INTERVAL * 2)  # busy: not rearmed
        assert calls == [1] and len(found) == 1
        watch.rearm()  # nothing confirmed: called again, once
        with anyio.fail_after(5):
            while len(found) < 2:
                await anyio.sleep(0.01)
        assert found[1] == found[0]
    finally:
        fingerprints.unwatch(watch)


async def test_no_timer_is_left_once_the_last_room_is_gone(tmp_path: Path) -> None:
    path = tmp_path / "nb.ipynb"
    path.write_text("{}")
    rooms = [Room(path), Room(path)]
    watcher = rooms[0].watch.watcher
    assert watcher is not None and watcher._timer is not None
    async with anyio.create_task_group() as tg:
        for room in rooms:
            tg.start_soon(room.run)
        await anyio.sleep(INTERVAL)
        tg.cancel_scope.cancel()
    assert watcher._timer is None and not any(watcher.slots)
    loop = asyncio.get_running_loop()
    assert not [h for h in loop._scheduled if not h.cancelled() and getattr(h, "_callback", None) == watcher._tick]  # type: ignore[attr-defined]


async def test_ticks_fall_on_slot_boundaries_of_the_loops_clock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rooms opened at any moment are looked at on boundaries of the loop's clock (watchers of
    other intervals too): the loop wakes once for all of a boundary's work."""
    dues: list[float] = []
    real = fingerprints.FileWatcher._schedule

    def recorded(self: fingerprints.FileWatcher) -> None:
        real(self)
        assert self._timer is not None
        dues.append(self._timer.when())

    monkeypatch.setattr(fingerprints.FileWatcher, "_schedule", recorded)
    path = tmp_path / "nb.ipynb"
    path.write_text("{}")
    await anyio.sleep(0.013)  # not on a boundary
    room = Room(path)
    async with anyio.create_task_group() as tg:
        tg.start_soon(room.run)
        await anyio.sleep(INTERVAL * 1.3)
        tg.cancel_scope.cancel()
    slot = INTERVAL / fingerprints.SLOTS
    assert len(dues) >= 4
    assert all(abs(due / slot - round(due / slot)) < 1e-6 for due in dues)
    assert len({round(due / slot) for due in dues}) == len(dues)  # never twice for one boundary


async def test_a_watch_with_a_callback_is_called_once_a_change_until_rearmed(tmp_path: Path) -> None:
    """Rooms take the watcher's news by callback (no task of theirs waits for it): called once
    for a change, not again while the room is busy with it (even if the file changes again),
    and again after ``rearm`` for what is still not confirmed."""
    path = tmp_path / "nb.ipynb"
    path.write_text("{}")
    calls: list[fingerprints.Found] = []
    watch = fingerprints.watch(INTERVAL, lambda: str(path), lambda p: p, calls.append)
    try:
        with anyio.fail_after(5):
            while not calls:
                await anyio.sleep(0.01)
        assert calls == [(str(path), fingerprints.fingerprint(str(path)))]  # nothing known yet
        path.write_text('{"cells": []}')
        await anyio.sleep(INTERVAL * 2.5)
        assert len(calls) == 1  # busy with the first: not called again
        watch.known = calls[0]  # type: ignore[assignment]  (confirmed the first, not the second)
        watch.rearm()
        with anyio.fail_after(5):
            while len(calls) < 2:
                await anyio.sleep(0.01)
        assert calls[1] == (str(path), fingerprints.fingerprint(str(path)))
        watch.known = calls[1]  # type: ignore[assignment]
        watch.rearm()
        await anyio.sleep(INTERVAL * 2.5)
        assert len(calls) == 2  # as confirmed: never called
    finally:
        fingerprints.unwatch(watch)
