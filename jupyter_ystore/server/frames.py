"""Reading a client's websocket frames in one pass over what arrived; writing ours at once.

Tornado reads every frame with three or four ``read_bytes`` calls (header, length, mask,
payload), each a future and a trip through its stream buffer (measured under load: a seventh
of the event loop's time, twice the update checks'). ``BufferedFrameReader`` asks the stream once for whatever has arrived (up
to 64 KiB) and cuts the frames out of its own buffer; everything a frame means (control
frames, closing, the message handler) stays tornado's.

``write_now`` writes frames straight to the socket when tornado has nothing of its own waiting
to be written: ``IOStream.write`` makes a future and schedules two callbacks for every write,
more work than the system call itself.

The reader relies on ``WebSocketProtocol13``'s internals (``_receive_frame``,
``_handle_message`` and the fragment state). ``adopt_buffered_reader`` checks they are there
and otherwise leaves tornado's reader in place: a tornado that changed them still works,
only slower.
"""

from __future__ import annotations

from typing import Any

from tornado.iostream import IOStream, StreamClosedError
from tornado.util import _websocket_mask  # type: ignore[attr-defined]
from tornado.websocket import WebSocketProtocol13

#: Bytes asked of the stream at a time when a frame is incomplete.
CHUNK = 65536

#: Writes up to this size may go straight to the socket (Windows refuses big sends).
DIRECT_WRITE = 65536

_NEEDED = (
    "_receive_frame",
    "_handle_message",
    "_abort",
    "_decompressor",
    "_fragmented_message_buffer",
    "_fragmented_message_opcode",
    "stream",
    "params",
)


class BufferedFrameReader(WebSocketProtocol13):
    """``WebSocketProtocol13`` whose frames are cut from a buffer of their own."""

    _inbuf: bytearray
    _inpos: int

    async def _receive_frame(self) -> None:
        """Read one frame (RFC 6455 section 5.2) and hand it to tornado, as its own reader
        does: the same checks, the same aborts, the same fragment handling."""
        if self._decompressor is not None:  # never negotiated by our handler; keep tornado's
            await super()._receive_frame()
            return
        while True:
            buf, pos = self._inbuf, self._inpos
            have = len(buf) - pos
            need = 2
            if have >= 2:
                head, second = buf[pos], buf[pos + 1]
                opcode = head & self.OPCODE_MASK
                if head & self.RSV_MASK:
                    self._abort()  # an extension nobody negotiated
                    return
                length = second & 0x7F
                if opcode & 0x8 and length >= 126:
                    self._abort()  # control frames carry at most 125 bytes
                    return
                start = pos + 2
                if length == 126:
                    need = 4
                    if have >= need:
                        length = int.from_bytes(buf[start : start + 2], "big")
                        start += 2
                elif length == 127:
                    need = 10
                    if have >= need:
                        length = int.from_bytes(buf[start : start + 8], "big")
                        start += 8
                if have >= need:
                    fragments = self._fragmented_message_buffer
                    if length + (len(fragments) if fragments is not None else 0) > self.params.max_message_size:
                        self.close(1009, "message too big")
                        self._abort()
                        return
                    masked = second & 0x80
                    end = start + (4 if masked else 0) + length
                    if len(buf) >= end:
                        break
                    need = end - pos
            await self._fill(need - have)
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
        await self._dispatch(head & self.FIN, opcode, data)

    async def _fill(self, missing: int) -> None:
        """Append what the stream has (at least one byte; ``missing`` when that is more than
        a chunk, so that a big frame is read in one call)."""
        buf = self._inbuf
        if self._inpos:
            del buf[: self._inpos]  # compact: only when a frame is incomplete
            self._inpos = 0
        if missing > CHUNK:
            buf += await self.stream.read_bytes(missing)
        else:
            buf += await self.stream.read_bytes(CHUNK, partial=True)

    async def _dispatch(self, final: int, opcode: int, data: bytes) -> None:
        """Tornado's rules for what a frame means (fragments, control frames)."""
        if opcode & 0x8:
            if not final:
                self._abort()  # control frames are never fragmented
                return
        elif opcode == 0:  # a continuation
            if self._fragmented_message_buffer is None:
                self._abort()
                return
            self._fragmented_message_buffer.extend(data)
            if final:
                opcode = self._fragmented_message_opcode
                data = bytes(self._fragmented_message_buffer)
                self._fragmented_message_buffer = None
        else:  # a new message
            if self._fragmented_message_buffer is not None:
                self._abort()  # the previous message is not finished
                return
            if not final:
                self._fragmented_message_opcode = opcode
                self._fragmented_message_buffer = bytearray(data)
        if final:
            handled = self._handle_message(opcode, data)
            if handled is not None:
                await handled


def adopt_buffered_reader(protocol: Any) -> Any:
    """Give a freshly made tornado protocol the buffered reader, when tornado's internals
    are the ones it was written against; else return it unchanged."""
    if type(protocol) is WebSocketProtocol13 and all(hasattr(protocol, name) for name in _NEEDED):
        protocol.__class__ = BufferedFrameReader
        protocol._inbuf = bytearray()
        protocol._inpos = 0
    return protocol


def write_now(stream: Any, data: bytes) -> None:
    """Write ``data`` to ``stream`` in order with tornado's own writes (pongs, closes):
    straight to the socket when its write buffer is empty, what the socket does not take
    through the stream. Raises ``StreamClosedError`` when the connection is gone."""
    waiting = getattr(stream, "_write_buffer", True)  # tornado's unsent bytes
    if type(stream) is IOStream and not waiting and len(data) <= DIRECT_WRITE:
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
