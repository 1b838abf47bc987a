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
the calling thread as before. Only histories of at least ``MIN_BYTES`` go there (a small squash
takes less than the trip). ``JUPYTER_YSTORE_SQUASH_HELPER=0`` turns it off.

Protocol (little-endian): request ``u32 count`` then ``u32 length + bytes`` per update; answer
``u8 status`` (0 ok, 1 error), then ok: ``u8 clean, u32 length + snapshot``, error:
``u32 length + UTF-8 message`` (raised here as ``CRDTError``).
"""

from __future__ import annotations

import atexit
import logging
import os
import struct
import subprocess
import sys
import threading
from typing import IO, Sequence

from jupyter_ystore.core import ydoc as _ydoc

log = logging.getLogger("jupyter_ystore")

#: Bytes of updates from which a squash goes to the helper process.
MIN_BYTES = 256 * 1024
ENV = "JUPYTER_YSTORE_SQUASH_HELPER"

_U32 = struct.Struct("<I")


def enabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def squash_clean(updates: Sequence[bytes]) -> tuple[bytes, bool]:
    """``ydoc.squash_clean``, in the helper process when the history is big (blocks the
    calling thread, not the GIL). A squash that fails there raises as it would here."""
    if sum(len(update) for update in updates) < MIN_BYTES or not enabled():
        return _ydoc.squash_clean(updates)
    answer = _HELPER.squash(updates)
    return answer if answer is not None else _ydoc.squash_clean(updates)


class _Helper:
    """The child process and the lock that gives it one request at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._failures = 0

    def squash(self, updates: Sequence[bytes]) -> tuple[bytes, bool] | None:
        """The helper's answer, or None when it could not give one (then squash here)."""
        with self._lock:
            if self._failures >= 3:  # it keeps dying: this host cannot run it
                return None
            for _attempt in range(2):
                process = self._process or self._start()
                if process is None:
                    return None
                try:
                    answer = _ask(process, updates)
                except (OSError, EOFError, struct.error) as exc:
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


def _ask(process: subprocess.Popen[bytes], updates: Sequence[bytes]) -> tuple[bytes, bool]:
    assert process.stdin is not None and process.stdout is not None
    out = process.stdin
    out.write(_U32.pack(len(updates)))
    for update in updates:
        out.write(_U32.pack(len(update)))
        out.write(update)
    out.flush()
    reply = process.stdout
    status = _read(reply, 1)[0]
    if status == 0:
        clean = _read(reply, 1)[0] == 1
        return _read(reply, _U32.unpack(_read(reply, 4))[0]), clean
    message = _read(reply, _U32.unpack(_read(reply, 4))[0]).decode("utf-8", "replace")
    raise _ydoc.CRDTError(message)


def _read(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if data is None or len(data) != size:
        raise EOFError("the squash helper process closed its pipe")
    return data


def serve() -> None:
    """The helper's main loop: answer requests until stdin closes (the parent is gone)."""
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = requests.read(4)
        if len(head) != 4:
            return
        updates = []
        for _ in range(_U32.unpack(head)[0]):
            updates.append(_read(requests, _U32.unpack(_read(requests, 4))[0]))
        try:
            snapshot, clean = _ydoc.squash_clean(updates)
        except Exception as exc:
            message = f"{exc}".encode()
            replies.write(b"\x01" + _U32.pack(len(message)) + message)
        else:
            replies.write(b"\x00" + (b"\x01" if clean else b"\x00") + _U32.pack(len(snapshot)) + snapshot)
        replies.flush()


_HELPER = _Helper()
atexit.register(_HELPER.shutdown)
