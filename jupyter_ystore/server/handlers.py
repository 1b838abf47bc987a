"""The two endpoints the JupyterLab collaboration front end calls.

``PUT /api/collaboration/session/{path}`` gives a file its id and a session id naming the
document's stored history (``sessions``); ``/api/collaboration/room/{format}:{type}:{fileId}``
is the y-websocket room. Authentication and the ``contents`` permission come from
jupyter_server: reading opens a room, writing is needed for one's updates to be accepted.

A client that sends something the room refuses is disconnected with the reason, and the log
says who sent what. Sockets have Nagle's algorithm off (small frames go out at once, not after
the peer's delayed ACK) and a bound on what may wait unsent for a client that stops reading.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any, Awaitable

from jupyter_server.auth.decorator import authorized, ws_authenticated
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from jupyter_server.utils import ensure_async
from tornado import web
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketHandler

from jupyter_ystore.core.keys import check_format
from jupyter_ystore.core.per_loop import PerLoop
from jupyter_ystore.core.update_guard import BadUpdate, describe
from jupyter_ystore.core.ydoc import is_panic
from jupyter_ystore.server import metrics, protocol
from jupyter_ystore.server.frames import adopt_buffered_reader, write_now
from jupyter_ystore.server.handshake import forget_handshake
from jupyter_ystore.server.rooms import DocumentRoom, RoomError
from jupyter_ystore.server.sessions import history_of, new_session_id

if TYPE_CHECKING:
    from jupyter_ystore.server.app import YStoreExtension

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
        try:
            if not isinstance(file_format, str) or not isinstance(file_type, str):
                raise ValueError("format and type must be strings")
            check_format(file_format, file_type)
        except ValueError as exc:
            raise web.HTTPError(400, str(exc)) from None
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
        # The room opens now (the websocket follows at once): its history id is the session's.
        history_id = ""
        try:
            manager = await self.extension.rooms()
            room = await manager.get_room(f"{file_format}:{file_type}:{file_id}")
            history_id = room.history_id or ""
        except RoomError as exc:
            if exc.code in (4404, 4400):
                raise web.HTTPError({4404: 404, 4400: 400}[exc.code], str(exc)) from None
            # The websocket that follows tells the front end why (it shows that error).
            self.log.warning("Collaboration session for %r: the room cannot open: %s", path, exc)
        self.set_status(status)
        self.finish(
            json.dumps(
                {
                    "format": file_format,
                    "type": file_type,
                    "fileId": file_id,
                    "sessionId": new_session_id(history_id),
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
        self.session_id: str | None = None  # the front end's, from the query (kept: see open)
        self.can_write = False
        self._told_read_only = False
        self._closed = False
        #: Frames waiting for the end of this loop turn; an empty tuple between turns (a
        #: list kept for every idle connection is one more object a full collection walks).
        self._outbox: list[bytes] | tuple[()] = ()
        self._outbox_size = 0
        self._flush_handle: asyncio.Handle | None = None  # an awareness frame's wait
        self._flush_soon = False  # queued to be written at the end of this turn

    _tornado_asks = False

    def get_websocket_protocol(self) -> Any:
        # jupyter_server's WebSocketMixin pings on its own, in milliseconds; tornado reads the
        # same properties as seconds for pings of its own and warns at every connection that
        # the timeout (90000) exceeds the interval (30000). Tornado's pings are left off.
        self._tornado_asks = True
        try:
            return adopt_buffered_reader(super().get_websocket_protocol())
        finally:
            self._tornado_asks = False

    @property
    def ping_interval(self) -> Any:  # type: ignore[override]
        return None if self._tornado_asks else WebSocketMixin.ping_interval.fget(self)  # type: ignore[attr-defined]

    @property
    def ping_timeout(self) -> Any:  # type: ignore[override]
        return None if self._tornado_asks else WebSocketMixin.ping_timeout.fget(self)  # type: ignore[attr-defined]

    def get_compression_options(self) -> None:
        # No permessage-deflate: ``send`` writes frames of its own (Yjs updates are small
        # and mostly binary; compressing each costs more CPU than the bytes it saves).
        return None

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
        self.set_nodelay(True)  # small frames out at once, not after the peer's delayed ACK
        user = self.current_user
        self.username = getattr(user, "username", None) or "anonymous"
        self.can_write = bool(
            await ensure_async(self.authorizer.is_authorized(self, user, "write", "contents"))
        )
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
        session_id = self.session_id = self.get_query_argument("sessionId", None)
        if (
            isinstance(room, DocumentRoom)
            and session_id is not None
            and history_of(session_id) != room.history_id
        ):
            self.log.warning(
                "Collaboration client %s of room %s knew a history this server does not hold "
                "(session %s): asked to reload",
                self.username,
                room_id,
                session_id,
            )
            self._refuse_session("session_expired")
            return
        if self._closed:
            return
        self.room = room
        self.extension.connections.add(self)
        room.join(self)
        forget_handshake(self)

    def _refuse_session(self, reason: str) -> None:
        """Close with 1003 and a reason the front end shows with a Reload button, once;
        then refuse this session id at the handshake (the front end retries every ~110 ms
        while its dialog is open). The front end's own texts say what to do ("Reload the
        browser tab to continue"; for "initialization_error": close and reopen the file)."""
        session_id = self.session_id or ""
        if session_id:
            refused = self.extension.refused_sessions
            refused[session_id] = None
            if len(refused) > 10_000:
                del refused[next(iter(refused))]
        payload = {"reason": reason, "sessionId": session_id[:64], "reloadable": True}
        self.close(1003, close_reason(json.dumps(payload, separators=(",", ":"))))

    def on_message(self, message: str | bytes) -> Awaitable[None] | None:
        """Hand one frame to the room. Most frames are handled before this returns; for the
        others (a sync answered once the store has caught up, a big update read in a
        thread) tornado awaits what this returns before it reads the next frame. A
        coroutine for every frame cost a task and three loop callbacks each."""
        room = self.room
        if room is None or self._closed:
            return None
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
            return None
        try:
            parsed = protocol.parse_message(message)  # type: ignore[arg-type]
            handle_now = getattr(room, "handle_now", None)
            pending = room.handle(self, parsed) if handle_now is None else handle_now(self, parsed)
        except BaseException as exc:
            self._failed(room, message, exc)
            return None
        return None if pending is None else self._finish(room, message, pending)

    async def _finish(self, room: Any, message: str | bytes, pending: Awaitable[None]) -> None:
        try:
            await pending
        except BaseException as exc:
            self._failed(room, message, exc)

    def _failed(self, room: Any, message: str | bytes, exc: BaseException) -> None:
        """What a failed message means for its client: a bad frame or a refused update
        disconnects it (saying why), a read-only user is told once. Re-raises what is not
        about the message (a cancellation)."""
        try:
            raise exc
        except protocol.ProtocolError:
            self.log.warning(
                "Collaboration room %s: bad message from %s, disconnecting it: %s",
                room.room_id,
                self.username,
                exc,
            )
            self.close(1002, close_reason(f"protocol error: {exc}"))
        except BadUpdate as refused:
            metrics.REFUSED_UPDATES.inc()
            self.log.warning(
                "Collaboration room %s: update from %s refused, disconnecting it: %s (%s)",
                room.room_id,
                self.username,
                refused,
                describe(_update_of(message)),
            )
            self._refuse_session("session_expired" if refused.stale else "initialization_error")
        except PermissionError:
            if not self._told_read_only:
                self._told_read_only = True
                self.log.info(
                    "Collaboration room %s: update from read-only user %s refused",
                    room.room_id,
                    self.username,
                )
                self.send(protocol.raw_json_message({"type": "error", "reason": "read_only", "message": str(exc)}))
        except Exception:
            self.log.error(
                "Collaboration room %s: message from %s failed: %s",
                room.room_id,
                self.username,
                exc,
                exc_info=exc,
            )
            self.close(1011, close_reason(f"internal error: {type(exc).__name__}"))
        except BaseException:
            if not is_panic(exc):
                raise
            self.log.error(
                "Collaboration room %s: message from %s made the CRDT library panic: %s",
                room.room_id,
                self.username,
                exc,
            )
            self.close(1011, close_reason("internal error: CRDT panic"))

    def send(self, message: bytes) -> None:
        """Queue a frame for this client; a closed socket drops it.

        Frames are gathered and written once per turn of the event loop: one ``send()``
        system call per client instead of one per message (under load a client gets several
        each turn: updates of several people, their cursors). Measured: the system calls
        were the largest single cost of an edit, relayed to ten clients.

        Awareness frames alone wait up to ``AWARENESS_WAIT`` seconds: a keystroke's cursor
        frame arrives just before its update, which is relayed only once it is stored (a
        turn or two later), so the two then share one system call. Document frames never
        wait, and take any waiting awareness frames with them, in order.
        """
        if self._closed:
            return
        if self._unsent() > self.extension.max_unsent_size:
            # The client stopped reading (or its network stalled): what waits for it would
            # grow without limit. Drop it; it reconnects and syncs afresh.
            self.log.warning(
                "Collaboration room %s: %s reads too slowly (over %d bytes unsent), "
                "disconnecting it",
                getattr(self.room, "room_id", "?"),
                self.username,
                self.extension.max_unsent_size,
            )
            self._closed = True
            self._outbox = ()
            stream = getattr(self.ws_connection, "stream", None)
            if stream is not None:
                stream.close()  # a close frame would only queue behind the backlog
            return
        outbox = self._outbox
        if outbox:
            outbox.append(binary_frame(message))  # type: ignore[union-attr]
        else:
            self._outbox = [binary_frame(message)]
        self._outbox_size += len(message)
        if self._flush_soon:
            return
        if message[:1] != _AWARENESS:
            if self._flush_handle is not None:
                self._flush_handle.cancel()
                self._flush_handle = None
            self._flush_soon = True
            flush_soon(self)
        elif self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(
                AWARENESS_WAIT, self._flush
            )

    def _flush(self) -> None:
        """Write the frames gathered this turn, in one write."""
        self._flush_soon = False
        if self._flush_handle is not None:
            self._flush_handle.cancel()  # (a no-op when it is the handle running now)
            self._flush_handle = None
        frames, self._outbox, self._outbox_size = self._outbox, (), 0
        stream = getattr(self.ws_connection, "stream", None)
        if self._closed or not frames or stream is None or self.ws_connection.is_closing():
            return
        try:
            write_now(stream, frames[0] if len(frames) == 1 else b"".join(frames))
        except StreamClosedError:
            self._closed = True

    def _unsent(self) -> int:
        """Bytes queued for this client that it has not taken yet. A single frame of any
        size is always sent; only a backlog already past the bound counts."""
        stream = getattr(self.ws_connection, "stream", None)
        if stream is None:
            return self._outbox_size
        written = getattr(stream, "_total_write_index", 0) - getattr(stream, "_total_write_done_index", 0)
        return written + self._outbox_size

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        if self._outbox and not self._closed:
            self._flush()  # what was sent before the close frame goes out before it
        self._closed = True
        super().close(code, reason)

    def on_close(self) -> None:
        self._closed = True
        self.extension.connections.discard(self)
        if self.room is not None:
            room, self.room = self.room, None
            room.leave(self)


_last_frame: tuple[bytes, bytes] = (b"", b"")

#: Clients with frames to write at the end of this turn of the event loop, per loop.
_to_flush: PerLoop[list[RoomHandler]] = PerLoop(lambda loop: [])


def flush_soon(client: RoomHandler) -> None:
    """Have ``client._flush()`` run at the end of this turn: one loop callback for every
    client that has frames, not one each (a relay to ten clients was ten)."""
    loop = asyncio.get_running_loop()
    waiting = _to_flush.get(loop)
    if not waiting:
        loop.call_soon(_flush_all, waiting)
    waiting.append(client)


#: Clients written by one loop callback. A turn can queue writes to every client of the
#: server (after a pause, or when many rooms relay in the same turn): one socket send each,
#: 30-40 us on a 2-core VM, so 480 clients held the loop 14-17 ms in one callback, timers
#: and reads waiting behind it. The rest go in the next callbacks, in the order queued.
FLUSH_BATCH = 64


def _flush_all(waiting: list[RoomHandler]) -> None:
    clients = waiting[:FLUSH_BATCH]
    del waiting[:FLUSH_BATCH]
    if waiting:  # (clients queued while these are written join the rest)
        asyncio.get_running_loop().call_soon(_flush_all, waiting)
    for client in clients:
        if client._flush_soon:
            try:
                client._flush()
            except Exception:  # one client's failure is not the others'
                client.log.exception("Collaboration: writing to %s failed", client.username)

#: The first byte of a y-websocket awareness message.
_AWARENESS = bytes((protocol.MessageType.AWARENESS,))

#: Seconds an outgoing awareness frame may wait for a document frame to share a write with.
AWARENESS_WAIT = 0.015


def binary_frame(payload: bytes) -> bytes:
    """A server-to-client websocket binary frame (RFC 6455: FIN, opcode 2, unmasked; no
    compression is negotiated). A broadcast frames one message for every client: the last
    one is kept."""
    global _last_frame
    if _last_frame[0] is payload:
        return _last_frame[1]
    size = len(payload)
    if size < 126:
        head = bytes((0x82, size))
    elif size < 1 << 16:
        head = bytes((0x82, 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((0x82, 127)) + size.to_bytes(8, "big")
    frame = head + payload
    _last_frame = (payload, frame)
    return frame


def _update_of(message: Any) -> bytes:
    try:
        parsed = protocol.parse_message(message)
    except protocol.ProtocolError:
        return b""
    return getattr(parsed, "update", b"")

