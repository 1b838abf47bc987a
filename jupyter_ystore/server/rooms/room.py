"""What every room is to the room manager and the websocket handler, and what a client is
to a room: typed, so that document rooms, forks and the awareness room stay interchangeable."""

from __future__ import annotations

from typing import Any, Protocol

import anyio
from anyio.abc import TaskStatus

from jupyter_ystore.server import protocol


class Client(Protocol):
    """A connected peer (the websocket handler in production)."""

    username: str
    can_write: bool

    def send(self, message: bytes) -> None: ...

    def close(self, code: int | None = None, reason: str | None = None) -> None: ...


class Room(Protocol):
    """A room the manager serves under ``room_id`` until it closes."""

    room_id: str
    closing: bool
    closed: anyio.Event

    @property
    def clients(self) -> set[Any]: ...

    async def run(self, *, task_status: TaskStatus[None] = ...) -> None: ...

    def join(self, client: Client) -> None: ...

    def leave(self, client: Client) -> None: ...

    async def handle(self, client: Client, message: protocol.Message) -> None: ...

    async def close(self) -> None: ...


class RoomError(Exception):
    """A room could not open. ``code`` is the websocket close code the front end knows."""

    def __init__(self, message: str, code: int = 4500):
        super().__init__(message)
        self.code = code


GLOBAL_AWARENESS_ROOM = "JupyterLab:globalAwareness"
