"""A room's durable write pipeline: every change is stored before anyone receives it.

The room queues each change of its shared document (``queue``); one writer task writes the
queue in order, consecutive changes of one origin merged into one write, and only then
relays them to the clients, so whatever a client receives (its own echo included) is
durable. ``flush()`` waits for the writer.

A keystroke does not wake the writer task when it can go straight to the store: with the
writer idle, no outage, and a store that offers ``write_soon`` (SQLite), a client's change
is handed over as it is checked and relayed from the commit's callback (one change in flight
a room; whatever queues meanwhile, a failure, and every other kind of change go through the
task). A task's wake-up, two events and a future a keystroke were a tenth of the server's
CPU an edit.

When the store fails, the pipeline goes on without it: each batch is appended (fsynced) to
the document's spill file (``spill.py``) and relayed, so an acknowledged edit is never only
in memory. Every ``retry_delay`` seconds the writer tries to write the spilled records back;
once that works the outage is over. Without a spill file (none configured, or it fails too)
changes stay queued in memory and are relayed anyway, as before. A store that refuses an
update as invalid (``YStoreInvalidUpdate``) is not failing: that batch is dropped and
logged, never retried.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import anyio
from anyio.abc import TaskGroup

from jupyter_ystore.core.ydoc import CRDTError, merge_updates
from jupyter_ystore.errors import YStoreInvalidUpdate
from jupyter_ystore.server import metrics
from jupyter_ystore.server.rooms.spill import Spill
from jupyter_ystore.stores.base import BaseYStore


@dataclass(frozen=True)
class Origin:
    """Who made a change; stored as each update's metadata."""

    kind: str  # "client" | "server" | "remote"
    user: str | None = None
    reason: str | None = None

    def metadata(self) -> bytes:
        return _metadata(self)


@functools.lru_cache(maxsize=4096)
def client_origin(username: str) -> Origin:
    """The origin of a user's edits (one object per user: made and hashed once, not for
    every keystroke)."""
    return Origin("client", user=username)


@functools.lru_cache(maxsize=4096)
def _metadata(origin: Origin) -> bytes:
    """An origin's metadata, encoded once (every write of a room carries one; encoding it
    each time was 4 % of an edit's CPU)."""
    data: dict[str, Any] = {"origin": origin.kind}
    if origin.user is not None:
        data["user"] = origin.user
    if origin.reason is not None:
        data["reason"] = origin.reason
    return json.dumps(data, separators=(",", ":")).encode()


@dataclass
class _Change:
    """One change of the shared document waiting for the writer."""

    update: bytes
    origin: Origin
    relayed: bool = False


class WritePipeline:
    """Writes one room's changes to its store (or its spill file) in order, then relays them."""

    def __init__(
        self,
        room_id: str,
        store: BaseYStore,
        relay: Callable[[bytes], None],
        log: logging.Logger,
        *,
        spill: Spill | None = None,
        retry_delay: float = 1.0,
        key: str | None = None,
    ) -> None:
        self.room_id = room_id
        #: The document's key, naming its spill file (``store.path`` may be a full path).
        self.key = key or store.path
        self.store = store
        self.relay = relay
        self.log = log
        self.spill = spill
        self.retry_delay = retry_delay
        self.queued = 0
        self.written = 0
        #: Set while the store fails; ``error`` only while changes cannot be kept at all.
        self.outage: Exception | None = None
        self.error: Exception | None = None
        self._pending: list[_Change] = []
        self._wakeup = anyio.Event()
        self._progress = anyio.Event()
        self._progress_waiters = 0
        #: The writer task waits for work with nothing queued (only then may a change go
        #: straight to the store); set by the task, cleared by whoever wakes it.
        self._parked = False
        self._holds = 0
        self._in_flight: _Change | None = None
        self._in_flight_since = 0.0
        self._write_soon: Callable[..., bool] | None = getattr(store, "write_soon", None)
        self._metadata = b""
        self._spill_log: Any = None
        self._tasks: TaskGroup | None = None
        self._spilled = 0
        self._spill_failed = False
        self._retry_at = 0.0
        label = metrics.store_label(store)
        self._write_seconds = metrics.WRITE_SECONDS.labels(label)
        self._updates_written = metrics.UPDATES_WRITTEN.labels(label)
        self._write_errors = metrics.STORE_WRITE_ERRORS.labels(label)
        self._spilled_total = metrics.SPILLED_UPDATES.labels(label)

    # ------------------------------------------------------------------ the queue

    def queue(self, update: bytes, origin: Origin) -> None:
        """A change of the shared document (called from its observer)."""
        self._pending.append(_Change(update, origin))
        self.queued += 1
        if not self._holds and self._in_flight is None:
            self._wake()

    def hold(self) -> int:
        """Changes queued from now on wait for ``release()`` (a client's update is checked
        once applied: until then its change must not reach the store). The mark for
        ``drop_since``. Only around code that does not await."""
        self._holds += 1
        return self.queued

    def release(self) -> None:
        """What was queued since ``hold()`` may go: straight to the store when it can."""
        self._holds -= 1
        if not self._holds and self._pending and self._in_flight is None:
            self._go_on()

    def _go_on(self) -> None:
        """What is queued goes on: straight to the store when the writer task is idle and
        there is one change, else through the task."""
        pending = self._pending
        if not (self._parked and len(pending) == 1 and self.outage is None and self._hand_over(pending[0])):
            self._wake()

    def _wake(self) -> None:
        self._parked = False
        self._wakeup.set()

    def _hand_over(self, change: _Change) -> bool:
        """Give ``change`` to the store without the task (``write_soon``); whether it went."""
        write_soon = self._write_soon
        if write_soon is None or not write_soon(change.update, change.origin.metadata(), self._committed):
            return False
        self._in_flight = change
        self._in_flight_since = time.perf_counter()
        return True

    def _committed(self, error: BaseException | None) -> None:
        """The store's callback for the change in flight: stored, then relayed; a failure
        goes to the writer task (it retries, spills, and reports the outage)."""
        change, self._in_flight = self._in_flight, None
        pending = self._pending
        if error is not None or change is None or not pending or pending[0] is not change:
            self.log.debug("Room %s: a write handed to the store failed, retrying: %s", self.room_id, error)
            self._wake()
            return
        self._write_seconds.observe(time.perf_counter() - self._in_flight_since)
        self._updates_written.inc()
        del pending[0]
        self.written += 1
        try:
            self._relay(change)
        finally:
            self._notify()
            if pending:
                self._go_on()

    def drop_since(self, mark: int) -> None:
        """Forget changes queued after ``queued`` was ``mark`` (a refused client update);
        they must not have reached the writer yet (it only takes changes at an await)."""
        extra = self.queued - mark
        if extra > 0:
            del self._pending[-extra:]
            self.queued = mark

    async def flush(self) -> None:
        """Return once every change queued so far is durable (in the store or spilled).
        Raises the store's error when changes can be kept nowhere."""
        target = self.queued
        while self.written < target:
            if self.error is not None:
                raise self.error
            await self._wait_progress()

    async def settle(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) for the queue to be durable; never raises. Saving to
        the file and answering a sync use this: they must not wait for a failing store."""
        target = self.queued
        with anyio.move_on_after(timeout):
            while self.written < target and self.error is None:
                await self._wait_progress()
        return self.written >= target

    async def _wait_progress(self) -> None:
        self._progress_waiters += 1
        try:
            await self._progress.wait()
        finally:
            self._progress_waiters -= 1

    @property
    def unstored(self) -> int:
        """Changes kept only in memory (neither stored nor spilled)."""
        return self.queued - self.written

    # ------------------------------------------------------------------ the writer

    async def run(self, tasks: TaskGroup | None = None) -> None:
        """The writer task (runs until cancelled; ``close()`` ends an outage cleanly).

        ``tasks``: where the spill log runs while it is open (the room's group, which
        outlives this task); without it, a group of this task's own."""
        if tasks is not None:
            self._tasks = tasks
            await self._write_forever()
            return
        async with anyio.create_task_group() as own:
            self._tasks = own
            await self._write_forever()

    async def _write_forever(self) -> None:
        while True:
            if not self._pending or self._in_flight is not None:
                if self.outage is not None and self._spilled:
                    # idle during an outage: try writing the spill back now and then
                    with anyio.move_on_after(max(0.0, self._retry_at - time.monotonic())):
                        await self._wakeup.wait()
                    if not self._pending:
                        self._retry_at = time.monotonic() + self.retry_delay
                        await self._end_outage()
                        continue
                else:
                    self._parked = True
                    try:
                        await self._wakeup.wait()
                    finally:
                        self._parked = False
                self._wakeup = anyio.Event()
                continue
            origin = self._pending[0].origin
            count = 1
            while count < len(self._pending) and self._pending[count].origin == origin:
                count += 1
            batch = self._pending[:count]
            update = self._merged(batch)
            self._metadata = origin.metadata()
            try:
                if update is not None:
                    await self._write(update)
            except YStoreInvalidUpdate as exc:
                self.log.error(
                    "Room %s: the store refused %d change(s) by %s as invalid; dropped: %s",
                    self.room_id, count, self._metadata.decode(), exc,
                )
                update = None
            except Exception:
                for change in self._pending:
                    self._relay(change)  # collaboration goes on; the writes are retried
                self._notify()
                await anyio.sleep(self.retry_delay)
                continue
            if update is not None:
                if not any(change.relayed for change in batch):
                    self.relay(update)
                else:
                    for change in batch:
                        self._relay(change)
            del self._pending[:count]
            self.written += count
            self._notify()

    async def _write(self, update: bytes) -> None:
        """Store ``update``; during an outage spill it, trying the store every
        ``retry_delay`` s. Raises when it could be kept nowhere."""
        if self.outage is not None and time.monotonic() < self._retry_at:
            if self._spill_works:
                await self._spill(update)
                return
            raise self.outage
        try:
            started = time.perf_counter()
            # Attribution rides on the write; a store with a metadata callback of its own
            # (a user's subclass) keeps storing what that callback says.
            metadata = None if self.store.metadata_callback is not None else self._metadata
            await self.store.write(update, metadata=metadata)
        except YStoreInvalidUpdate:
            raise
        except Exception as exc:
            self._outage_begins(exc)
            if self._spill_works:
                try:
                    await self._spill(update)
                    return
                except Exception as spill_exc:
                    self._spill_fails(exc, spill_exc)
            self.error = exc
            raise
        self._write_seconds.observe(time.perf_counter() - started)
        self._updates_written.inc()
        if self.outage is not None:
            await self._end_outage()

    def _merged(self, batch: list[_Change]) -> bytes | None:
        if len(batch) == 1:
            return batch[0].update
        try:
            return merge_updates([change.update for change in batch])
        except CRDTError as exc:  # never seen: every change came out of the room's document
            self.log.error("Room %s: %d changes do not merge (%s); dropped", self.room_id, len(batch), exc)
            return None

    def _relay(self, change: _Change) -> None:
        if not change.relayed:
            change.relayed = True
            self.relay(change.update)

    def _notify(self) -> None:
        if self._progress_waiters:  # (a new event for every write was 2 % of an edit)
            self._progress.set()
            self._progress = anyio.Event()

    # ------------------------------------------------------------------ outages

    @property
    def _spill_works(self) -> bool:
        return self.spill is not None and not self._spill_failed

    def _outage_begins(self, exc: Exception) -> None:
        """The store failed a write: log the first failure, count every one."""
        self._write_errors.inc()
        self._retry_at = time.monotonic() + self.retry_delay
        if self.outage is None:
            self.outage = exc
            metrics.ROOMS_IN_OUTAGE.inc()
            where = (
                f"changes go to the spill file in {self.spill.folder} until it works again"
                if self._spill_works and self.spill is not None
                else "changes are kept in memory (no spill_dir), relayed, and retried"
            )
            self.log.error(
                "Room %s: writing to the store failed (%s: %s); %s",
                self.room_id, type(self.store).__name__, exc, where,
            )

    def _spill_fails(self, exc: Exception, spill_exc: Exception) -> None:
        self._spill_failed = True
        self.log.error(
            "Room %s: the spill file failed too (%s); changes are kept in memory, relayed, "
            "and retried until %s works again (%s)",
            self.room_id, spill_exc, type(self.store).__name__, exc,
        )

    async def _spill(self, update: bytes) -> None:
        assert self.spill is not None
        if self._spill_log is None:
            spill_log = self.spill.log_for(self.key)
            assert self._tasks is not None
            await self._tasks.start(spill_log.start)
            self._spill_log = spill_log
        await self._spill_log.write(update, metadata=self._metadata)
        self._spilled += 1
        self._spilled_total.inc()

    async def _end_outage(self) -> None:
        """The store works again: write the spill back; on success the outage is over."""
        try:
            await self._close_spill_log()
            count = 0
            if self.spill is not None:
                count = await self.spill.replay(self.key, self.store)
        except Exception as exc:
            self.log.debug("Room %s: the store still fails: %s", self.room_id, exc)
            return
        self.log.warning(
            "Room %s: the store accepts writes again; %d spilled change(s) written back",
            self.room_id, count,
        )
        self.outage = None
        self.error = None
        self._spilled = 0
        self._spill_failed = False
        metrics.ROOMS_IN_OUTAGE.dec()

    async def _close_spill_log(self) -> None:
        spill_log, self._spill_log = self._spill_log, None
        if spill_log is not None:
            with anyio.CancelScope(shield=True):
                await spill_log.stop()

    async def close(self) -> None:
        """The room closes: one last try to write the spill back; else it stays on disk for
        the next open of this document (or the next start of the server)."""
        if self.outage is None:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await self._end_outage()
        if self.outage is not None:
            await self._close_spill_log()
            lost = self.unstored
            self.log.error(
                "Room %s: closing while its store fails; %d change(s) wait in the spill file "
                "and are written back when the document next opens%s",
                self.room_id, self._spilled,
                f"; {lost} change(s) could be kept nowhere and are only in the saved file"
                if lost else "",
            )
            metrics.ROOMS_IN_OUTAGE.dec()
            self.outage = None
