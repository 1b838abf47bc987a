"""The LISTEN connection that wakes ``watch()`` when another process commits an update.

Notifications only say "document P has rows up to id N": the rows themselves are read with
``id > last seen`` (a payload is limited to 8000 bytes, an update is not). Because a
notification can be lost (the listening connection drops and reconnects; a server restart),
watchers also poll on a timer, so a lost notification delays an update, never loses it.

One connection per table and process, opened when the first watcher starts and kept until
the pool is released; it is re-opened by the next watcher that finds it gone.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import anyio

from jupyter_ystore.stores.postgres.cancelled_connects import quiet_cancelled_connects
from jupyter_ystore.stores.postgres.names import Names

log = logging.getLogger(__name__)


class Waker:
    """What one watcher waits on: set by a notification for its document."""

    def __init__(self, path: str):
        self.path = path
        self.event = anyio.Event()

    def set(self) -> None:
        self.event.set()

    def reset(self) -> None:
        if self.event.is_set():
            self.event = anyio.Event()

    async def wait(self, timeout: float) -> None:
        with anyio.move_on_after(timeout):
            await self.event.wait()


class Listener:
    """LISTENs on the table's channel and wakes the watchers of the notified document."""

    def __init__(self, dsn: str, names: Names, connect_timeout: float):
        self._dsn = dsn
        self._names = names
        self._connect_timeout = connect_timeout
        self._conn: Any = None
        self._lock = asyncio.Lock()
        self._wakers: dict[str, set[Waker]] = {}
        self._warned = False

    def register(self, path: str) -> Waker:
        waker = Waker(path)
        self._wakers.setdefault(path, set()).add(waker)
        return waker

    def unregister(self, waker: Waker) -> None:
        wakers = self._wakers.get(waker.path)
        if wakers is not None:
            wakers.discard(waker)
            if not wakers:
                del self._wakers[waker.path]

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def ensure(self) -> bool:
        """Connect and LISTEN if not done; False (logged once) when the server is unreachable.

        A watcher keeps polling meanwhile, so a missing listener costs latency, not updates.
        """
        if self.connected:
            return True
        async with self._lock:
            if self.connected:
                return True
            import asyncpg

            quiet_cancelled_connects()
            try:
                conn = await asyncpg.connect(self._dsn, timeout=self._connect_timeout)
                await conn.add_listener(self._names.channel, self._on_notify)
                conn.add_termination_listener(self._on_terminated)
            except Exception as exc:
                if not self._warned:
                    log.warning(
                        "cannot LISTEN for live updates on %s (%s); polling only until it works",
                        self._names.label,
                        exc,
                    )
                    self._warned = True
                return False
            self._conn = conn
            if self._warned:
                log.info("listening for live updates on %s again", self._names.label)
                self._warned = False
            # Whatever was notified while we were not listening: let every watcher look.
            self._wake_all()
            return True

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        _, _, path = payload.partition(":")
        if not path:  # a path too long for the payload: could be anyone's
            self._wake_all()
            return
        for waker in self._wakers.get(path, ()):
            waker.set()

    def _on_terminated(self, _conn: Any) -> None:
        self._conn = None
        self._wake_all()

    def _wake_all(self) -> None:
        for wakers in self._wakers.values():
            for waker in wakers:
                waker.set()

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), timeout=5)
            except Exception:
                conn.terminate()
