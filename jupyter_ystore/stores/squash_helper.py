"""Big squashes run in a helper process, so that they never hold the server's GIL.

yrs keeps the GIL for the whole of each call, and a squash makes a few long ones (applying the
history, encoding the document). In a worker thread that still stalls the event loop: 12-18 ms
for the 370 KB document of the benchmark stream, and in proportion for a notebook of many MB,
during which no room relays a keystroke. A process has a GIL of its own; the thread that asked
waits for its answer on a pipe, with the GIL released.

The helper is a plain ``python`` child reading requests on stdin (not ``multiprocessing``,
whose ``spawn`` imports the parent's main module: a user's script without a
``if __name__ == "__main__"`` guard would run again). One per process, started on first use,
one squash at a time, started again if it dies; whenever it cannot answer, the squash runs in
the calling thread as before. It runs ``NICENESS`` below the server's CPU priority: on a busy
machine (a hub node with many servers) a big squash must not take a core from the event loops.
Only histories of at least ``MIN_BYTES`` go there (a small squash takes less than the trip).
``JUPYTER_YSTORE_SQUASH_HELPER=0`` turns it off.

A server's compactions go there whole, whatever their size (``offload_compactions``, turned
on by the server extension): a compaction of a small notebook (a squash, then planning its
history points) holds the GIL for only a few ms in all, but in a worker thread each time the
event loop makes a system call (a websocket write, a socket read) the thread takes the GIL
and the loop waits until the thread lets go: up to the switch interval (5 ms) for Python
code and the whole call for yrs. Measured at 480 typing clients: iterations of 15-20 ms in
which the loop ran 1-3 ms, each while a compaction was squashing or planning in a thread.

Protocol (little-endian), one kind of request, a call: ``u32 length + pickle of (function,
args)``; answer ``u8 status`` (0 ok, 2 the call raised), then ok: ``u32 length + pickle of the
result``. A call that raised there (a squash of bytes that are not Yjs) runs again here, so
that its exception is raised as the code here raises it.
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
import struct
import subprocess
import sys
import threading
from typing import IO, Any, Callable, Sequence, TypeVar

from jupyter_ystore.core import ydoc as _ydoc

log = logging.getLogger("jupyter_ystore")

#: Bytes of updates from which a squash goes to the helper process.
MIN_BYTES = 256 * 1024
#: How much the helper lowers its CPU priority (``nice``). Its work (compactions, reading a
#: file at a room's first open) can wait a few milliseconds; the server's event loop and its
#: SQLite thread, which every keystroke goes through, should not wait for a core behind it.
NICENESS = 10
ENV = "JUPYTER_YSTORE_SQUASH_HELPER"

_U32 = struct.Struct("<I")

T = TypeVar("T")

_offload = False


def offload_compactions(on: bool = True) -> None:
    """Send every compaction's CPU work to the helper (``run``), not only big squashes: for
    a process whose event loop serves people (the server extension turns it on)."""
    global _offload
    _offload = on


def offloading() -> bool:
    """Whether ``run`` sends its calls to the helper."""
    return _offload and enabled()


def enabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def squash_clean(updates: Sequence[bytes]) -> tuple[bytes, bool]:
    """``ydoc.squash_clean``, in the helper process when the history is big (blocks the
    calling thread, not the GIL). A squash that fails there raises as it would here."""
    if sum(len(update) for update in updates) < MIN_BYTES or not enabled():
        return _ydoc.squash_clean(updates)
    answer = _HELPER.call(_ydoc.squash_clean, (list(updates),))
    return answer[0] if answer is not None else _ydoc.squash_clean(updates)


def run(func: Callable[..., T], *args: Any) -> T:
    """``func(*args)``, in the helper process when ``offloading()`` (blocks the calling
    thread, not the GIL), else here. ``func`` and its arguments must pickle (``func`` a
    module-level function). Whenever the helper cannot answer, or the call raised there, it
    runs here: the same result, and the same exception as here."""
    return _run(func, args, wait=True)


def run_if_idle(func: Callable[..., T], *args: Any) -> T:
    """``run``, where it does not wait: in the helper process when it is up and free, else
    here. For work someone is waiting on (a room reading its file): behind a compaction's
    squash of a big history, or the helper's start (0.5 s and more), it would come later
    than in this thread."""
    return _run(func, args, wait=False)


def _run(func: Callable[..., T], args: tuple[Any, ...], *, wait: bool) -> T:
    if offloading():
        answer = _HELPER.call(func, args, wait=wait)
        if answer is not None:
            return answer[0]
    return func(*args)


def warm_up() -> None:
    """Start the helper in a thread of its own and return (a server, at its start): the
    first ``run_if_idle`` finds it up."""
    if offloading():
        threading.Thread(target=_HELPER.call, args=(os.getpid, ()), daemon=True, name="ystore-helper-start").start()


class _Helper:
    """The child process and the lock that gives it one request at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._failures = 0

    def call(self, func: Callable[..., T], args: tuple[Any, ...], *, wait: bool = True) -> tuple[T] | None:
        """``(func(*args),)`` computed by the helper, or None when it could not give one or
        the call raised there (then run it here). ``wait=False``: None at once, too, when
        the helper is busy with another call or not started."""
        try:
            payload = pickle.dumps((func, args), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # a programming error: say so, and run it here
            log.warning("jupyter_ystore: %s cannot go to the helper process (%s)", func, exc)
            return None
        return self._request(lambda process: _ask_call(process, payload), wait=wait)

    def _request(self, ask: Callable[[subprocess.Popen[bytes]], T], *, wait: bool = True) -> T | None:
        if not self._lock.acquire(blocking=wait):
            return None
        try:
            if not wait and (self._process is None or self._process.poll() is not None):
                return None  # not up (never started, or died since): no wait for a new one
            return self._ask(ask)
        finally:
            self._lock.release()

    def _ask(self, ask: Callable[[subprocess.Popen[bytes]], T]) -> T | None:
        if self._failures >= 3:  # it keeps dying: this host cannot run it
            return None
        for _attempt in range(2):
            process = self._process or self._start()
            if process is None:
                return None
            try:
                answer = ask(process)
            except (OSError, EOFError, struct.error, pickle.UnpicklingError) as exc:
                self._failures += 1
                log.warning("jupyter_ystore: the squash helper process failed (%s)", exc)
                self._stop()
                continue
            self._failures = 0  # three failures in a row, not in a lifetime, turn it off
            return answer
        return None

    def _start(self) -> subprocess.Popen[bytes] | None:
        package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        code = (
            f"import sys; sys.path.insert(0, {package_parent!r}); "
            "from jupyter_ystore.stores.squash_helper import serve; serve()"
        )
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-c", code],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                close_fds=True,
            )
        except OSError as exc:
            self._failures = 3
            log.warning("jupyter_ystore: no squash helper process (%s); squashing in this one", exc)
            return None
        log.debug("jupyter_ystore: squash helper process %d started", self._process.pid)
        return self._process

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        try:
            if process.stdin is not None:
                process.stdin.close()
            process.kill()
            process.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass

    def shutdown(self) -> None:
        with self._lock:
            self._stop()


def _ask_call(process: subprocess.Popen[bytes], payload: bytes) -> tuple[Any] | None:
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(_U32.pack(len(payload)))
    process.stdin.write(payload)
    process.stdin.flush()
    reply = process.stdout
    status = _read(reply, 1)[0]
    if status != 0:
        return None  # it raised there: run it here, to raise it as here
    return (pickle.loads(_read(reply, _U32.unpack(_read(reply, 4))[0])),)


def _read(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if data is None or len(data) != size:
        raise EOFError("the squash helper process closed its pipe")
    return data


def serve() -> None:
    """The helper's main loop: answer calls until stdin closes (the parent is gone)."""
    os.environ[ENV] = "0"  # squash here: this is the helper
    _lower_priority()
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = requests.read(4)
        if len(head) != 4:
            return
        _serve_call(_read(requests, _U32.unpack(head)[0]), replies)


def _lower_priority() -> None:
    """``NICENESS`` below the server (where the system has ``nice``; never fatal)."""
    nice = getattr(os, "nice", None)
    if nice is not None:
        try:
            nice(NICENESS)
        except OSError:
            pass


def _serve_call(payload: bytes, replies: IO[bytes]) -> None:
    try:
        func, args = pickle.loads(payload)
        result = pickle.dumps(func(*args), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        replies.write(b"\x02")
    else:
        replies.write(b"\x00" + _U32.pack(len(result)) + result)
    replies.flush()


_HELPER = _Helper()
atexit.register(_HELPER.shutdown)
