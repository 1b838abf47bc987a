"""What the event loop's time went to around a pause: its own work, a wait for a core, the
host, the process's other threads, or a blocking call.

``loop_lag`` says that every collaborator waited; this says where to look. Each is fixed in a
different place: the loop's own work by fewer rooms a process, a wait for a core or time the
hypervisor gave another guest by a bigger machine, other threads (which hold the GIL while
the loop waits for it) by what those threads run, and a blocking call on the loop (a network
home directory, say) by moving that call off it.

One reading is five clocks: the loop thread's CPU time, the process's CPU time (their
difference is what the other threads ran), the loop thread's wait for a core (Linux's
``schedstat``) and the host's steal time (``/proc/stat``, per core). Both ``/proc`` files are
opened once and re-read with ``pread`` (a few microseconds, no disk), so a reading costs
about as much as a clock call; elsewhere than Linux those two clocks read 0.

A window's time (from one wake-up of the loop watcher to the next: the interval it slept and
the pause after it) is shared out in this order, each part at most what its clock saw: the
loop's CPU, its wait for a core, the host's steal, the other threads' CPU (which includes
what they ran on the other core, so it is the most the GIL can have been held), then
``idle``, at most the interval slept (the loop may have waited for events during it, never
after), and ``blocked``, the rest: the loop off every CPU although a task was due (a system
call such as a slow disk's, a lock). Before the pause the loop did some of the work counted,
so for a pause of a few tens of milliseconds the parts say what the window was like, not
which part made the pause; for a pause of a second they say what held it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

#: The parts a window's time is shared out into, in the order they are taken.
CAUSES = ("own_work", "core_wait", "host", "threads", "idle", "blocked")

#: What each part means, for a log line.
DESCRIPTIONS = {
    "own_work": "the event loop's own work",
    "core_wait": "waiting for a CPU core",
    "host": "time the host gave other machines",
    "threads": "this server's other threads",
    "idle": "waiting for events",
    "blocked": "a blocking call or wait",
}


@dataclass(frozen=True)
class Reading:
    """Five clocks at one moment, in seconds."""

    wall: float
    loop_cpu: float
    process_cpu: float
    core_wait: float
    host: float


class Clocks:
    """Reads the clocks of the thread that created it (the event loop's)."""

    def __init__(self) -> None:
        self._schedstat = _open("/proc/thread-self/schedstat")
        self._stat = _open("/proc/stat")
        self._ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._cores = os.cpu_count() or 1

    def read(self) -> Reading:
        return Reading(
            time.monotonic(),
            time.thread_time(),
            time.process_time(),
            self._core_wait(),
            self._host(),
        )

    def close(self) -> None:
        for fd in (self._schedstat, self._stat):
            if fd is not None:
                os.close(fd)
        self._schedstat = self._stat = None

    def _core_wait(self) -> float:
        """Seconds the thread has been runnable but not running (field 2 of schedstat, ns)."""
        text = _pread(self._schedstat, 128)
        if text is None:
            return 0.0
        fields = text.split()
        return int(fields[1]) / 1e9 if len(fields) >= 2 else 0.0

    def _host(self) -> float:
        """Steal time per core: the first line of /proc/stat, its 8th number (clock ticks)."""
        text = _pread(self._stat, 256)
        if text is None:
            return 0.0
        fields = text.split("\n", 1)[0].split()
        if len(fields) < 9 or fields[0] != "cpu":
            return 0.0
        return int(fields[8]) / self._ticks / self._cores


def share(before: Reading, after: Reading, idle: float) -> dict[str, float]:
    """The window's time between two readings, shared out over ``CAUSES`` (seconds);
    ``idle``: the longest the loop can have waited for events in it."""
    left = max(0.0, after.wall - before.wall)
    loop_cpu = after.loop_cpu - before.loop_cpu
    seen = {
        "own_work": loop_cpu,
        "core_wait": after.core_wait - before.core_wait,
        "host": after.host - before.host,
        "threads": (after.process_cpu - before.process_cpu) - loop_cpu,
        "idle": idle,
    }
    parts: dict[str, float] = {}
    for cause in CAUSES[:-1]:
        part = min(left, max(0.0, seen[cause]))
        parts[cause] = part
        left -= part
    parts["blocked"] = left
    return parts


def describe(parts: dict[str, float]) -> str:
    """``parts`` as a clause for a log line, largest first: "the event loop's own work 480 ms, ..."."""
    ranked = sorted(((s, cause) for cause, s in parts.items() if s >= 0.0005), reverse=True)
    return ", ".join(f"{DESCRIPTIONS[cause]} {s * 1000:.0f} ms" for s, cause in ranked)


def _open(path: str) -> int | None:
    try:
        return os.open(path, os.O_RDONLY)
    except OSError:
        return None


def _pread(fd: int | None, size: int) -> str | None:
    if fd is None:
        return None
    try:
        return os.pread(fd, size, 0).decode("ascii", "replace")
    except OSError:
        return None
