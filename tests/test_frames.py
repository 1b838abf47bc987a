"""The buffered websocket frame reader (``jupyter_ystore.server.frames``).

Differential: the same bytes, cut into the same random arrivals, go through tornado's own
reader and through ours; what each then does (messages handed on, aborts, closes) must be the
same, for well-formed streams (fragments, control frames between fragments, every length
encoding, masked or not) and hostile ones (reserved bits, oversized frames, long or fragmented
control frames, a continuation with nothing to continue); once as tornado's stream delivers
them, once read straight from a socket pair. Then once against a real server through a raw
socket: frames that share one TCP segment and a frame that arrives in pieces.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import socket
import struct
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from pycrdt import Array, Doc
from tornado.iostream import IOStream, StreamClosedError
from tornado.websocket import WebSocketProtocol13, _WebSocketParams

from jupyter_ystore.server import protocol as sync
from jupyter_ystore.server.frames import (
    BufferedFrameReader,
    DirectReadStream,
    adopt_buffered_reader,
    write_now,
)

from _server_helpers import JupyterServerProcess, wait_until, write_notebook, yclient

pytestmark = pytest.mark.anyio

MAX_MESSAGE = 100_000


class ScriptedStream:
    """A stream whose bytes arrive in the given pieces (``read_bytes`` as tornado's)."""

    def __init__(self, arrivals: list[bytes]) -> None:
        self._arrivals = list(arrivals)
        self._buffer = bytearray()

    async def read_bytes(self, n: int, partial: bool = False) -> bytes:
        while len(self._buffer) < (1 if partial else n):
            if not self._arrivals:
                raise StreamClosedError()
            await anyio.sleep(0)  # a network arrival is a turn of the loop
            self._buffer += self._arrivals.pop(0)
        size = min(n, len(self._buffer))
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data


class _Handler:
    """Records the end of the connection, as the reader reports it (once)."""

    def __init__(self) -> None:
        self.ends: list[tuple[Any, Any]] = []

    def on_ws_connection_close(self, code: Any, reason: Any) -> None:
        self.ends.append((code, reason))

    async def ended(self) -> None:
        while not self.ends:
            await asyncio.sleep(0.001)


def recording(protocol: WebSocketProtocol13, events: list[Any]) -> WebSocketProtocol13:
    def handle(opcode: int, data: bytes) -> None:
        events.append(("message", opcode, bytes(data)))
        if opcode == 0x8:
            protocol.client_terminated = True
        return None

    def abort() -> None:
        events.append(("abort",))
        protocol.client_terminated = True

    def close(code: Any = None, reason: Any = None) -> None:
        events.append(("close", code, reason))

    protocol._handle_message = handle  # type: ignore[method-assign]
    protocol._abort = abort  # type: ignore[method-assign]
    protocol.close = close  # type: ignore[method-assign]
    return protocol


async def run_reader(buffered: bool, arrivals: list[bytes]) -> tuple[list[Any], int]:
    protocol = WebSocketProtocol13(_Handler(), False, _WebSocketParams(max_message_size=MAX_MESSAGE))
    if buffered:
        protocol = adopt_buffered_reader(protocol)
        assert type(protocol) is BufferedFrameReader
    events: list[Any] = []
    recording(protocol, events)
    protocol.stream = ScriptedStream(arrivals)  # type: ignore[assignment]
    with anyio.fail_after(10):
        await protocol._receive_frame_loop()
    return events, protocol._wire_bytes_in


def direct_protocol(events: list[Any]) -> tuple[WebSocketProtocol13, socket.socket]:
    """A recording protocol with the buffered reader on one end of a socket pair; the other
    end, for the test to write the client's bytes to."""
    ours, theirs = socket.socketpair()
    protocol = adopt_buffered_reader(
        WebSocketProtocol13(_Handler(), False, _WebSocketParams(max_message_size=MAX_MESSAGE))
    )
    recording(protocol, events)
    protocol.stream = IOStream(ours)
    return protocol, theirs


async def run_direct_reader(arrivals: list[bytes]) -> tuple[list[Any], int]:
    """``run_reader`` with the frames read straight from a socket (``DirectReadStream``):
    the arrivals are sent one by one through a socket pair by a thread, which then closes
    its end."""
    events: list[Any] = []
    protocol, theirs = direct_protocol(events)

    def send() -> None:
        with theirs:
            for piece in arrivals:
                theirs.sendall(piece)
                time.sleep(0.0005)  # separate arrivals, mostly

    with anyio.fail_after(20):
        await protocol._receive_frame_loop()  # returns at once: reading goes on in callbacks
        await anyio.to_thread.run_sync(send)
        await protocol.handler.ended()
    assert type(protocol.stream) is DirectReadStream and protocol.stream.closed()
    assert len(protocol.handler.ends) == 1
    return events, protocol._wire_bytes_in


def frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True, rsv: int = 0, length: int | None = None) -> bytes:
    """One client frame (RFC 6455 5.2); ``length`` lies about the payload's size."""
    size = len(payload) if length is None else length
    head = bytes(((0x80 if fin else 0) | rsv | opcode,))
    flag = 0x80 if mask else 0
    if size < 126:
        head += bytes((flag | size,))
    elif size < 1 << 16:
        head += bytes((flag | 126,)) + struct.pack("!H", size)
    else:
        head += bytes((flag | 127,)) + struct.pack("!Q", size)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def random_stream(rng: random.Random) -> bytes:
    """A client's byte stream: mostly sane, sometimes hostile, ending anywhere."""
    sizes = [0, 1, 5, 125, 126, 127, 300, 65535, 65536, 70_000, MAX_MESSAGE, MAX_MESSAGE + 1]
    out = b""
    fragmenting = False
    for _ in range(rng.randint(1, 12)):
        mask = rng.random() < 0.9
        payload = rng.randbytes(rng.choice(sizes) if rng.random() < 0.3 else rng.randint(0, 40))
        roll = rng.random()
        if roll < 0.35:
            out += frame(0x2, payload, mask=mask)
        elif roll < 0.45:
            out += frame(0x1, "é ok".encode() * rng.randint(0, 5), mask=mask)
        elif roll < 0.55:
            out += frame(0x9, payload[:125], mask=mask)  # ping, possibly between fragments
        elif roll < 0.70:
            out += frame(0x2 if not fragmenting else 0x0, payload, fin=False, mask=mask)
            fragmenting = True
        elif roll < 0.80:
            out += frame(0x0, payload, fin=rng.random() < 0.6, mask=mask)
        elif roll < 0.84:
            out += frame(0x2, payload, rsv=rng.choice((0x40, 0x20, 0x10)), mask=mask)
        elif roll < 0.88:
            out += frame(0x9, rng.randbytes(126), mask=mask)  # a control frame too long
        elif roll < 0.91:
            out += frame(0xA, payload[:10], fin=False, mask=mask)  # a fragmented control frame
        elif roll < 0.94:
            out += frame(0x2, b"", length=rng.choice((MAX_MESSAGE + 1, 1 << 40)), mask=mask)
        elif roll < 0.96:
            out += frame(rng.choice((0x3, 0xB)), payload[:20], mask=mask)  # unknown opcodes
        else:
            out += frame(0x8, struct.pack("!H", 1000) + b"bye", mask=mask)
    if rng.random() < 0.3:
        out = out[: rng.randint(0, len(out))]  # the connection drops mid-frame
    return out


def cut(rng: random.Random, data: bytes) -> list[bytes]:
    """``data`` in random arrivals: single bytes, small pieces, or big runs."""
    pieces, pos = [], 0
    while pos < len(data):
        size = rng.choice((1, 1, 2, 3, 7, 64, 1000, 70_000, len(data)))
        pieces.append(data[pos : pos + size])
        pos += size
    return pieces


@pytest.mark.parametrize("seed", range(60))
async def test_buffered_reader_does_what_tornados_does(seed: int) -> None:
    rng = random.Random(seed)
    data = random_stream(rng)
    arrivals = cut(rng, data)
    theirs, their_bytes = await run_reader(False, arrivals)
    ours, our_bytes = await run_reader(True, arrivals)
    assert ours == theirs
    assert theirs[-1][0] == "abort" or theirs[-1][:2] == ("message", 0x8)
    if theirs[-1] != ("abort",) or our_bytes == len(data):
        assert our_bytes == their_bytes  # the bytes it took account for what it read


@pytest.mark.parametrize("seed", range(0, 60, 3))
async def test_direct_reader_does_what_tornados_does(seed: int) -> None:
    rng = random.Random(seed)
    data = random_stream(rng)
    arrivals = cut(rng, data)
    theirs, their_bytes = await run_reader(False, arrivals)
    ours, our_bytes = await run_direct_reader(arrivals)
    assert ours == theirs
    if theirs[-1] != ("abort",) or our_bytes == len(data):
        assert our_bytes == their_bytes


async def test_direct_reader_holds_later_frames_while_a_message_is_handled() -> None:
    """A message whose handling awaits (a sync answered once the store caught up) is
    finished before the next frame of that client is handed on, as tornado's loop does."""
    events: list[Any] = []
    release = asyncio.Event()
    protocol, theirs = direct_protocol(events)

    async def slow() -> None:
        await release.wait()
        events.append(("handled", b"first"))

    plain = protocol._handle_message

    def handle(opcode: int, data: bytes) -> Any:
        plain(opcode, data)
        return asyncio.ensure_future(slow()) if data == b"first" else None

    protocol._handle_message = handle  # type: ignore[method-assign]
    theirs.sendall(frame(0x2, b"first") + frame(0x2, b"second"))
    with anyio.fail_after(10):
        await protocol._receive_frame_loop()
        await wait_until(lambda: len(events) >= 1)
        theirs.sendall(frame(0x2, b"third"))
        await anyio.sleep(0.05)
        assert events == [("message", 0x2, b"first")]  # the rest wait, read or not
        release.set()
        await wait_until(lambda: len(events) >= 4)
        theirs.close()
        await protocol.handler.ended()
    assert events == [
        ("message", 0x2, b"first"),
        ("handled", b"first"),
        ("message", 0x2, b"second"),
        ("message", 0x2, b"third"),
        ("abort",),  # the stream ended
    ]


async def test_frames_in_one_arrival_and_frames_in_pieces() -> None:
    first = frame(0x2, b"one")
    big = frame(0x2, b"x" * 70_000)
    medium = frame(0x2, b"y" * 300, mask=False)
    last = frame(0x1, "two".encode())
    events, _ = await run_reader(True, [first + big[:3], big[3:9], big[9:] + medium + last[:1], last[1:]])
    assert events == [
        ("message", 0x2, b"one"),
        ("message", 0x2, b"x" * 70_000),
        ("message", 0x2, b"y" * 300),
        ("message", 0x1, b"two"),
        ("abort",),  # the stream ended
    ]


async def test_an_oversized_frame_is_refused_before_its_payload_arrives() -> None:
    events, _ = await run_reader(True, [frame(0x2, b"", length=1 << 40)[:10]])
    assert events[0] == ("close", 1009, "message too big")


async def test_a_protocol_without_tornados_internals_keeps_its_reader() -> None:
    class Other(WebSocketProtocol13):  # someone else's protocol: not ours to change
        pass

    other = Other(_Handler(), False, _WebSocketParams())
    assert type(adopt_buffered_reader(other)) is Other
    changed = WebSocketProtocol13(_Handler(), False, _WebSocketParams())
    del changed._fragmented_message_buffer  # a tornado whose internals moved
    assert type(adopt_buffered_reader(changed)) is WebSocketProtocol13
    assert type(adopt_buffered_reader(WebSocketProtocol13(_Handler(), False, _WebSocketParams()))) is BufferedFrameReader


# --------------------------------------------------------------- against a real server


def handshake(port: int, path: str, token: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: token {token}\r\n\r\n"
        ).encode()
    )
    reply = b""
    while b"\r\n\r\n" not in reply:
        reply += sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 101"), reply[:200]
    return sock


def read_frames(sock: socket.socket, buffered: bytearray, count: int, timeout: float = 10) -> list[tuple[int, bytes]]:
    """``count`` server frames (unmasked, unfragmented)."""
    frames: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + timeout
    while len(frames) < count:
        if len(buffered) >= 2:
            size, start = buffered[1] & 0x7F, 2
            if size == 126:
                size, start = struct.unpack("!H", buffered[2:4])[0], 4
            elif size == 127:
                size, start = struct.unpack("!Q", buffered[2:10])[0], 10
            if len(buffered) >= start + size:
                frames.append((buffered[0] & 0x0F, bytes(buffered[start : start + size])))
                del buffered[: start + size]
                continue
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buffered += chunk
    return frames


@pytest.fixture
def server(tmp_path: Path) -> Any:
    write_notebook(tmp_path / "root" / "frames.ipynb", ["start"])
    proc = JupyterServerProcess(tmp_path / "root", tmp_path / "home").start()
    try:
        yield proc
    finally:
        proc.kill()


async def test_a_real_server_reads_frames_that_share_or_split_segments(server: Any) -> None:
    session = server.session("frames.ipynb")
    room_path = f"/api/collaboration/room/json:notebook:{session['fileId']}"
    async with yclient(server.ws_url + room_path + f"?token={server.token}") as watcher:
        await wait_until(lambda: watcher.synced.is_set())
        sock = handshake(server.port, room_path, server.token)
        try:
            doc = Doc()
            doc.apply_update(watcher.ydoc.get_update())  # the server's document, then edited
            source = doc.get("cells", type=Array)[0]["source"]
            updates: list[bytes] = []
            doc.observe(lambda event: updates.append(event.update))
            source += "a"
            source += "b" * 70_000  # a 64-bit length
            source += "c" * 300  # a 16-bit length
            ping = frame(0x9, b"are you there")
            burst = frame(0x2, sync.sync_step1(Doc())) + frame(0x2, sync.update_message(updates[0])) + ping
            sock.sendall(burst)  # three frames in one segment
            big = frame(0x2, sync.update_message(updates[1])) + frame(0x2, sync.update_message(updates[2]))
            for start in range(0, len(big), 7_001):  # then frames in pieces, one cut mid-header
                sock.sendall(big[start : start + 7_001])
                await anyio.sleep(0.01)
            buffered = bytearray()
            got: list[tuple[int, bytes]] = []
            while (0xA, b"are you there") not in got:  # tornado still answers pings
                got += await anyio.to_thread.run_sync(read_frames, sock, buffered, 1)
            await wait_until(lambda: watcher.sources() == [str(source)], timeout=20)
            assert str(source) == "starta" + "b" * 70_000 + "c" * 300
        finally:
            sock.close()


# --------------------------------------------------------------- writing


async def _stream_pair() -> tuple[Any, socket.socket]:
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    return IOStream(ours), peer


def _drain(peer: socket.socket, size: int) -> bytes:
    data = b""
    peer.settimeout(10)
    while len(data) < size:
        data += peer.recv(1 << 20)
    return data


async def test_write_now_goes_straight_to_the_socket() -> None:
    stream, peer = await _stream_pair()
    try:
        write_now(stream, b"hello")
        assert stream._total_write_index == 0  # nothing went through tornado's buffer
        assert _drain(peer, 5) == b"hello"
    finally:
        stream.close()
        peer.close()


async def test_write_now_keeps_order_when_the_socket_is_full() -> None:
    stream, peer = await _stream_pair()
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    try:
        chunks = [bytes([i]) * 60_000 for i in range(1, 9)]  # more than the socket holds
        for chunk in chunks:
            write_now(stream, chunk)
        assert stream._total_write_index > 0  # the rest waits in tornado's buffer, in order
        received = await anyio.to_thread.run_sync(_drain, peer, sum(map(len, chunks)))
        assert received == b"".join(chunks)
    finally:
        stream.close()
        peer.close()


async def test_write_now_to_a_closed_connection_raises() -> None:
    stream, peer = await _stream_pair()
    peer.close()
    with pytest.raises(StreamClosedError):
        for _ in range(100):  # the first sends may still be taken by the kernel
            write_now(stream, b"x" * 10_000)
            await anyio.sleep(0.001)
    assert stream.closed()


# --------------------------------------------------------------- y-websocket messages


@pytest.mark.parametrize("size", [0, 1, 20, 126, 127, 128, 300])
def test_a_keystroke_message_parses_as_the_general_decoder_does(size: int) -> None:
    from pycrdt import Encoder

    payload = bytes(range(256))[:size] if size <= 256 else os.urandom(size)
    encoder = Encoder()
    encoder.write_var_uint(sync.MessageType.SYNC)
    encoder.write_var_uint(sync.SyncType.UPDATE)
    encoder.write_var_uint(size)
    frame = encoder.to_bytes() + payload
    assert sync.parse_message(frame) == sync.SyncUpdate(payload)
    assert sync.parse_message(bytearray(frame)) == sync.SyncUpdate(payload)  # the general path
    for cut in range(2, len(frame)):  # truncated: refused by either path
        with pytest.raises(sync.ProtocolError):
            sync.parse_message(frame[:cut])


async def test_clients_with_frames_are_written_by_one_callback_a_turn(caplog: Any) -> None:
    import asyncio
    import logging

    from jupyter_ystore.server import handlers

    written: list[str] = []

    class Client:
        def __init__(self, name: str, fail: bool = False) -> None:
            self.username, self.fail, self._flush_soon = name, fail, False
            self.log = logging.getLogger("test_frames")

        def queue(self) -> None:
            if not self._flush_soon:
                self._flush_soon = True
                handlers.flush_soon(self)  # type: ignore[arg-type]

        def _flush(self) -> None:
            self._flush_soon = False
            if self.fail:
                raise RuntimeError("broken socket object")
            written.append(self.username)

    loop = asyncio.get_running_loop()
    scheduled = []
    real_call_soon = loop.call_soon
    loop.call_soon = lambda *args, **kw: scheduled.append(args[0]) or real_call_soon(*args, **kw)  # type: ignore[method-assign]
    try:
        clients = [Client("a"), Client("b", fail=True), Client("c"), Client("d")]
        for client in clients:
            client.queue()
            client.queue()  # queued once
        clients[3]._flush()  # written directly meanwhile (a close): not written twice
        await asyncio.sleep(0)
    finally:
        del loop.call_soon
    assert scheduled.count(handlers._flush_all) == 1
    assert written == ["d", "a", "c"]  # b failed, and did not stop c
    assert "writing to b failed" in caplog.text


async def test_many_clients_to_write_in_one_turn_are_written_a_batch_per_callback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A turn that queues writes to hundreds of clients writes ``FLUSH_BATCH`` of them per
    loop callback (one callback writing to 480 held the loop 14-17 ms), every one of them,
    in the order queued; a client queued meanwhile comes after those queued before it."""
    import asyncio
    import logging

    from jupyter_ystore.server import handlers

    batches: list[list[str]] = []
    real_flush_all = handlers._flush_all

    def flush_all(waiting: list[Any]) -> None:
        batches.append([])
        real_flush_all(waiting)

    monkeypatch.setattr(handlers, "_flush_all", flush_all)

    class Client:
        def __init__(self, name: str) -> None:
            self.username, self._flush_soon = name, False
            self.log = logging.getLogger("test_frames")

        def queue(self) -> None:
            self._flush_soon = True
            handlers.flush_soon(self)  # type: ignore[arg-type]

        def _flush(self) -> None:
            self._flush_soon = False
            batches[-1].append(self.username)
            if self.username == "0":
                late.queue()  # (a relay while the first batch is written)

    size = handlers.FLUSH_BATCH
    clients = [Client(str(i)) for i in range(2 * size + 5)]
    late = Client("late")
    for client in clients:
        client.queue()
    for _ in range(5):
        await asyncio.sleep(0)
    assert [len(batch) for batch in batches] == [size, size, 6]
    assert sum(batches, []) == [client.username for client in clients] + ["late"]


async def test_clients_that_vanish_mid_frame_leave_their_room_cleanly(tmp_path: Path) -> None:
    """Raw clients that stop halfway through a frame (the length said, the payload not all
    there), then close (FIN) or reset (RST), or reset right after the handshake: each is
    dropped as a client of the room, so the room closes once nobody is left; the server logs
    no error and keeps serving."""
    write_notebook(tmp_path / "root" / "gone.ipynb", ["start"])
    server = JupyterServerProcess(
        tmp_path / "root", tmp_path / "home", config={"YStoreExtension": {"document_cleanup_delay": 0.5}}
    ).start()
    try:
        session = server.session("gone.ipynb")
        room_path = f"/api/collaboration/room/json:notebook:{session['fileId']}"
        half = frame(0x2, sync.sync_step1(Doc()) + b"x" * 3000)
        socks = []
        for n in range(6):
            sock = handshake(server.port, room_path, server.token)
            if n % 3 != 2:
                sock.sendall(half[: 4 + n * 500])  # mid-header or mid-payload
            socks.append(sock)
        await anyio.sleep(0.3)
        for n, sock in enumerate(socks):
            if n % 2:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
            sock.close()
        await wait_until(lambda: "no client left, closing" in server.log(), timeout=20)
        async with yclient(server.ws_url + room_path + f"?token={server.token}") as again:
            await wait_until(lambda: again.synced.is_set())
            assert again.sources() == ["start"]
        log = server.log()
        assert "Traceback" not in log and "Uncaught exception" not in log, log[-3000:]
    finally:
        server.kill()


async def test_a_closed_connections_reader_is_freed_without_the_garbage_collector() -> None:
    """Once reading ended, the stream lets go of its reader: the connection's objects go
    as soon as nothing uses them, not at the next full collection (which holds the loop
    for every room, and frees a whole class's connections at once when it leaves)."""
    import gc
    import weakref

    ours, theirs = socket.socketpair()
    handler = _Handler()
    protocol = adopt_buffered_reader(
        WebSocketProtocol13(handler, False, _WebSocketParams(max_message_size=MAX_MESSAGE))
    )
    protocol.stream = IOStream(ours)
    stream = protocol.stream
    with anyio.fail_after(10):
        await protocol._receive_frame_loop()
        theirs.close()
        await handler.ended()
    assert len(handler.ends) == 1
    assert stream._frame_reader is None
    stream.close()  # closing again is harmless once the reader is gone
    reader = weakref.ref(protocol)
    gc.disable()
    try:
        del protocol
        await asyncio.sleep(0)
        assert reader() is None
    finally:
        gc.enable()
