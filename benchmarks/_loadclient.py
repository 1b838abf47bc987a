"""Cheap y-websocket load clients for ``bench_server.py`` (run in a process of their own).

The server under test shares 2 cores with its clients, so a client must cost far less than
what it makes the server do:

- a minimal WebSocket client on an asyncio ``Protocol`` (no per-frame coroutine): frames are
  parsed in ``data_received`` and only timestamped and kept;
- every client's edits are made with pycrdt before the timed window, on its own copy of the
  synced document, and kept as ready-to-write masked frames (update + awareness);
- incoming updates are applied only after the window, to check convergence and to attribute
  arrivals to edits (by Yjs client id and clock: the structs and deleted ranges of what
  arrived, so that edits a server relays merged into one update all count).

The kinds of edits and their mix come from the realistic stream (``edit_script``): typing,
backspaces, pastes, cell inserts and deletes, executions that replace outputs.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import gc
import json
import os
import random
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_ystore.core.yupdate import InvalidUpdate, read_update

# --------------------------------------------------------------------------- lib0 / Yjs bits


def var_uint(value: int) -> bytes:
    """lib0's unsigned LEB128."""
    out = bytearray()
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


def read_var_uint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def var_bytes(data: bytes) -> bytes:
    return var_uint(len(data)) + data


def var_string(text: str) -> bytes:
    return var_bytes(text.encode())


def decode_state_vector(sv: bytes) -> dict[int, int]:
    """``{client: next clock}`` of an encoded state vector."""
    count, pos = read_var_uint(sv, 0)
    out = {}
    for _ in range(count):
        client, pos = read_var_uint(sv, pos)
        clock, pos = read_var_uint(sv, pos)
        out[client] = clock
    return out


def delete_key(update: bytes) -> tuple[int, int] | None:
    """(client, clock) of the first deleted range of an update that only deletes (no structs):
    how a backspace is recognised when it arrives."""
    groups, pos = read_var_uint(update, 0)
    if groups:
        return None
    clients, pos = read_var_uint(update, pos)
    if not clients:
        return None
    client, pos = read_var_uint(update, pos)
    ranges, pos = read_var_uint(update, pos)
    if not ranges:
        return None
    clock, pos = read_var_uint(update, pos)
    return client, clock


def update_key(update: bytes) -> tuple[int, int, bool] | None:
    """(client, clock) of an update's first struct (or first deleted range when it only
    deletes): each edit of a client has its own, and a relayed edit keeps it (our server
    relays the client's update, jupyter-collaboration the transaction that applied it)."""
    groups, pos = read_var_uint(update, 0)
    if not groups:
        deleted = delete_key(update)
        return None if deleted is None else (deleted[0], deleted[1], True)
    _, pos = read_var_uint(update, pos)  # structs in the group
    client, pos = read_var_uint(update, pos)
    clock, pos = read_var_uint(update, pos)
    return client, clock, False


class EditIndex:
    """Which planned edits of a room an arriving update holds, by Yjs ids: its structs' clock
    ranges (an insert edit is named by its first struct) and its deleted ranges (a delete-only
    edit by its first deleted id). A merged update holds several edits."""

    def __init__(self, room_plans: list[Any]) -> None:
        inserts: dict[int, list[tuple[int, int, int]]] = {}
        deletes: dict[int, list[tuple[int, int, int]]] = {}
        for sender, plan in enumerate(room_plans):
            for (client, clock, is_delete), n in plan.keys.items():
                (deletes if is_delete else inserts).setdefault(client, []).append((clock, sender, n))
        self._inserts = {client: sorted(edits) for client, edits in inserts.items()}
        self._deletes = {client: sorted(edits) for client, edits in deletes.items()}
        self._insert_clocks = {client: [e[0] for e in edits] for client, edits in self._inserts.items()}
        self._delete_clocks = {client: [e[0] for e in edits] for client, edits in self._deletes.items()}

    def last_edits(self, update: bytes) -> dict[int, int]:
        """sender -> the last of its edits ``update`` holds (an edit's sender relays in order,
        so the earlier ones arrived before or with it)."""
        try:
            summary = read_update(update)
        except InvalidUpdate:
            return {}
        last: dict[int, int] = {}

        def take(edit: tuple[int, int, int]) -> None:
            _, sender, n = edit
            if last.get(sender, -1) < n:
                last[sender] = n

        for client, structs in summary.structs.items():
            clocks = self._insert_clocks.get(client)
            if not clocks:
                continue
            for clock, length, skip in structs:
                if skip:
                    continue
                lo = bisect.bisect_left(clocks, clock)
                hi = bisect.bisect_left(clocks, clock + length)
                if hi > lo:
                    take(self._inserts[client][hi - 1])
        for client, ranges in summary.deletions.items():
            clocks = self._delete_clocks.get(client)
            if not clocks:
                continue
            for clock, length in ranges:
                lo = bisect.bisect_left(clocks, clock)
                hi = bisect.bisect_left(clocks, clock + length)
                for edit in self._deletes[client][lo:hi]:
                    take(edit)
        return last


def update_frame(update: bytes) -> bytes:
    return b"\x00\x02" + var_bytes(update)


STEP1_EMPTY = b"\x00\x00" + var_bytes(b"\x00")  # sync step 1 with an empty state vector
STEP2_EMPTY = b"\x00\x01" + var_bytes(b"\x00\x00")  # "I have nothing you lack"


def awareness_frame(client_id: int, clock: int, state: dict[str, Any] | None) -> bytes:
    """An awareness message as y-protocols encodes it (one client's state)."""
    text = "null" if state is None else json.dumps(state, separators=(",", ":"))
    update = var_uint(1) + var_uint(client_id) + var_uint(clock) + var_string(text)
    return b"\x01" + var_bytes(update)


def save_frame(request_id: int) -> bytes:
    return b"\x02" + var_string("save") + var_uint(request_id)


# --------------------------------------------------------------------------- WebSocket


def _mask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if not n:
        return payload
    keystream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(keystream, "little")).to_bytes(n, "little")


def ws_frame(payload: bytes, opcode: int = 2) -> bytes:
    """A masked client frame (RFC 6455 5.3: a fresh random key per frame)."""
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    key = os.urandom(4)
    return head + key + _mask(payload, key)


class WSClient(asyncio.Protocol):
    """One y-websocket connection. Everything runs in ``data_received``: a frame in costs a
    parse and a list append, no task, no coroutine."""

    def __init__(self, host: str, port: int, target: str, name: str) -> None:
        self.host, self.port, self.target, self.name = host, port, target, name
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.handshaken = asyncio.get_running_loop().create_future()
        self.synced = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self.close_code: int | None = None
        self.close_reason = ""
        self.step2: bytes | None = None
        self.updates: list[tuple[float, bytes]] = []  # (arrival, update) in arrival order
        self.awareness_in = 0
        self.raw: list[dict[str, Any]] = []
        self.frames_in = 0
        self.bytes_in = 0
        self.own_updates: list[bytes] = []  # sent so far (answering a late step 1)
        self._fragments: list[bytes] = []
        self._key = base64.b64encode(os.urandom(16)).decode()
        self.connect_started = 0.0
        self.step2_at = 0.0

    # ------------------------------------------------------------------ asyncio callbacks
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        request = (
            f"GET {self.target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {self._key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        transport.write(request.encode())

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        if not self.handshaken.done():
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).decode("latin-1")
            del buf[: end + 4]
            if not head.startswith("HTTP/1.1 101"):
                self.handshaken.set_exception(ConnectionError(f"{self.name}: {head.splitlines()[0]}"))
                self._set_closed(None, head.splitlines()[0])
                return
            self.handshaken.set_result(None)
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            at = pos + 2
            if length == 126:
                if size - at < 2:
                    break
                length = int.from_bytes(buf[at : at + 2], "big")
                at += 2
            elif length == 127:
                if size - at < 8:
                    break
                length = int.from_bytes(buf[at : at + 8], "big")
                at += 8
            if b1 & 0x80:  # servers do not mask; tolerate it anyway
                at += 4
            if size - at < length:
                break
            payload = bytes(buf[at : at + length])
            pos = at + length
            self._frame(b0 & 0x80, b0 & 0x0F, payload)
        if pos:
            del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self._set_closed(self.close_code, self.close_reason or (str(exc) if exc else ""))

    # ------------------------------------------------------------------ frames
    def _frame(self, fin: int, opcode: int, payload: bytes) -> None:
        if opcode == 0:
            self._fragments.append(payload)
            if fin:
                payload = b"".join(self._fragments)
                self._fragments = []
                self._message(payload)
            return
        if opcode in (1, 2):
            if fin:
                self._message(payload)
            else:
                self._fragments = [payload]
            return
        if opcode == 9:  # ping
            self.write(ws_frame(payload, 10))
        elif opcode == 8:  # close
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
            self.close_code, self.close_reason = code, payload[2:].decode("utf-8", "replace")
            self.write(ws_frame(payload[:2], 8))
            if self.transport is not None:
                self.transport.close()

    def _message(self, msg: bytes) -> None:
        now = time.monotonic()
        self.frames_in += 1
        self.bytes_in += len(msg)
        kind = msg[0]
        if kind == 0:
            sub = msg[1]
            if sub == 2:
                self.updates.append((now, msg))
            elif sub == 1:
                length, pos = read_var_uint(msg, 2)
                self.step2 = msg[pos : pos + length]
                self.step2_at = now
                if not self.synced.done():
                    self.synced.set_result(None)
            elif sub == 0:
                self._answer_step1()
        elif kind == 1:
            self.awareness_in += 1
        elif kind == 2:
            length, pos = read_var_uint(msg, 1)
            try:
                self.raw.append(json.loads(msg[pos : pos + length]))
            except ValueError:
                pass

    def _answer_step1(self) -> None:
        """The server asks what we have: nothing but what we sent (never applied locally)."""
        if not self.own_updates:
            self.write(ws_frame(STEP2_EMPTY))
            return
        from pycrdt import merge_updates

        self.write(ws_frame(b"\x00\x01" + var_bytes(merge_updates(*self.own_updates))))

    # ------------------------------------------------------------------ actions
    def write(self, frame: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.write(ws_frame((1000).to_bytes(2, "big"), 8))
            self.transport.close()

    def _set_closed(self, code: int | None, reason: str) -> None:
        if not self.closed.done():
            self.close_code = code
            self.close_reason = reason
            self.closed.set_result(None)
        if not self.synced.done():
            self.synced.set_exception(ConnectionError(f"{self.name}: closed {code} {reason}"))
            self.synced.exception()  # retrieved
        if not self.handshaken.done():
            self.handshaken.set_exception(ConnectionError(f"{self.name}: closed {code} {reason}"))
            self.handshaken.exception()


# --------------------------------------------------------------------------- HTTP


def put_session(base_url: str, token: str, path: str) -> dict[str, Any]:
    """``PUT /api/collaboration/session/{path}`` as the front end does it."""
    req = urllib.request.Request(
        f"{base_url}/api/collaboration/session/{urllib.parse.quote(path)}",
        data=json.dumps({"format": "json", "type": "notebook"}).encode(),
        method="PUT",
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def room_target(session: dict[str, Any], token: str) -> str:
    room = f"{session['format']}:{session['type']}:{session['fileId']}"
    query = urllib.parse.urlencode({"sessionId": session["sessionId"], "token": token})
    return f"/api/collaboration/room/{room}?{query}"


async def connect(host: str, port: int, target: str, name: str) -> WSClient:
    """A connected, handshaken client whose step 1 is sent (as the front end does)."""
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    _, client = await loop.create_connection(lambda: WSClient(host, port, target, name), host, port)
    client.connect_started = started
    await client.handshaken
    client.write(ws_frame(STEP1_EMPTY))
    return client


# --------------------------------------------------------------------------- edit script


@dataclass
class Op:
    kind: str  # key | del | paste | cell+ | cell- | exec
    text: str = ""
    outputs: list[dict[str, Any]] = field(default_factory=list)
    count: int | None = None


def edit_script(stream: Path, limit: int = 50_000) -> list[Op]:
    """The stream's edits as abstract operations (what a person did, not where): replaying
    them on a client's own cells keeps the stream's mix of typing, backspaces, pastes, cell
    inserts/deletes and executions with its real output payloads."""
    from jupyter_ydoc import YNotebook
    from pycrdt import Doc

    data = stream.read_bytes()
    doc = Doc()
    nb = YNotebook(doc)
    events: list[Any] = []
    nb._ycells.observe_deep(lambda evs: events.extend(evs))
    ops: list[Op] = []
    pos = 0
    while pos < len(data) and len(ops) < limit:
        length, pos = read_var_uint(data, pos)
        update = data[pos : pos + length]
        pos += length
        events.clear()
        doc.apply_update(update)
        names = [type(e).__name__ for e in events]
        if "MapEvent" in names and any("outputs" in str(e.path) for e in events):
            index = events[0].path[0]
            cell = nb._ycells[index]
            ops.append(Op("exec", outputs=cell["outputs"].to_py(), count=cell.get("execution_count")))
            continue
        event = events[0] if events else None
        if event is None:
            continue
        if type(event).__name__ == "TextEvent":
            inserted = "".join(d["insert"] for d in event.delta if "insert" in d)
            if not inserted:
                ops.append(Op("del"))
            elif len(inserted) == 1:
                ops.append(Op("key", inserted))
            else:
                ops.append(Op("paste", inserted))
        elif type(event).__name__ == "ArrayEvent" and not event.path:
            if any("insert" in d for d in event.delta):
                ops.append(Op("cell+"))
            elif any("delete" in d for d in event.delta):
                ops.append(Op("cell-"))
    return ops


def script_to_json(ops: list[Op]) -> list[list[Any]]:
    return [[op.kind, op.text, op.outputs, op.count] for op in ops]


def script_from_json(rows: list[list[Any]]) -> list[Op]:
    return [Op(kind, text, outputs, count) for kind, text, outputs, count in rows]


# --------------------------------------------------------------------------- one client's edits


@dataclass
class Planned:
    """A client's edits, made before the window: when, what frames, how to recognise them."""

    client_id: int
    offsets: list[float]  # seconds after the window starts
    frames: list[bytes]  # update frame (+ awareness frame), masked, ready to write
    updates: list[bytes]
    keys: dict[tuple[int, int, bool], int]  # update_key of each edit -> its index
    kinds: dict[str, int]


def user_state(client_id: int, name: str) -> dict[str, Any]:
    """Awareness ``user`` as JupyterLab sets it (identity of the current user)."""
    return {
        "user": {
            "username": name,
            "name": name,
            "display_name": f"Bench {name}",
            "initials": name[:2].upper(),
            "color": "var(--jp-collaborator-color3)",
            "avatar_url": None,
        }
    }


def cursor_state(base: dict[str, Any], client_id: int, clock: int) -> dict[str, Any]:
    """The state after a keystroke: y-codemirror's cursor as relative positions."""
    pos = {"type": None, "tname": None, "item": {"client": client_id, "clock": clock}, "assoc": 0}
    state = dict(base)
    state["cursors"] = [{"anchor": pos, "head": pos, "primary": True, "empty": True}]
    return state


def plan_client(
    base_state: bytes,
    script: list[Op],
    start: int,
    seconds: float,
    rng: random.Random,
    name: str,
    min_gap: float = 0.1,
    max_gap: float = 0.3,
    cursor_every: float = 0.0,
) -> Planned:
    """Make one client's edits on a copy of the synced document: it first inserts a cell of
    its own at the end, then replays the script from ``start`` on its own cells, one edit
    every ``min_gap``–``max_gap`` seconds. An edit carries its cursor (an awareness frame)
    when ``cursor_every`` seconds have passed since the last one (0: every edit, as the
    front end sends it)."""
    from jupyter_ydoc import YNotebook
    from pycrdt import Doc, merge_updates

    client_id = rng.randrange(1 << 20, 1 << 31)
    doc = Doc(client_id=client_id)
    doc.apply_update(base_state)
    nb = YNotebook(doc)
    captured: list[bytes] = []
    sub = doc.observe(lambda event: captured.append(event.update))
    cells = nb.ycells
    own: list[Any] = []

    def index_of(cell_id: str) -> int:
        for i, cell in enumerate(cells):
            if cell["id"] == cell_id:
                return i
        raise LookupError(cell_id)

    def new_cell(at: int) -> None:
        cell = nb.create_ycell(
            {"cell_type": "code", "source": "", "metadata": {}, "outputs": [], "execution_count": None}
        )
        cells.insert(at, cell)
        own.append(cell)

    offsets: list[float] = []
    t = rng.uniform(0, max_gap)
    kinds: dict[str, int] = {}
    i = start
    first = True
    while t < seconds:
        before = len(captured)
        if first:
            new_cell(len(cells))
            kind = "cell+"
            first = False
        else:
            op = script[i % len(script)]
            i += 1
            kind = op.kind
            current = own[-1]
            text = current["source"]
            if kind == "key" or kind == "paste":
                text.insert(len(text), op.text)
            elif kind == "del":
                if len(text) == 0:
                    text.insert(0, "x")
                    kind = "key"
                else:
                    del text[len(text) - 1 : len(text)]
            elif kind == "cell+":
                new_cell(index_of(current["id"]) + 1)
            elif kind == "cell-":
                if len(own) > 1:
                    del cells[index_of(current["id"])]
                    own.pop()
                else:
                    text.insert(len(text), "\n")
                    kind = "key"
            elif kind == "exec":
                with doc.transaction():
                    outputs = current["outputs"]
                    outputs.clear()
                    outputs.extend(nb._create_youtputs(op.outputs))
                    current["execution_count"] = op.count
        if len(captured) == before:
            continue  # the edit changed nothing (no update): not an edit
        if len(captured) > before + 1:
            captured[before:] = [merge_updates(*captured[before:])]
        kinds[kind] = kinds.get(kind, 0) + 1
        offsets.append(t)
        t += rng.uniform(min_gap, max_gap)
    doc.unobserve(sub)

    base = user_state(client_id, name)
    frames: list[bytes] = []
    keys: dict[tuple[int, int, bool], int] = {}
    clock = 0
    last_cursor = -cursor_every
    for n, update in enumerate(captured):
        key = update_key(update)
        assert key is not None and key not in keys, key
        keys[key] = n
        if key[0] == client_id:
            clock = max(clock, key[1])
        frame = ws_frame(update_frame(update))
        if offsets[n] - last_cursor >= cursor_every:
            last_cursor = offsets[n]
            awareness = awareness_frame(client_id, n + 2, cursor_state(base, client_id, clock))
            frame += ws_frame(awareness)
        frames.append(frame)
    return Planned(client_id, offsets, frames, captured, keys, kinds)


# --------------------------------------------------------------------------- the worker


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, int(round(q / 100 * (len(ordered) - 1)))))
    return ordered[k]


def emit(tag: str, payload: Any) -> None:
    """One line to the orchestrator (stdout is the control channel)."""
    sys.stdout.write(f"@@{tag} {json.dumps(payload)}\n")
    sys.stdout.flush()


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


async def read_line() -> str:
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


class SelfCheck:
    """The load client's own stalls while it types: its event loop waking late (a sampler
    every 10 ms) and its full garbage collections. A frame the client reads late is timed
    late, so these tell a late delivery that is the client's from one that is the server's."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.late: list[tuple[float, float]] = []  # (second of the window, ms) over 20 ms
        self.full_gcs: list[tuple[float, float]] = []  # (second of the window, ms)
        self._gc_started = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        gc.callbacks.append(self._on_gc)
        self._task = asyncio.ensure_future(self._sample())

    def stop(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        if self._task is not None:
            self._task.cancel()

    async def _sample(self) -> None:
        while True:
            due = time.monotonic() + 0.01
            await asyncio.sleep(0.01)
            late = time.monotonic() - due
            if late > 0.02:
                self.late.append((round(due - self.t0, 2), round(1000 * late, 1)))

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            ms = 1000 * (time.perf_counter() - self._gc_started)
            self.full_gcs.append((round(time.monotonic() - self.t0, 2), round(ms, 1)))


async def run_worker(spec: dict[str, Any]) -> int:
    """Connect every client, plan, wait for "go", type for ``seconds``, drain, verify."""
    from jupyter_ydoc import YNotebook
    from pycrdt import Doc, merge_updates

    host, port, token = spec["host"], spec["port"], spec["token"]
    base_url = f"http://{host}:{port}"
    script = script_from_json(json.loads(Path(spec["script"]).read_text()))
    rng = random.Random(spec["seed"])
    seconds = float(spec["seconds"])
    rooms: list[dict[str, Any]] = []
    setup_started = time.monotonic()
    for r, path in enumerate(spec["rooms"]):
        clients = []
        for c in range(spec["clients"]):
            session = put_session(base_url, token, path)
            client = await connect(host, port, room_target(session, token), f"{path}#{c}")
            clients.append(client)
        rooms.append({"path": path, "clients": clients, "fileId": session["fileId"]})
    for room in rooms:
        for client in room["clients"]:
            await asyncio.wait_for(client.synced, 120)
    setup_seconds = time.monotonic() - setup_started

    # plan every client's edits on its own copy of the synced document
    plans: list[list[Planned]] = []
    for r, room in enumerate(rooms):
        room_plans = []
        for c, client in enumerate(room["clients"]):
            assert client.step2 is not None
            plan = plan_client(
                client.step2,
                script,
                rng.randrange(len(script)),
                seconds,
                rng,
                f"u{r}-{c}",
                cursor_every=float(spec.get("cursor_every", 0.0)),
            )
            room_plans.append(plan)
            client.write(ws_frame(awareness_frame(plan.client_id, 1, user_state(plan.client_id, f"u{r}-{c}"))))
        plans.append(room_plans)
    emit("ready", {"setup_seconds": setup_seconds, "edits": sum(len(p.offsets) for rp in plans for p in rp)})
    if (await read_line()).strip() != "go":
        return 2

    # ------------------------------------------------------------------ the window
    schedule: list[tuple[float, int, int, int]] = []
    for r, room_plans in enumerate(plans):
        for c, plan in enumerate(room_plans):
            for n, offset in enumerate(plan.offsets):
                schedule.append((offset, r, c, n))
    schedule.sort()
    sent_at: list[list[list[float]]] = [[[0.0] * len(p.offsets) for p in rp] for rp in plans]
    lags: list[float] = []
    cpu0 = cpu_seconds()
    t0 = time.monotonic() + 0.05
    self_check = SelfCheck(t0)
    self_check.start()
    for offset, r, c, n in schedule:
        due = t0 + offset
        now = time.monotonic()
        if due > now:
            await asyncio.sleep(due - now)
            now = time.monotonic()
        client = rooms[r]["clients"][c]
        plan = plans[r][c]
        client.write(plan.frames[n])
        client.own_updates.append(plan.updates[n])
        sent_at[r][c][n] = now
        lags.append(now - due)
    t_end_send = time.monotonic()
    cpu_window = cpu_seconds() - cpu0
    self_check.stop()
    emit("typed", {"window": t_end_send - t0})  # (the orchestrator reads the loop's pauses so far)

    # Attribution, incremental: each poll reads only the frames that arrived since the last
    # one. An update holds the edits whose Yjs ids it carries (``EditIndex``); the server
    # relays a client's edits in order, so an edit also means every earlier edit of that
    # sender has arrived.
    latencies: list[float] = []
    slow: list[tuple[float, float, int]] = []  # (sent at, latency ms, room) over 50 ms
    negative = 0
    unattributed = 0
    covers = [EditIndex(room_plans) for room_plans in plans]
    seen = [[0] * len(room["clients"]) for room in rooms]
    pointer = [[[0] * len(room["clients"]) for _ in room["clients"]] for room in rooms]

    def attribute() -> bool:
        """Account for new arrivals; True once every client has every other's edits."""
        nonlocal negative, unattributed
        done = True
        for r, room in enumerate(rooms):
            for c, client in enumerate(room["clients"]):
                mine = pointer[r][c]
                for arrival, frame in client.updates[seen[r][c] :]:
                    # A server may relay several edits merged into one update: every edit
                    # the update holds counts, not only the one its first struct names.
                    last = covers[r].last_edits(_payload(frame))  # type: ignore[arg-type]
                    if not last:
                        unattributed += 1
                        continue
                    for sender, n in last.items():
                        if sender == c:
                            continue  # our own echo
                        times = sent_at[r][sender]
                        for k in range(mine[sender], n + 1):
                            latency = arrival - times[k]
                            negative += latency < 0
                            latencies.append(latency)
                            if latency > 0.05:
                                slow.append((round(times[k] - t0, 2), round(latency * 1000, 1), r))
                        mine[sender] = max(mine[sender], n + 1)
                seen[r][c] = len(client.updates)
                for c2, plan in enumerate(plans[r]):
                    if c2 != c and mine[c2] < len(plan.updates):
                        done = False
        return done

    drain_deadline = time.monotonic() + float(spec.get("drain", 15))
    # Wait for the arrivals to stop before attributing them: attribution takes the loop for
    # seconds at the biggest steps, and a frame arriving meanwhile would be timed when it
    # ends (an edit relayed 0.2 s late measured as 3 s late).
    arrived, quiet_since = -1, time.monotonic()
    while time.monotonic() < drain_deadline:
        await asyncio.sleep(0.05)
        total = sum(len(client.updates) for room in rooms for client in room["clients"])
        if total != arrived:
            arrived, quiet_since = total, time.monotonic()
        elif time.monotonic() - quiet_since >= 0.3:
            break
    while not attribute() and time.monotonic() < drain_deadline:
        await asyncio.sleep(0.1)
    t_drained = time.monotonic()
    emit("done", {"window": t_end_send - t0, "drained": t_drained - t_end_send, "client_cpu": cpu_window})
    await asyncio.sleep(0.3)  # late echoes / awareness
    attribute()
    missing = sum(
        len(plan.updates) - pointer[r][c][c2]
        for r, room in enumerate(rooms)
        for c in range(len(room["clients"]))
        for c2, plan in enumerate(plans[r])
        if c2 != c
    )
    relayed = sum(len(cl.updates) for room in rooms for cl in room["clients"])
    in_window = sum(1 for room in rooms for cl in room["clients"] for t, _ in cl.updates if t <= t_end_send)

    # ------------------------------------------------------------------ save + convergence
    saves: list[str] = []
    for r, room in enumerate(rooms):
        client = room["clients"][0]
        client.write(ws_frame(save_frame(1000 + r)))
    save_deadline = time.monotonic() + 30
    for r, room in enumerate(rooms):
        client = room["clients"][0]
        status = "no reply"
        while time.monotonic() < save_deadline:
            reply = next((x for x in client.raw if x.get("responseTo") == 1000 + r), None)
            if reply is not None:
                status = reply.get("status", "?")
                break
            await asyncio.sleep(0.05)
        saves.append(status)

    diverged = 0
    server_diverged = 0
    expected_docs = []
    for r, room in enumerate(rooms):
        base = room["clients"][0].step2
        assert base is not None
        expected_doc = Doc()
        expected_doc.apply_update(base)
        expected_doc.apply_update(merge_updates(*[u for p in plans[r] for u in p.updates]))
        expected = YNotebook(expected_doc).get()
        expected_docs.append(expected)
        for c, client in enumerate(room["clients"]):
            doc = Doc()
            assert client.step2 is not None
            doc.apply_update(client.step2)
            mine = plans[r][c].updates
            theirs = [_payload(f) for _, f in client.updates]
            if mine or theirs:
                doc.apply_update(merge_updates(*(mine + theirs)))
            if YNotebook(doc).get() != expected:
                diverged += 1
        # the server's own document, as a new client sees it
        session = put_session(base_url, token, room["path"])
        checker = await connect(host, port, room_target(session, token), f"{room['path']}#check")
        await asyncio.wait_for(checker.synced, 60)
        doc = Doc()
        assert checker.step2 is not None
        doc.apply_update(checker.step2)
        if YNotebook(doc).get() != expected:
            server_diverged += 1
        checker.close()
    out_dir = Path(spec["out"])
    for r, room in enumerate(rooms):
        (out_dir / f"expected-{r}.json").write_text(json.dumps(expected_docs[r]))
    closed_early = sum(1 for room in rooms for cl in room["clients"] if cl.closed.done())
    for room in rooms:
        for client in room["clients"]:
            client.close()
    sent = sum(len(p.updates) for rp in plans for p in rp)
    kinds: dict[str, int] = {}
    for rp in plans:
        for p in rp:
            for k, v in p.kinds.items():
                kinds[k] = kinds.get(k, 0) + v
    emit(
        "result",
        {
            "sent": sent,
            "window": t_end_send - t0,
            "relayed": relayed,
            "relayed_in_window": in_window,
            "awareness_in": sum(cl.awareness_in for room in rooms for cl in room["clients"]),
            "frames_in": sum(cl.frames_in for room in rooms for cl in room["clients"]),
            "latency_n": len(latencies),
            "p50_ms": _ms(percentile(latencies, 50)),
            "p99_ms": _ms(percentile(latencies, 99)),
            "max_ms": _ms(max(latencies) if latencies else None),
            "missing": missing,
            "negative": negative,
            "unattributed": unattributed,
            "send_lag_p99_ms": _ms(percentile(lags, 99)),
            # deliveries 38–48 ms late: the signature of Nagle's algorithm meeting delayed ACKs
            "band_40ms_pct": round(100 * sum(0.038 <= x < 0.048 for x in latencies) / max(1, len(latencies)), 2),
            "slow_seconds": _slow_seconds(slow),
            "client_cpu": cpu_window,
            "diverged_clients": diverged,
            "server_diverged_rooms": server_diverged,
            "saves": saves,
            "closed_early": closed_early,
            "close_codes": sorted({str(cl.close_code) for room in rooms for cl in room["clients"] if cl.closed.done()}),
            "file_ids": [room["fileId"] for room in rooms],
            "kinds": kinds,
            # the client's own stalls while it typed (SelfCheck): [second, ms] each
            "client_late_wakeups": self_check.late,
            "client_full_gcs": self_check.full_gcs,
        },
    )
    await asyncio.sleep(0.1)
    return 0


def _slow_seconds(slow: list[tuple[float, float, int]]) -> list[list[Any]]:
    """When the slow deliveries (> 50 ms) happened: per second of the window, how many,
    the worst, and in which rooms (the ten worst seconds)."""
    seconds: dict[int, list[Any]] = {}
    for sent, ms, room in slow:
        entry = seconds.setdefault(int(sent), [int(sent), 0, 0.0, set()])
        entry[1] += 1
        entry[2] = max(entry[2], ms)
        entry[3].add(room)
    worst = sorted(seconds.values(), key=lambda e: -e[1])[:10]
    return [[s, n, ms, sorted(rooms)] for s, n, ms, rooms in sorted(worst)]


def _payload(frame: bytes) -> bytes:
    length, pos = read_var_uint(frame, 2)
    return frame[pos : pos + length]


def _payloads(client: WSClient) -> list[tuple[float, bytes]]:
    return [(t, _payload(f)) for t, f in client.updates]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


# --------------------------------------------------------------------------- open time


async def time_open(host: str, port: int, token: str, path: str) -> dict[str, float]:
    """PUT the session, connect, wait for step 2: seconds for each part."""
    loop = asyncio.get_running_loop()
    t0 = time.monotonic()
    session = await loop.run_in_executor(None, put_session, f"http://{host}:{port}", token, path)
    t1 = time.monotonic()
    client = await connect(host, port, room_target(session, token), path)
    await asyncio.wait_for(client.synced, 600)
    t2 = client.step2_at
    client.close()
    return {"session": t1 - t0, "connect_to_step2": t2 - t1, "total": t2 - t0}


async def send_history(host: str, port: int, token: str, path: str, updates: list[bytes], batch: int = 500) -> float:
    """Send ``updates`` (made on the synced document, see ``history_updates``) as one client,
    ``batch`` frames then a step 1 whose step 2 says they are all in; seconds taken."""
    session = put_session(f"http://{host}:{port}", token, path)
    client = await connect(host, port, room_target(session, token), path)
    await asyncio.wait_for(client.synced, 120)
    started = time.monotonic()
    for i in range(0, len(updates), batch):
        for update in updates[i : i + batch]:
            client.write(ws_frame(update_frame(update)))
        client.synced = asyncio.get_running_loop().create_future()
        client.write(ws_frame(STEP1_EMPTY))
        await asyncio.wait_for(client.synced, 600)
    took = time.monotonic() - started
    client.write(ws_frame(save_frame(7)))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(x.get("responseTo") == 7 for x in client.raw):
        await asyncio.sleep(0.05)
    client.close()
    return took


def main() -> int:
    spec = json.loads(sys.argv[1])
    if spec.get("sched_idle"):
        # Set before any thread starts, so every thread of this process inherits it.
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    return asyncio.run(run_worker(spec))


if __name__ == "__main__":
    sys.exit(main())
