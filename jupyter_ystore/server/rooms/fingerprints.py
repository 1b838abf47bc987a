"""The open rooms' file polls: one watcher per event loop, which wakes a room only when its
file (or the file's path) changed.

Every open room checks its file every ``poll_interval`` seconds for changes made outside
(``git pull``, an editor, a script) and for renames (``FileSync.poll``). With a poll task a
room, each poll woke the loop for its timer, its worker-thread stat and the answer, then took
the room's save lock and read the document's path: measured at rest with 50 open rooms, a
room cost 0.1 ms of CPU a second without polls and 0.5 with them (0.25 with the polls of a
slot sharing their wake-ups), and under typing the polls still took a tenth of the CPU of an
edit.

So rooms do not poll. A ``FileWatcher`` does, for all the rooms of its loop: every
``interval / SLOTS`` seconds it takes the rooms of one slot, looks up each file's path (a
rename changes it) and stats their files in one worker-thread call. A room whose path and
``stat(2)`` are what it last confirmed with the contents manager (``Watch.known``) is left
asleep; the others are woken, and ask the contents manager under their save lock as before.
No task of the room waits for that: the watcher calls the room back (``Watch.on_change``),
which handles the change in a short task (a waiting task was about 30 objects a room that
every full garbage collection walked).
Not one slot for all: a thousand rooms in one turn of the loop would be a pause.
"""

from __future__ import annotations

import asyncio
import math
import os
from functools import partial
from typing import Callable

from jupyter_ystore.core import threads
from jupyter_ystore.core.per_loop import PerLoop

#: A poll interval is cut into this many slots; a watched file is looked at in one of them.
SLOTS = 4

Fingerprint = tuple[int, int, int, int]

#: What a room is woken with: the path and fingerprint the watcher found (None: the path
#: lookup or the stat failed, or the file is not on a file system; the room asks the
#: contents manager, which says why).
Found = tuple["str | None", "Fingerprint | None"]


def fingerprint(os_path: str) -> Fingerprint | None:
    """The file's inode, size, modification and change times; None when it cannot be
    read (gone, permissions): the caller then asks the contents manager, which says why."""
    try:
        info = os.stat(os_path)
    except OSError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def _fingerprints(os_paths: list[str]) -> list[Fingerprint | None]:
    return [fingerprint(os_path) for os_path in os_paths]


class Watch:
    """One room's file, as its watcher sees it."""

    __slots__ = ("path_of", "os_path_of", "on_change", "known", "slot", "watcher", "_armed", "_path", "_os_path")

    def __init__(
        self,
        path_of: Callable[[], str],
        os_path_of: Callable[[str], "str | None"],
        on_change: Callable[[Found], None],
    ) -> None:
        self.path_of = path_of  # the file's path now (raises when its id is gone)
        self.os_path_of = os_path_of  # where that is on disk (None: not a file system)
        #: Called (on the loop) when the file is not as ``known`` (at once after ``add``:
        #: nothing is known yet); then not again until ``rearm()``. A room handles the
        #: change in a short task: no task waits for it.
        self.on_change = on_change
        self._armed = True
        #: (path, fingerprint) the room confirmed with the contents manager: not woken for it.
        self.known: tuple[str, Fingerprint] | None = None
        self.slot = 0
        self.watcher: FileWatcher | None = None
        self._path: str | None = None  # the last path looked up, and where it is on disk
        self._os_path: str | None = None

    def rearm(self) -> None:
        """The room is done with the last change: call ``on_change`` for the next one."""
        self._armed = True

    @property
    def waiting(self) -> bool:
        return self._armed

    def wake(self, path: str | None, found: Fingerprint | None) -> None:
        if self._armed:
            self._armed = False
            self.on_change((path, found))

    def locate(self) -> tuple[str, str | None]:
        """The file's path and where it is on disk (the latter remembered per path)."""
        path = self.path_of()
        if path != self._path:
            self._path, self._os_path = path, self.os_path_of(path)
        return path, self._os_path


class FileWatcher:
    """The watched files of one event loop at one interval."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        self.loop = loop
        self.interval = interval
        self.slots: list[list[Watch]] = [[] for _ in range(SLOTS)]
        self._timer: asyncio.TimerHandle | None = None
        self._boundary = 0  # the last boundary scheduled (a timer may fire a hair early)

    def add(self, watch: Watch) -> None:
        """Watch ``watch`` in the emptiest slot, from its next turn on."""
        watch.slot = min(range(SLOTS), key=lambda slot: len(self.slots[slot]))
        watch.watcher = self
        self.slots[watch.slot].append(watch)
        if self._timer is None:
            self._schedule()

    def remove(self, watch: Watch) -> None:
        members = self.slots[watch.slot]
        if watch in members:
            members.remove(watch)
        watch.watcher = None
        if self._timer is not None and not any(self.slots):
            self._timer.cancel()  # nothing left to watch: no timer left on the loop
            self._timer = None

    def _schedule(self) -> None:
        """Tick at the next slot boundary of the loop's clock."""
        length = self.interval / SLOTS
        boundary = max(math.floor(self.loop.time() / length) + 1, self._boundary + 1)
        self._boundary = boundary
        self._timer = self.loop.call_at(boundary * length, self._tick, boundary % SLOTS)

    def _tick(self, slot: int) -> None:
        """Look at the files of one slot: paths here, stats in one thread call."""
        self._schedule()
        batch: list[tuple[Watch, str, str]] = []
        for watch in self.slots[slot]:
            if not watch.waiting:
                continue  # its room is still busy with the last change
            try:
                path, os_path = watch.locate()
            except Exception:
                watch.wake(None, None)  # the room looks again, and says why
                continue
            if os_path is None:
                watch.wake(path, None)
            else:
                batch.append((watch, path, os_path))
        if batch:
            try:
                done = self.loop.run_in_executor(
                    threads.executor(), _fingerprints, [os_path for _, _, os_path in batch]
                )
            except RuntimeError:  # the executor is shut down (the server is stopping)
                for watch, path, _ in batch:
                    watch.wake(path, None)
                return
            done.add_done_callback(partial(_answer, batch))


def _answer(batch: list[tuple[Watch, str, str]], outcome: asyncio.Future[list[Fingerprint | None]]) -> None:
    """Wake the rooms whose files are not as they confirmed (all of them if the stats
    failed)."""
    failed = outcome.cancelled() or outcome.exception() is not None
    found = [None] * len(batch) if failed else outcome.result()
    for (watch, path, _), stat in zip(batch, found):
        if stat is None or watch.known != (path, stat):
            watch.wake(path, stat)


_watchers: PerLoop[dict[float, FileWatcher]] = PerLoop(lambda loop: {})


def watch(
    interval: float,
    path_of: Callable[[], str],
    os_path_of: Callable[[str], "str | None"],
    on_change: Callable[[Found], None],
) -> Watch:
    """Watch a file every ``interval`` seconds on the running loop, calling ``on_change``
    (see ``Watch``); ``unwatch`` ends it."""
    loop = asyncio.get_running_loop()
    watchers = _watchers.get(loop)
    watcher = watchers.get(interval)
    if watcher is None:
        watcher = watchers[interval] = FileWatcher(loop, interval)
    new = Watch(path_of, os_path_of, on_change)
    watcher.add(new)
    return new


def unwatch(watch: Watch) -> None:
    if watch.watcher is not None:
        watch.watcher.remove(watch)
