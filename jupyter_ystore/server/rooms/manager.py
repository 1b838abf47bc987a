"""The room manager: opens each room once, closes it when unused, and closes them all when
the server stops. A room that fails (a bug, a damaged document) closes alone: its clients
are disconnected with a reason and the next connection opens it afresh."""

from __future__ import annotations

import contextvars
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import anyio
from anyio.abc import TaskGroup, TaskStatus

from jupyter_ystore.core import threads
from jupyter_ystore.core.keys import check_format, parse_room_id
from jupyter_ystore.core.ydoc import is_panic
from jupyter_ystore.server import metrics
from jupyter_ystore.server.awareness import AwarenessRoom
from jupyter_ystore.server.rooms.document import DocumentRoom, RoomSettings
from jupyter_ystore.server.rooms.files import DocumentFile, FileGone
from jupyter_ystore.server.rooms.room import GLOBAL_AWARENESS_ROOM, Room, RoomError
from jupyter_ystore.server.rooms.spill import Spill
from jupyter_ystore.stores.base import BaseYStore


def _room_kind(room: Room) -> str:
    if isinstance(room, DocumentRoom):
        return "document"
    if isinstance(room, AwarenessRoom):
        return "awareness"
    return "fork"


class _Opening:
    """A room's open in progress, as its opener waits for it (a task status)."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.error: BaseException | None = None

    def started(self, value: Any = None) -> None:
        self.done.set()


@dataclass
class RoomManager:
    """Opens each room once, closes it when unused, and closes them all on shutdown.

    A room that fails (a bug, a damaged document) closes alone: its clients are
    disconnected with a reason and the next connection opens it afresh.
    """

    make_store: Callable[[str, str], BaseYStore]  # (file_type, file_id) -> store
    make_file: Callable[[str, str, str], DocumentFile]  # (format, type, file_id) -> file
    settings: RoomSettings
    log: logging.Logger
    spill: Optional[Spill] = None
    #: Told the number of rooms still open each time a room closes (full_collections).
    on_room_closed: Optional[Callable[[int], None]] = None
    rooms: dict[str, Room] = field(default_factory=dict)
    _locks: dict[str, anyio.Lock] = field(default_factory=dict)
    _tg: Optional[TaskGroup] = None
    _stop: Optional[anyio.Event] = None
    _stopped: Optional[anyio.Event] = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._stop = anyio.Event()
        self._stopped = anyio.Event()
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                task_status.started()
                if self.spill is not None:
                    tg.start_soon(self._replay_spills)
                await self._stop.wait()
                tg.cancel_scope.cancel()
        finally:
            self._tg = None
            self.rooms.clear()
            self._stopped.set()

    @property
    def running(self) -> bool:
        return self._tg is not None

    async def get_room(self, room_id: str) -> Room:
        """The open room for ``room_id``, opening it if needed. Raises ``RoomError``."""
        if self._tg is None:
            raise RoomError("the room manager is not running", code=4500)
        lock = self._locks.setdefault(room_id, anyio.Lock())
        try:
            async with lock:
                return await self._get_room_locked(room_id)
        finally:
            # one lock per room id, not per id ever asked for (ids come from clients)
            if room_id not in self.rooms and not lock.locked() and not lock.statistics().tasks_waiting:
                self._locks.pop(room_id, None)

    async def _get_room_locked(self, room_id: str) -> Room:
        assert self._tg is not None
        room = self.rooms.get(room_id)
        if room is not None and room.closing:
            await room.closed.wait()
            room = None
        if room is not None:
            return room
        room = self._create(room_id)
        try:
            await self._start(room)
        except RoomError:
            raise
        except Exception as exc:
            self.log.error("Room %s failed to open: %s", room_id, exc, exc_info=exc)
            raise RoomError(f"{type(exc).__name__}: {exc}", code=4500) from exc
        self.rooms[room_id] = room
        return room

    def _create(self, room_id: str) -> Room:
        if room_id == GLOBAL_AWARENESS_ROOM:
            return AwarenessRoom(room_id, self.log)
        try:
            file_format, file_type, file_id = parse_room_id(room_id)
            check_format(file_format, file_type)
        except ValueError as exc:
            raise RoomError(f"unknown room {room_id!r}: {exc}", code=4400) from None
        file = self.make_file(file_format, file_type, file_id)
        try:
            file.path  # noqa: B018  (an unknown file id never reaches the store)
        except FileGone as exc:
            raise RoomError(f"unknown room {room_id!r}: {exc}", code=4404) from None
        try:
            store = self.make_store(file_type, file_id)
        except ValueError as exc:
            raise RoomError(f"room {room_id!r} has no valid store name: {exc}", code=4400) from None
        return DocumentRoom(room_id, file, store, self.settings, self.log, spill=self.spill)

    async def _start(self, room: Room) -> None:
        """Start serving ``room`` in the manager's group; returns once it is open, raises
        what made it fail to open.

        Its task starts from an empty context, not the opener's: a task copies the context
        it is started from, and the opener's (a session request's) holds jupyter_server's
        call context with that request's handler. Every task, timer and callback of the
        room copied it in turn, so each open room kept the request that opened it (about 30
        objects that every full garbage collection walked) for as long as it stayed open.
        The opener waits for the open to end even if cancelled meanwhile (a client that
        left), so that an opened room is always registered, and closed when unused."""
        assert self._tg is not None
        opening = _Opening()
        contextvars.Context().run(self._tg.start_soon, self._serve_opening, room, opening)
        with anyio.CancelScope(shield=True):
            await opening.done.wait()
        if opening.error is not None:
            raise opening.error

    async def _serve_opening(self, room: Room, opening: _Opening) -> None:
        """``_serve``, reporting to ``opening`` whether it opened; a failure to open goes
        to the opener, not to the manager's group."""
        try:
            await self._serve(room, opening)
        except anyio.get_cancelled_exc_class():
            if not opening.done.is_set():
                opening.error = RoomError("the server is stopping", code=4500)
                opening.done.set()
            raise
        except BaseException as exc:
            if opening.done.is_set():
                raise
            opening.error = exc
            opening.done.set()
        else:
            if not opening.done.is_set():  # ended without opening (nothing to report)
                opening.error = RoomError("the room closed while opening", code=4500)
                opening.done.set()

    async def _serve(self, room: Room, opening: _Opening) -> None:
        """Run one room; a failure after it opened stays in it (logged, clients closed)."""
        gauge = metrics.OPEN_ROOMS.labels(_room_kind(room))
        gauge.inc()
        try:
            await room.run(task_status=opening)
        except BaseException as exc:
            if not opening.done.is_set() or not (isinstance(exc, Exception) or is_panic(exc)):
                raise  # an open that failed goes to its opener; cancellation goes on
            self.log.error("Room %s failed: %s", room.room_id, exc, exc_info=exc)
            room.closing = True
            for client in list(getattr(room, "clients", ())):
                close = getattr(client, "close", None)
                if close is not None:
                    close(1011, "the room failed; reconnecting")
            closed = getattr(room, "closed", None)
            if closed is not None:
                closed.set()
        finally:
            gauge.dec()
            if self.rooms.get(room.room_id) is room:
                del self.rooms[room.room_id]
            if isinstance(room, DocumentRoom):
                metrics.request_bytes_refresh()
            if self.on_room_closed is not None:
                self.on_room_closed(len(self.rooms))

    async def _replay_spills(self) -> None:
        """At start-up: spills left by rooms that closed (or a server that died) during a
        store outage go back into the store, whether or not their documents are reopened."""
        assert self.spill is not None
        spill = self.spill
        keys = await threads.run_sync(spill.keys)
        for key in keys:
            store = self.make_store_for_key(key)
            if store is None:
                continue
            try:
                async with store:
                    count = await spill.replay(key, store)
                self.log.warning(
                    "jupyter_ystore: wrote %d change(s) spilled during a store outage back to %s",
                    count,
                    key,
                )
            except Exception as exc:
                self.log.error("jupyter_ystore: the spill of %s stays for later: %s", key, exc)

    #: Set by the extension: a store for a document key (spill replay at start-up).
    make_store_for_key: Callable[[str], Optional[BaseYStore]] = lambda self, key: None  # type: ignore[assignment]

    async def add_room(self, room: Room) -> None:
        """Serve a room made elsewhere (a fork) under its id, until it closes."""
        if self._tg is None:
            raise RoomError("the room manager is not running", code=4500)
        if room.room_id in self.rooms:
            raise RoomError(f"room {room.room_id!r} exists already", code=4500)
        await self._start(room)
        if not room.closing:
            self.rooms[room.room_id] = room

    async def close_all(self, timeout: float = 10.0) -> None:
        """Close every room (save, flush, stop its store), then stop the manager."""
        rooms = list(self.rooms.values())
        with anyio.move_on_after(timeout) as scope:
            async with anyio.create_task_group() as tg:
                for room in rooms:
                    tg.start_soon(room.close)
        if scope.cancelled_caught:
            self.log.error("Closing rooms took longer than %ss; stopping anyway", timeout)
        if self._stop is not None:
            self._stop.set()
        if self._stopped is not None:
            with anyio.move_on_after(timeout):
                await self._stopped.wait()
