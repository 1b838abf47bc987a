"""Reading a client's websocket frames straight from its socket; writing ours at once.

Tornado reads every frame with three or four ``read_bytes`` calls (header, length, mask,
payload), each a future and a trip through its stream buffer (measured under load: a seventh
of the event loop's time, twice the update checks'). ``BufferedFrameReader`` cuts the frames
out of a buffer of its own. On a plain TCP connection (``DirectReadStream``) that buffer is
filled by one ``recv`` each time the socket is readable, and the frames are handed on in the
same callback; on others (TLS) it is filled by partial ``read_bytes``. Everything a frame
means (control frames, closing, the message handler) stays tornado's.

``write_now`` writes frames straight to the socket when tornado has nothing of its own waiting
to be written: ``IOStream.write`` makes a future and schedules two callbacks for every write,
more work than the system call itself.

The reader relies on ``WebSocketProtocol13``'s internals (``_receive_frame``,
``_handle_message`` and the fragment state) and on ``IOStream``'s (``_handle_read``,
``reading``, ``_consume``). ``adopt_buffered_reader`` checks the protocol's are there and
otherwise leaves tornado's reader in place: a tornado that changed them still works, only
slower.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable

from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, StreamBufferFullError, StreamClosedError
from tornado.util import _websocket_mask  # type: ignore[attr-defined]
from tornado.websocket import WebSocketProtocol13

#: Bytes asked of the stream at a time when a frame is incomplete.
CHUNK = 65536

#: Writes up to this size may go straight to the socket (Windows refuses big sends).
DIRECT_WRITE = 65536

_NEEDED = (
    "_receive_frame",
    "_receive_frame_loop",
    "_handle_message",
    "_abort",
    "_decompressor",
    "_fragmented_message_buffer",
    "_fragmented_message_opcode",
    "stream",
    "params",
)


#: What ``_cut_frame`` returns when the frame was refused (the connection is being aborted).
ABORTED = -1

#: The ``IOStream`` internals that ``DirectReadStream`` relies on.
_STREAM_NEEDED = ("_handle_read", "_handle_events", "_consume", "_read_buffer_size", "_add_io_state", "socket")


class BufferedFrameReader(WebSocketProtocol13):
    """``WebSocketProtocol13`` whose frames are cut from a buffer of their own.

    On a plain TCP stream the buffer is filled straight from the socket when it is readable
    (``DirectReadStream``) and the frames are handed on in that same callback: no future,
    no task step and no second ``recv`` that finds nothing, per frame. Measured on one
    connection with a frame every 0.2 ms: 44 µs of CPU a frame through ``read_bytes``,
    17 µs read directly. Other streams (TLS) are read through ``read_bytes``.
    """

    _inbuf: bytearray
    _inpos: int
    # Direct reading: False while it reads, True once its end is handled (None: tornado's).
    _ended: bool | None = None
    _loop: asyncio.AbstractEventLoop  # the loop it reads on (set with ``_ended``)
    _waiting_on: Any = None  # a message still being handled: the frames after it wait

    async def _receive_frame_loop(self) -> None:
        stream = self.stream
        if (
            type(stream) is not IOStream
            or self._decompressor is not None
            or not all(hasattr(stream, name) for name in _STREAM_NEEDED)
        ):
            await super()._receive_frame_loop()
            return
        # Returns at once, unlike tornado's loop: what awaits it is the whole handshake (the
        # request's task and nine coroutines), which would stay alive as long as the
        # connection does, for the garbage collector to walk (see ``handshake``). The end is
        # handled by ``_stream_closed``, without a future and its callback: a connection's
        # every long-lived object is one more for each full garbage collection to walk.
        self._loop = asyncio.get_running_loop()
        self._ended = False
        try:
            stream.__class__ = DirectReadStream
            stream._frame_reader = self  # type: ignore[attr-defined]
            if stream._read_buffer_size:  # frames that came right behind the handshake
                self._inbuf += stream._consume(stream._read_buffer_size)
            if stream.closed():
                self._stream_closed()
            else:
                stream._add_io_state(IOLoop.READ)
                self._drain()
        except BaseException:
            if not self._ended:  # (else it is on its way)
                self._ended = True
                self._reading_ended()
            raise

    def _reading_ended(self) -> None:
        """The stream closed: as tornado's frame loop ends. Then the stream lets go of this
        reader (a reference cycle): the connection's objects are freed as soon as nothing
        uses them, not by the next full garbage collection (which, as a class leaves,
        holds the loop for every room still open)."""
        try:
            if not self.client_terminated:  # gone without a close frame: as tornado does
                self._abort()
        finally:
            try:
                self.handler.on_ws_connection_close(self.close_code, self.close_reason)
            finally:
                if self.stream is not None:
                    self.stream._frame_reader = None  # type: ignore[attr-defined]

    def _on_readable(self) -> None:
        """The socket has bytes (or its end): take one read's worth and hand on the whole
        frames in it. One ``recv`` a wake-up; more waiting wakes the loop again."""
        stream = self.stream
        assert stream is not None
        try:
            data = stream.socket.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            stream.close(exc_info=exc)
            return
        if not data:
            stream.close()
            return
        buf = self._inbuf
        buf += data
        if self._waiting_on is None:
            self._drain()
        elif len(buf) - self._inpos > stream.max_buffer_size:
            # Tornado's own limit on what a stream holds unread (a client that floods us
            # while one of its messages is being handled).
            stream.close(exc_info=StreamBufferFullError("Reached maximum read buffer size"))

    def _drain(self) -> None:
        """Hand on every whole frame in the buffer, in order; stop at one whose handling
        is not done yet (``_go_on`` resumes) and once the client has closed."""
        while self._waiting_on is None and not self.client_terminated:
            got = self._cut_frame()
            if type(got) is not tuple:
                if got != ABORTED:
                    self._compact()
                return
            pending = self._dispatch_now(*got)
            if pending is not None:
                self._waiting_on = pending
                pending.add_done_callback(self._go_on)

    def _go_on(self, _done: Any) -> None:
        self._waiting_on = None
        stream = self.stream
        if stream is not None and not stream.closed():
            self._drain()

    def _stream_closed(self) -> None:
        """The stream closed: end the reading on the loop's next turn (not inside the
        ``close`` call that got here), once."""
        if self._ended is False:
            self._ended = True
            self._loop.call_soon(self._reading_ended)  # (a close may come from outside the loop)

    async def _receive_frame(self) -> None:
        """Read one frame (RFC 6455 section 5.2) through the stream's ``read_bytes`` and
        hand it to tornado, as its own reader does: the same checks, the same aborts, the
        same fragment handling."""
        if self._decompressor is not None:  # never negotiated by our handler; keep tornado's
            await super()._receive_frame()
            return
        while True:
            got = self._cut_frame()
            if type(got) is tuple:
                break
            if got == ABORTED:
                return
            await self._fill(got)
        pending = self._dispatch_now(*got)
        if pending is not None:
            await pending

    def _cut_frame(self) -> tuple[int, int, bytes] | int:
        """The next whole frame, taken from the buffer, as ``(fin, opcode, payload)``;
        else how many more bytes it needs at least, or ``ABORTED`` when it was refused."""
        buf, pos = self._inbuf, self._inpos
        have = len(buf) - pos
        if have < 2:
            return 2 - have
        head, second = buf[pos], buf[pos + 1]
        opcode = head & self.OPCODE_MASK
        if head & self.RSV_MASK:
            self._abort()  # an extension nobody negotiated
            return ABORTED
        length = second & 0x7F
        if opcode & 0x8 and length >= 126:
            self._abort()  # control frames carry at most 125 bytes
            return ABORTED
        start = pos + 2
        if length == 126:
            if have < 4:
                return 4 - have
            length = int.from_bytes(buf[start : start + 2], "big")
            start += 2
        elif length == 127:
            if have < 10:
                return 10 - have
            length = int.from_bytes(buf[start : start + 8], "big")
            start += 8
        fragments = self._fragmented_message_buffer
        if length + (len(fragments) if fragments is not None else 0) > self.params.max_message_size:
            self.close(1009, "message too big")
            self._abort()
            return ABORTED
        masked = second & 0x80
        end = start + (4 if masked else 0) + length
        if len(buf) < end:
            return end - len(buf)
        if masked:
            data = _websocket_mask(bytes(buf[start : start + 4]), bytes(buf[start + 4 : end]))
        else:
            data = bytes(buf[start:end])
        if end == len(buf):
            buf.clear()
            self._inpos = 0
        else:
            self._inpos = end
        self._wire_bytes_in = getattr(self, "_wire_bytes_in", 0) + end - pos
        return head & self.FIN, opcode, data

    async def _fill(self, missing: int) -> None:
        """Append what the stream has (at least one byte; ``missing`` when that is more than
        a chunk, so that a big frame is read in one call)."""
        buf = self._inbuf
        self._compact()
        if missing > CHUNK:
            buf += await self.stream.read_bytes(missing)
        else:
            buf += await self.stream.read_bytes(CHUNK, partial=True)

    def _compact(self) -> None:
        """Drop the bytes of the frames already handed on (only when a frame is incomplete:
        a whole buffer is cleared as its last frame is cut)."""
        if self._inpos:
            del self._inbuf[: self._inpos]
            self._inpos = 0

    def _dispatch_now(self, final: int, opcode: int, data: bytes) -> Awaitable[None] | None:
        """Tornado's rules for what a frame means (fragments, control frames); what
        handling the message still has to do, if anything."""
        if opcode & 0x8:
            if not final:
                self._abort()  # control frames are never fragmented
                return None
        elif opcode == 0:  # a continuation
            if self._fragmented_message_buffer is None:
                self._abort()
                return None
            self._fragmented_message_buffer.extend(data)
            if final:
                opcode = self._fragmented_message_opcode
                data = bytes(self._fragmented_message_buffer)
                self._fragmented_message_buffer = None
        else:  # a new message
            if self._fragmented_message_buffer is not None:
                self._abort()  # the previous message is not finished
                return None
            if not final:
                self._fragmented_message_opcode = opcode
                self._fragmented_message_buffer = bytearray(data)
        if final:
            return self._handle_message(opcode, data)
        return None


class DirectReadStream(IOStream):
    """A websocket's ``IOStream`` whose reads go to its ``BufferedFrameReader``: readable
    means "cut frames", never a tornado read. Writes and closing stay tornado's."""

    _frame_reader: BufferedFrameReader | None = None  # None once reading ended

    def reading(self) -> bool:
        # Always listening (also while a write waits): tornado keeps the socket registered
        # for reads, and a client's frames are read as they come.
        return not self.closed()

    def _handle_read(self) -> None:
        reader = self._frame_reader
        if reader is not None:
            reader._on_readable()

    def close(self, exc_info: Any = False) -> None:
        super().close(exc_info)
        reader = self._frame_reader
        if reader is not None:
            reader._stream_closed()


def adopt_buffered_reader(protocol: Any) -> Any:
    """Give a freshly made tornado protocol the buffered reader, when tornado's internals
    are the ones it was written against; else return it unchanged."""
    if type(protocol) is WebSocketProtocol13 and all(hasattr(protocol, name) for name in _NEEDED):
        protocol.__class__ = BufferedFrameReader
        protocol._inbuf = bytearray()
        protocol._inpos = 0
    return protocol


#: Streams whose socket is a plain TCP socket (TLS streams write through tornado).
_PLAIN_STREAMS = (IOStream, DirectReadStream)


def write_now(stream: Any, data: bytes) -> None:
    """Write ``data`` to ``stream`` in order with tornado's own writes (pongs, closes):
    straight to the socket when its write buffer is empty, what the socket does not take
    through the stream. Raises ``StreamClosedError`` when the connection is gone."""
    waiting = getattr(stream, "_write_buffer", True)  # tornado's unsent bytes
    if type(stream) in _PLAIN_STREAMS and not waiting and len(data) <= DIRECT_WRITE:
        sock = stream.socket
        if sock is None:
            raise StreamClosedError()
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            stream.close(exc_info=exc)
            raise StreamClosedError(real_error=exc) from None
        if sent == len(data):
            return
        data = data[sent:]
    stream.write(data)  # (its future's exception is retrieved by tornado)
