"""The two endpoints the JupyterLab collaboration front end calls.

``PUT /api/collaboration/session/{path}`` gives a file its id and the server's session id;
``/api/collaboration/room/{format}:{type}:{fileId}`` is the y-websocket room. Authentication
and the ``contents`` permission come from jupyter_server: reading opens a room, writing is
needed for one's updates to be accepted.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from jupyter_server.auth.decorator import authorized, ws_authenticated
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from jupyter_server.utils import ensure_async
from tornado import web
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from . import sync
from .rooms import GLOBAL_AWARENESS_ROOM, RoomError

if TYPE_CHECKING:
    from .app import YStoreExtension

#: Formats and types the front end asks for.
_FORMATS = {"json", "text", "base64"}
#: A websocket close reason is limited to 123 bytes.
_MAX_REASON = 123


def close_reason(text: str) -> str:
    data = text.encode("utf-8")[:_MAX_REASON]
    return data.decode("utf-8", "ignore")


class SessionHandler(APIHandler):
    """``PUT`` a path: ``{"format","type","fileId","sessionId"}`` (201 if newly indexed)."""

    auth_resource = "contents"

    def initialize(self, extension: YStoreExtension) -> None:
        self.extension = extension

    @web.authenticated
    @authorized("read")
    async def put(self, path: str) -> None:
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, "the body must be JSON: {\"format\": ..., \"type\": ...}") from None
        if not isinstance(body, dict):
            raise web.HTTPError(400, "the body must be a JSON object")
        file_format, file_type = body.get("format"), body.get("type")
        if file_format not in _FORMATS or not isinstance(file_type, str) or not file_type:
            raise web.HTTPError(
                400, f"format must be one of {sorted(_FORMATS)} and type a document type"
            )
        path = path.strip("/")
        if not await self._exists(path):
            raise web.HTTPError(404, f"file {path!r} does not exist")
        file_ids = self.extension.file_id_manager
        file_id = file_ids.get_id(path)
        status = 200
        if file_id is None:
            file_id = file_ids.index(path)
            status = 201
        if file_id is None:
            raise web.HTTPError(404, f"file {path!r} does not exist")
        self.set_status(status)
        self.finish(
            json.dumps(
                {
                    "format": file_format,
                    "type": file_type,
                    "fileId": file_id,
                    "sessionId": self.extension.session_id,
                }
            )
        )

    async def _exists(self, path: str) -> bool:
        contents = self.contents_manager
        try:
            return bool(await ensure_async(contents.file_exists(path)))
        except web.HTTPError as exc:  # e.g. a path outside the root
            self.log.warning("Collaboration session refused for %r: %s", path, exc.log_message)
            return False


class RoomHandler(WebSocketMixin, WebSocketHandler, JupyterHandler):  # type: ignore[misc]
    """One client of one room: frames in, frames out; the room does the rest."""

    auth_resource = "contents"

    def initialize(self, extension: YStoreExtension) -> None:
        self.extension = extension
        self.room: Any = None
        self.username = "anonymous"
        self.can_write = False
        self._told_read_only = False
        self._closed = False

    @property
    def max_message_size(self) -> int:  # type: ignore[override]
        # Tornado drops bigger frames silently (1009); up to twice the limit we read them and
        # say why we refuse them, in the log and in the close reason.
        return 2 * self.extension.max_message_size

    @ws_authenticated
    @authorized("read")
    async def get(self, *args: Any, **kwargs: Any) -> None:
        session_id = self.get_query_argument("sessionId", None)
        if session_id is not None and session_id in self.extension.refused_sessions:
            # That browser was told to reload once already; it keeps retrying every ~110 ms.
            raise web.HTTPError(409, "stale collaboration session: reload the page")
        await ensure_async(super().get(*args, **kwargs))

    async def open(self, room_id: str) -> None:  # type: ignore[override]
        user = self.current_user
        self.username = getattr(user, "username", None) or "anonymous"
        self.can_write = bool(
            await ensure_async(self.authorizer.is_authorized(self, user, "write", "contents"))
        )
        session_id = self.get_query_argument("sessionId", None)
        if (
            room_id != GLOBAL_AWARENESS_ROOM
            and session_id is not None
            and session_id != self.extension.session_id
        ):
            refused = self.extension.refused_sessions
            refused[session_id] = None
            if len(refused) > 10_000:
                del refused[next(iter(refused))]
            self.log.warning(
                "Collaboration client with an old session id (%s) for room %s: asked to reload",
                session_id,
                room_id,
            )
            reason = {"reason": "session_expired", "sessionId": session_id, "reloadable": True}
            self.close(1003, close_reason(json.dumps(reason, separators=(",", ":"))))
            return
        try:
            manager = await self.extension.rooms()
            room = await manager.get_room(room_id)
        except RoomError as exc:
            self.log.error("Collaboration room %s cannot open: %s", room_id, exc)
            self.close(exc.code, close_reason(f"{exc}"))
            return
        except Exception as exc:
            self.log.error("Collaboration room %s cannot open: %s", room_id, exc, exc_info=exc)
            self.close(4500, close_reason(f"{type(exc).__name__}: {exc}"))
            return
        if self._closed:
            return
        self.room = room
        self.extension.connections.add(self)
        room.join(self)

    async def on_message(self, message: str | bytes) -> None:
        room = self.room
        if room is None or self._closed:
            return
        limit = self.extension.max_message_size
        if len(message) > limit:
            self.log.warning(
                "Collaboration room %s: bad message from %s, disconnecting it: %d bytes is over "
                "YStoreExtension.max_message_size (%d)",
                room.room_id,
                self.username,
                len(message),
                limit,
            )
            self.close(1009, f"message too big: over {limit} bytes")
            return
        try:
            await room.handle(self, sync.parse_message(message))  # type: ignore[arg-type]
        except sync.ProtocolError as exc:
            self.log.warning(
                "Collaboration room %s: bad message from %s, disconnecting it: %s",
                room.room_id,
                self.username,
                exc,
            )
            self.close(1002, close_reason(f"protocol error: {exc}"))
        except PermissionError as exc:
            if not self._told_read_only:
                self._told_read_only = True
                self.log.info(
                    "Collaboration room %s: update from read-only user %s refused",
                    room.room_id,
                    self.username,
                )
                self.send(sync.raw_json_message({"type": "error", "reason": "read_only", "message": str(exc)}))
        except Exception as exc:
            self.log.error(
                "Collaboration room %s: message from %s failed: %s",
                room.room_id,
                self.username,
                exc,
                exc_info=exc,
            )
            self.close(1011, close_reason(f"internal error: {type(exc).__name__}"))

    def send(self, message: bytes) -> None:
        """Queue a frame for this client; a closed socket drops it."""
        if self._closed:
            return
        try:
            future = self.write_message(message, binary=True)
        except WebSocketClosedError:
            self._closed = True
            return
        future.add_done_callback(_ignore_closed)

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        self._closed = True
        super().close(code, reason)

    def on_close(self) -> None:
        self._closed = True
        self.extension.connections.discard(self)
        if self.room is not None:
            room, self.room = self.room, None
            room.leave(self)


def _ignore_closed(future: Any) -> None:
    if not future.cancelled():
        future.exception()  # retrieved, so a closed socket is not logged as unhandled
