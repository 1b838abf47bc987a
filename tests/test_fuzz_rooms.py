"""Fuzz a live room: no client can break it.

For each store, one real ``jupyter server`` serves a small notebook. Two honest clients
(alice, bob) type unique markers into their own cells and into a shared one; a hostile
writer (mallory) sends frames from ``_fuzz_frames.FrameGenerator`` as fast as the server
answers, reconnecting (new session PUT + websocket) whenever the server closes it; a
hostile reader (eve, read-only) does the same, and also sends valid destructive updates.

Invariants (each failure names what broke and the frames sent last before it):

1. every frame the honest clients receive parses, applies to their document without raising
   (BaseException included: pycrdt panics), and leaves a document that encodes and replays
   into a fresh one with equal content;
2. the honest clients converge, and every marker they typed is still in its cell;
3. the store, opened directly with the server stopped, replays to the same content;
4. nothing died: the server log has no "Task exception was never retrieved", no traceback
   through jupyter_ystore, no "room manager is not running", no exception escaping a
   handler or into the event loop; the server process lives and stops on SIGTERM; the
   hostile clients always get an answer (1002/1009 closes are answers, 1011 is not); the
   honest clients are never disconnected; at the end a fresh client opens the room and
   sees what alice sees, and a second notebook opens;
5. ``GET /api/status`` answers 200 every second throughout.

Scope (why the frames are filtered): a writer may legitimately delete or overwrite
anything. This test checks that *garbage* cannot lose an edit or break the room, so the
writer's frames that yrs would read as a legitimate edit of the notebook's own content
(deleting others' items, overwriting notebook keys, inserting into the cells array, typing
honest characters into a cell) are held back, decided statically by
``FrameGenerator.holds_back`` and counted. Hostile strings never use the characters of the
honest markers, so a marker is "kept" when it appears intact in the cell's source once every
other character is removed. The read-only client's frames are not filtered: none of its
updates may be applied.

Settings (environment):

- ``JUPYTER_YSTORE_FUZZ_SECONDS`` (default 60): fuzzing time for all stores together,
  split evenly; setup and the final checks add about 10 s a store.
- ``JUPYTER_YSTORE_FUZZ_SEED`` (default 20261128): fixes the sequence of frame kinds and
  their random parts; the ids a frame points at come from the live document, which
  depends on timing, so two runs send similar, not identical, bytes.
- ``JUPYTER_YSTORE_FUZZ_KINDS``: comma-separated prefixes of frame kinds to send (e.g.
  ``structured/json-item,known/issue``), or to leave out with a leading ``-`` (e.g.
  ``-structured/deep-any``), to reproduce one class of failure; default all.
- ``JUPYTER_YSTORE_FUZZ_REPORT``: a file to which each store's summary is appended (JSON lines).

The honest clients and this process never apply a hostile frame themselves except what the
server relays to them (a 100,000-deep value crashes pycrdt with a stack overflow).
"""

from __future__ import annotations

import json
import os
import random
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import anyio
import nbformat
import pytest
from jupyter_server.auth import Authorizer, IdentityProvider, User
from jupyter_ydoc import YNotebook
from pycrdt import Array, Awareness, Doc, Map

from _fuzz_frames import HONEST_CHARS, Frame, FrameGenerator, Lib0Reader
from _server_helpers import JupyterServerProcess, YClient, yclient
from jupyter_ystore.server import protocol as sync
from jupyter_ystore.core.keys import store_key

SEED = int(os.environ.get("JUPYTER_YSTORE_FUZZ_SEED", "20261128"))
TOTAL_SECONDS = float(os.environ.get("JUPYTER_YSTORE_FUZZ_SECONDS", "60"))
KINDS = tuple(k.strip() for k in os.environ.get("JUPYTER_YSTORE_FUZZ_KINDS", "").split(",") if k.strip())
REPORT_FILE = os.environ.get("JUPYTER_YSTORE_FUZZ_REPORT")
STORES = ("sqlite", "file", "postgres", "memory")
SECONDS_PER_STORE = TOTAL_SECONDS / len(STORES)
HANG = 30.0  # s: only bounds a hang (never a timing assertion)

pytestmark = pytest.mark.timeout(int(SECONDS_PER_STORE) + 300)

# ---------------------------------------------------------------------------- users
# Loaded by name in the server process (``tests`` is put on its PYTHONPATH).

ADMIN_TOKEN = "fuzz-admin-token"
TOKENS = {"alice-token": "alice", "bob-token": "bob", "mallory-token": "mallory", "eve-token": "eve"}
WRITERS = {"admin", "alice", "bob", "mallory"}


class FuzzUsers(IdentityProvider):
    """One user per token; the server's own token is ``admin``."""

    def get_user(self, handler: Any) -> Any:
        header = handler.request.headers.get("Authorization", "")
        token = header[len("token ") :] if header.startswith("token ") else ""
        token = token or handler.get_argument("token", "")
        name = TOKENS.get(token) or ("admin" if token and token == self.token else None)
        handler._token_authenticated = name is not None  # no xsrf check for token requests
        return User(name) if name else None


class FuzzAuthorizer(Authorizer):
    """Everyone reads; only ``WRITERS`` write (eve is read-only)."""

    def is_authorized(self, handler: Any, user: User, action: str, resource: str) -> bool:
        return user.username in WRITERS or action == "read"


# ---------------------------------------------------------------------------- the notebook

ALICE_ID, BOB_ID = 1_000_003, 2_000_029  # fixed client ids: reproducible documents
CELLS = {  # cell id -> initial source, without the markers' characters
    # long enough that the issue's frames (origin 0:34) point into this text, as they did
    # in the notebook they came from (the summary counts how many of them were sent)
    "cell-alice": "x = y  # the first cell, type here",
    "cell-bob": "z = x  # the second one",
    "cell-both": "# everyone types here",
}
TYPING = {"alice": ("cell-alice", "cell-both"), "bob": ("cell-bob", "cell-both")}


def write_fuzz_notebook(path: Path, cells: dict[str, str]) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source, id=cell_id) for cell_id, source in cells.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(nbformat.writes(nb), encoding="utf-8")


def find_source(doc: Doc, cell_id: str) -> Any:
    """The shared source text of the cell with ``cell_id`` (None if there is none)."""
    for cell in doc.get("cells", type=Array):
        if isinstance(cell, Map) and cell.get("id") == cell_id:
            return cell.get("source")
    return None


def honest_text(doc: Doc, cell_id: str) -> str:
    """A cell's source with every character the hostile client could have typed removed."""
    source = find_source(doc, cell_id)
    return "".join(c for c in str(source) if c in HONEST_CHARS) if source is not None else ""


def crashed(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure to report: any Exception, or a pycrdt panic
    (``pyo3_runtime.PanicException`` derives from BaseException); cancellation and
    pytest's own exceptions are not, and propagate."""
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


def state_vector(doc: Doc) -> dict[int, int]:
    """``{client: clock}`` (pycrdt returns it encoded)."""
    reader = Lib0Reader(doc.get_state())
    return {reader.uint(): reader.uint() for _ in range(reader.uint())}


def snapshot(doc: Doc) -> Any:
    """What a document holds, robustly (a hostile edit may break ``YNotebook.get``)."""
    try:
        return YNotebook(doc).get()
    except BaseException as exc:  # noqa: BLE001  (compared, and reported if it differs)
        if not crashed(exc):
            raise
        roots = {"cells": Array, "meta": Map}
        try:
            return {name: doc.get(name, type=kind).to_py() for name, kind in roots.items()} | {"error": repr(exc)}
        except BaseException as inner:  # noqa: BLE001
            if not crashed(inner):
                raise
            return {"unreadable": repr(inner)}


# ---------------------------------------------------------------------------- bookkeeping


@dataclass
class Recorder:
    """Violations by invariant (first of each kind), and the frames sent last."""

    ring: deque = field(default_factory=lambda: deque(maxlen=64))
    by_sender: dict[str, deque] = field(default_factory=dict)
    violations: dict[int, list[str]] = field(default_factory=dict)
    _seen: set = field(default_factory=set)

    def sent_frame(self, sender: str, frame: Frame) -> None:
        entry = (time.monotonic(), sender, frame)
        self.ring.append(entry)
        self.by_sender.setdefault(sender, deque(maxlen=16)).append(entry)

    def last_frames(self, count: int = 3, sender: str | None = None) -> str:
        ring = list(self.ring if sender is None else self.by_sender.get(sender, ()))
        if not ring:
            return "(no hostile frame sent yet)"
        now = time.monotonic()
        lines = [
            f"    {now - at:6.2f}s ago {who} {frame.kind} [{frame.detail}] {frame.short()}"
            for at, who, frame in ring[-count:]
        ]
        return f"last frames {sender or 'the hostile clients'} sent (newest last):\n" + "\n".join(lines)

    def violation(self, invariant: int, key: str, message: str, *, frames: bool = True, sender: str | None = None) -> None:
        """Record a failure of ``invariant`` (once per ``key``) with the frames sent last
        (by ``sender`` only, when the failure is about one hostile connection)."""
        if (invariant, key) in self._seen:
            return
        self._seen.add((invariant, key))
        text = message + ("\n  " + self.last_frames(sender=sender) if frames else "")
        self.violations.setdefault(invariant, []).append(text)


@dataclass
class Stats:
    """Frame counts by kind, for the summary."""

    sent: Counter = field(default_factory=Counter)
    answered: Counter = field(default_factory=Counter)
    held_back: Counter = field(default_factory=Counter)
    closed: Counter = field(default_factory=Counter)  # (kind, code, reason) -> count
    connections: Counter = field(default_factory=Counter)


class Peer(YClient):
    """A ``YClient`` with a fixed client id that survives whatever the server relays and,
    when ``checks`` is on, checks it (invariant 1)."""

    def __init__(
        self,
        name: str,
        client_id: int,
        recorder: Recorder,
        *,
        checks: bool = True,
        on_update: Callable[[bytes], None] | None = None,
    ) -> None:
        super().__init__("notebook", username=name)
        self.ydoc.unobserve(self._sub)
        self.ydoc = Doc(client_id=client_id)
        self.document = YNotebook(self.ydoc)
        self.awareness = Awareness(self.ydoc)
        self._sub = self.ydoc.observe(self._on_local_change)
        self.recorder = recorder
        self.checks = checks
        self.on_update = on_update
        self.step2 = 0

    def _bad(self, key: str, message: str) -> None:
        if self.checks:
            self.recorder.violation(1, f"{self.username}:{key}", f"{self.username}: {message}")

    async def _handle(self, frame: Any) -> None:
        try:
            message = sync.parse_message(frame)
        except BaseException as exc:  # noqa: BLE001
            if not crashed(exc):
                raise
            shown = frame.hex() if isinstance(frame, bytes) else repr(frame)
            self._bad("parse", f"received a frame that does not parse ({exc}): {shown[:300]}")
            return
        if isinstance(message, sync.SyncStep1):
            try:
                await self.send(sync.sync_step2(self.ydoc, message.state_vector))
            except BaseException as exc:  # noqa: BLE001
                if not crashed(exc):
                    raise
                self._bad("step1", f"cannot answer the server's step 1: {type(exc).__name__}: {exc}")
        elif isinstance(message, (sync.SyncStep2, sync.SyncUpdate)):
            self._apply(message.update)
            self.updates_received += 1
            if isinstance(message, sync.SyncStep2):
                self.step2 += 1
                self.step2_received += 1  # what YClient.acknowledged() waits for
                self.synced.set()
        elif isinstance(message, sync.AwarenessMessage):
            self.awareness_frames += 1
            try:
                self.awareness.apply_awareness_update(message.update, origin="remote")
            except BaseException as exc:  # noqa: BLE001
                if not crashed(exc):
                    raise
                self._bad("awareness", f"relayed awareness does not apply ({type(exc).__name__}: {exc}): {bytes(frame).hex()[:300]}")
        elif isinstance(message, sync.RawMessage):
            try:
                self.raw.append(json.loads(message.text))
            except ValueError as exc:
                self._bad("raw", f"a RAW message from the server is not JSON ({exc}): {message.text[:200]!r}")

    def _apply(self, update: bytes) -> None:
        self._applying = True
        try:
            self.ydoc.apply_update(update)
        except BaseException as exc:  # noqa: BLE001
            if not crashed(exc):
                raise
            self._bad("apply", f"a relayed update does not apply ({type(exc).__name__}: {exc}): {update.hex()[:300]}")
            return
        finally:
            self._applying = False
        if self.on_update is not None:
            self.on_update(update)
        if not self.checks:
            return
        try:
            fresh = Doc()
            fresh.apply_update(self.ydoc.get_update())
            same = snapshot(fresh) == snapshot(self.ydoc) and state_vector(fresh) == state_vector(self.ydoc)
        except BaseException as exc:  # noqa: BLE001
            if not crashed(exc):
                raise
            self._bad("replay", f"after a relayed update the document does not encode and replay "
                      f"({type(exc).__name__}: {exc}); the update: {update.hex()[:300]}")
            return
        if not same:
            self._bad("replay-differs", f"after a relayed update the document replays to different content; the update: {update.hex()[:300]}")


# ---------------------------------------------------------------------------- the server


def http(server: JupyterServerProcess, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
    """A request as the user of ``token`` (``JupyterServerProcess.request`` is admin only)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(server.url + path, data=data, method=method, headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(request, timeout=HANG) as response:
            text = response.read()
            return response.status, json.loads(text) if text else None
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()[:300]


async def open_session(server: JupyterServerProcess, path: str, token: str) -> dict:
    status, reply = await anyio.to_thread.run_sync(
        lambda: http(server, "PUT", "/api/collaboration/session/" + urllib.parse.quote(path), token,
                     {"format": "json", "type": "notebook"})
    )
    if status not in (200, 201):
        raise RuntimeError(f"session PUT for {path} answered {status}: {reply!r}")
    return reply


def room_url(server: JupyterServerProcess, session: dict, token: str) -> str:
    room = f"{session['format']}:{session['type']}:{session['fileId']}"
    query = urllib.parse.urlencode({"sessionId": session["sessionId"], "token": token})
    return f"{server.ws_url}/api/collaboration/room/{room}?{query}"


def server_config(store: str, home: Path, pg: dict[str, Any] | None) -> dict[str, Any]:
    classes = {
        "sqlite": "jupyter_ystore.SQLiteYStore",
        "file": "jupyter_ystore.FileYStore",
        "postgres": "jupyter_ystore.PostgresYStore",
        "memory": "jupyter_ystore.MemoryYStore",
    }
    config: dict[str, Any] = {
        "ServerApp": {
            "identity_provider_class": f"{__name__}.FuzzUsers",
            "authorizer_class": f"{__name__}.FuzzAuthorizer",
        },
        "YStoreExtension": {
            "ystore_class": classes[store],
            "document_save_delay": 0.5,  # autosaves while fuzzing
            "document_cleanup_delay": 1.0,
            "file_poll_interval": 0.5,
        },
        "SQLiteYStore": {"db_path": str(home / "ystore.db")},
        "FileYStore": {"root_dir": str(home / "ystore-files")},
    }
    if pg is not None:
        config["PostgresYStore"] = dict(pg)
    return config


async def replay_store(store: str, home: Path, pg: dict[str, Any] | None, file_id: str) -> Doc:
    """The stored history, replayed into a fresh document by the store class itself."""
    key = store_key("notebook", file_id)
    if store == "sqlite":
        from jupyter_ystore import SQLiteYStore

        ystore: Any = SQLiteYStore(path=key, db_path=str(home / "ystore.db"))
    elif store == "file":
        from jupyter_ystore import FileYStore

        ystore = FileYStore(path=key, root_dir=str(home / "ystore-files"))
    else:
        from jupyter_ystore import PostgresYStore

        ystore = PostgresYStore(key, **(pg or {}))
    doc = Doc()
    async with ystore:
        await ystore.apply_updates(doc)
    return doc


LOG_FAILURES = (
    ("Task exception was never retrieved", "a task died unobserved"),
    ("room manager is not running", "the room manager died"),
    ("Uncaught exception", "an exception escaped a handler"),
    ("Exception in callback", "an exception escaped into the event loop"),
)


def log_violations(log: str, recorder: Recorder) -> None:
    for needle, what in LOG_FAILURES:
        at = log.find(needle)
        if at >= 0:
            recorder.violation(4, f"log:{needle}", f"{what}: the server log has {needle!r} "
                               f"({log.count(needle)} times); first:\n{excerpt(log, at)}", frames=False)
    for match in re.finditer(r"Traceback \(most recent call last\):", log):
        block = log[match.start() : match.start() + 6000].split("\n[", 1)[0]
        if "jupyter_ystore" in block:
            recorder.violation(4, "log:traceback", "a traceback through jupyter_ystore in the server log "
                               f"({log.count('Traceback (most recent call last)')} tracebacks in all); first:\n"
                               + excerpt(log, match.start(), before=600), frames=False)
            break


def excerpt(log: str, at: int, before: int = 400, after: int = 2500) -> str:
    start = log.rfind("\n", 0, max(0, at - before)) + 1
    text = log[start : at + after]
    return "    | " + "\n    | ".join(text.splitlines()[:60])


def log_summary(log: str) -> list[str]:
    """The server's warning and error lines, counted by their text without ids and numbers."""
    counts: Counter = Counter()
    for line in log.splitlines():
        if line.startswith(("[W ", "[E ", "[C ")):
            message = line.split("] ", 1)[-1]
            counts[line[:3] + re.sub(r"[0-9a-f]{8,}|\d+", "#", message)[:200]] += 1
    return [f"{n:5d}x {text}" for text, n in counts.most_common(25)]


# ---------------------------------------------------------------------------- the fuzz


@dataclass
class Run:
    server: JupyterServerProcess
    recorder: Recorder
    stats: Stats
    deadline: float
    typed: dict[str, list[str]]
    dead: anyio.Event = field(default_factory=anyio.Event)
    stop_honest: anyio.Event = field(default_factory=anyio.Event)
    fuzz_seconds: float = 0.0

    def alive(self) -> bool:
        proc = self.server.proc
        if proc is not None and proc.poll() is not None and not self.dead.is_set():
            self.recorder.violation(4, "died", f"the server process died (exit code {proc.returncode})")
            self.dead.set()
        return not self.dead.is_set()


async def first_of(*events: anyio.Event, timeout: float) -> bool:
    """Wait until one of ``events`` is set; False on timeout."""
    with anyio.move_on_after(timeout):
        while not any(event.is_set() for event in events):
            await anyio.sleep(0.01)
        return True
    return False


async def poll_status(run: Run, stop: anyio.Event) -> None:
    """Invariant 5: ``GET /api/status`` answers 200, every second."""
    while not stop.is_set() and run.alive():
        started = time.monotonic()
        try:
            status, _ = await anyio.to_thread.run_sync(lambda: http(run.server, "GET", "/api/status", ADMIN_TOKEN))
        except Exception as exc:  # noqa: BLE001
            status = f"{type(exc).__name__}: {exc}"
        if status != 200 and run.alive():
            run.recorder.violation(5, "status", f"GET /api/status answered {status!r}")
        await anyio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))


async def keep_connected(run: Run, peer: Peer, token: str, path: str) -> None:
    """An honest client stays in the room until told to leave; a disconnection is a failure
    (it reconnects, as the front end would, to see what else breaks)."""
    while not run.stop_honest.is_set() and run.alive():
        try:
            session = await open_session(run.server, path, token)
            peer.closed = anyio.Event()
            async with yclient(room_url(run.server, session, token), client=peer):
                if not await first_of(peer.synced, peer.closed, timeout=HANG):
                    run.recorder.violation(4, f"{peer.username}:sync", f"{peer.username} was not synced within {HANG}s")
                await first_of(run.stop_honest, peer.closed, run.dead, timeout=1e9)
            if peer.closed.is_set() and not run.stop_honest.is_set():
                run.recorder.violation(4, f"{peer.username}:closed", f"honest client {peer.username} was disconnected "
                                       f"(code {peer.close_code}, reason {peer.close_reason!r})")
        except Exception as exc:  # noqa: BLE001
            if run.alive():
                run.recorder.violation(4, f"{peer.username}:connect", f"honest client {peer.username} cannot connect: {type(exc).__name__}: {exc}")
            await anyio.sleep(0.5)


async def type_markers(run: Run, peer: Peer, rng: random.Random) -> None:
    """Type unique markers, one every 0.1-0.4 s, at the start or (mostly) the end of a cell.

    Only there: the index of any other place depends on what the hostile client put in the
    text (an embedded value counts in the index but not in ``str(text)``), and a marker
    typed at a miscounted index would cut another one in two.
    """
    prefix = peer.username[0]
    count = 0
    while time.monotonic() < run.deadline and run.alive():
        await anyio.sleep(rng.uniform(0.1, 0.4))
        if peer.ws is None or not peer.synced.is_set():
            continue
        cell_id = rng.choice(TYPING[peer.username])
        source = find_source(peer.ydoc, cell_id)
        if source is None:
            run.recorder.violation(2, f"{peer.username}:cell", f"{peer.username} finds no cell {cell_id}")
            continue
        marker = f"<{prefix}{count}>"
        try:
            source.insert(0 if rng.random() < 0.2 else len(source), marker)
        except BaseException as exc:  # noqa: BLE001
            if not crashed(exc):
                raise
            run.recorder.violation(1, f"{peer.username}:type", f"{peer.username} cannot type ({type(exc).__name__}: {exc})")
            continue
        run.typed[cell_id].append(marker)
        count += 1


async def hostile(run: Run, name: str, token: str, gen: FrameGenerator, writer: bool) -> None:
    """Send generated frames, one at a time, each followed by a sync step 1 whose step 2
    says the server is done with it; reconnect whenever the server closes the socket."""
    recorder, stats = run.recorder, run.stats
    connection_rng = random.Random(f"{SEED}:{name}")  # gen.rng draws only frames
    while time.monotonic() < run.deadline and run.alive():
        peer = Peer(name, connection_rng.randrange(1, 2**31), recorder, checks=False, on_update=gen.capture)
        try:
            session = await open_session(run.server, "fuzz.ipynb", token)
            async with yclient(room_url(run.server, session, token), client=peer):
                stats.connections[name] += 1
                if not await first_of(peer.synced, peer.closed, timeout=HANG):
                    recorder.violation(4, f"{name}:sync", f"a new client ({name}) was not synced within {HANG}s")
                    continue
                if not peer.synced.is_set():
                    recorder.violation(4, f"{name}:refused:{peer.close_code}", f"the room refused a new client ({name}): "
                                       f"code {peer.close_code}, reason {peer.close_reason!r}")
                    await anyio.sleep(0.2)
                    continue
                gen.set_view(peer.ydoc.get_update())
                await send_frames(run, name, peer, gen, writer, connection_rng)
        except Exception as exc:  # noqa: BLE001
            if run.alive() and time.monotonic() < run.deadline:
                recorder.violation(4, f"{name}:connect:{type(exc).__name__}", f"{name} cannot connect: {type(exc).__name__}: {exc}")
                await anyio.sleep(0.2)


async def send_frames(run: Run, name: str, peer: Peer, gen: FrameGenerator, writer: bool, rng: random.Random) -> None:
    """One connection's share of the fuzz; returns when the server closed it (or hung)."""
    recorder, stats = run.recorder, run.stats
    since_view = 0
    while time.monotonic() < run.deadline and run.alive():
        frame = gen.next_frame()
        if writer and gen.holds_back(frame):
            stats.held_back[frame.kind] += 1
            continue
        repeat = 2 if frame.family == "known" and rng.random() < 0.5 else 1  # "sent twice in a row"
        try:
            for _ in range(repeat):
                recorder.sent_frame(name, frame)
                stats.sent[frame.kind] += 1
                assert peer.ws is not None
                await peer.ws.send(frame.data)
            before = peer.step2
            await peer.ws.send(sync.sync_step1(peer.ydoc))
        except Exception:  # noqa: BLE001  (closed by the server meanwhile)
            await first_of(peer.closed, timeout=HANG)
        else:
            if not await _wait(lambda: peer.step2 > before or peer.closed.is_set(), HANG):
                recorder.violation(4, f"{name}:hang", f"the server did not answer {name}'s sync step 1 within {HANG}s", sender=name)
                return
        if peer.closed.is_set():
            reason = re.sub(r"\d+", "#", peer.close_reason or "")[:90]
            stats.closed[(frame.kind, peer.close_code, reason)] += 1
            if peer.close_code == 1011:
                recorder.violation(4, f"1011:{name}:{reason}:{frame.kind if name == 'mallory' else ''}",
                                   f"{name} was closed with 1011 ({peer.close_reason!r}) after a {frame.kind} frame",
                                   sender=name if name == "mallory" else None)
            return
        stats.answered[frame.kind] += 1
        since_view += 1
        if since_view >= 10:
            gen.set_view(peer.ydoc.get_update())
            since_view = 0


async def _wait(predicate: Callable[[], Any], timeout: float) -> bool:
    """Poll ``predicate`` (every ms: it sits on the hot path of the fuzz); False on timeout."""
    with anyio.move_on_after(timeout):
        while not predicate():
            await anyio.sleep(0.001)
        return True
    return False


async def final_checks(run: Run, alice: Peer, bob: Peer) -> dict | None:
    """Invariants 2 and 4 at the end, with the server still up; returns alice's content."""
    recorder = run.recorder
    for peer in (alice, bob):
        if not await _wait(lambda p=peer: p.ws is not None and p.synced.is_set(), HANG):
            recorder.violation(2, f"{peer.username}:final", f"{peer.username} is not connected at the end", frames=False)
            return None
    converged = False
    deadline = time.monotonic() + HANG
    while time.monotonic() < deadline:
        try:
            await alice.acknowledged(HANG)
            await bob.acknowledged(HANG)
        except TimeoutError:
            break
        if state_vector(alice.ydoc) == state_vector(bob.ydoc) and snapshot(alice.ydoc) == snapshot(bob.ydoc):
            converged = True
            break
        await anyio.sleep(0.2)
    if not converged:
        recorder.violation(2, "converge", "alice and bob did not converge:\n"
                           f"    alice {state_vector(alice.ydoc)}\n    bob   {state_vector(bob.ydoc)}")
    for peer in (alice, bob):
        for cell_id, markers in run.typed.items():
            text = honest_text(peer.ydoc, cell_id)
            missing = [m for m in markers if m not in text]
            if missing:
                recorder.violation(2, f"{peer.username}:lost:{cell_id}", f"{len(missing)} of {len(markers)} markers typed "
                                   f"into {cell_id} are not in {peer.username}'s document: {missing[:10]}; "
                                   f"the cell's honest text: {text[:300]!r}")
    content = snapshot(alice.ydoc)
    if "error" in content or "unreadable" in content:
        recorder.violation(2, "schema", f"alice's notebook no longer reads as a notebook: {content.get('error') or content}")
    try:
        status = await alice.save(HANG)
        if status != "success":
            recorder.violation(3, "save", f"alice's save request answered {status!r}")
    except TimeoutError:
        recorder.violation(3, "save", f"alice's save request got no answer within {HANG}s")
    # a fresh client opens the room and sees the same; a second notebook opens
    for path, expected in (("fuzz.ipynb", content), ("other.ipynb", None)):
        try:
            session = await open_session(run.server, path, ADMIN_TOKEN)
            fresh = Peer(f"a fresh client of {path}", random.Random(path).randrange(1, 2**31), recorder)
            async with yclient(room_url(run.server, session, ADMIN_TOKEN), client=fresh):
                if not await first_of(fresh.synced, fresh.closed, timeout=HANG) or not fresh.synced.is_set():
                    recorder.violation(4, f"fresh:{path}", f"a fresh client cannot open {path}: "
                                       f"code {fresh.close_code}, reason {fresh.close_reason!r}")
                    continue
                seen = snapshot(fresh.ydoc)
                if expected is not None and seen != expected:
                    await alice.acknowledged(HANG)
                    if snapshot(fresh.ydoc) != snapshot(alice.ydoc):
                        recorder.violation(2, "fresh-differs", "a fresh client sees a different notebook than alice: "
                                           + difference(fresh.ydoc, snapshot(alice.ydoc), run.typed))
                elif expected is None and [c["source"] for c in seen.get("cells", [])] != ["1 + 1"]:
                    recorder.violation(4, "other", f"the second notebook opens with {seen!r}", frames=False)
        except Exception as exc:  # noqa: BLE001
            recorder.violation(4, f"fresh:{path}", f"a fresh client cannot open {path}: {type(exc).__name__}: {exc}")
    return content


async def fuzz(run: Run, store: str) -> dict | None:
    """The whole scenario; returns alice's final content (None if unknown)."""
    rng = random.Random(f"{SEED}:{store}")
    alice = Peer("alice", ALICE_ID, run.recorder)
    bob = Peer("bob", BOB_ID, run.recorder)
    honest = {"protected": {0, ALICE_ID, BOB_ID}, "typists": (ALICE_ID, BOB_ID), "awareness_ids": (ALICE_ID, BOB_ID)}
    writer_gen = FrameGenerator(rng.randrange(2**32), **honest, kinds=KINDS)
    reader_gen = FrameGenerator(rng.randrange(2**32), **honest, read_only=True, kinds=KINDS)
    typing_rng = random.Random(rng.randrange(2**32))
    stop_status = anyio.Event()
    content = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(poll_status, run, stop_status)
        tg.start_soon(keep_connected, run, alice, "alice-token", "fuzz.ipynb")
        tg.start_soon(keep_connected, run, bob, "bob-token", "fuzz.ipynb")
        for peer in (alice, bob):
            if not await _wait(lambda p=peer: p.synced.is_set() or not run.alive(), HANG):
                run.recorder.violation(4, "start", f"{peer.username} never synced", frames=False)
        await alice.send_awareness({"user": {"name": "alice"}})
        await bob.send_awareness({"user": {"name": "bob"}})
        started = time.monotonic()
        run.deadline = started + SECONDS_PER_STORE
        async with anyio.create_task_group() as fuzzing:
            fuzzing.start_soon(type_markers, run, alice, typing_rng)
            fuzzing.start_soon(type_markers, run, bob, random.Random(typing_rng.randrange(2**32)))
            fuzzing.start_soon(hostile, run, "mallory", "mallory-token", writer_gen, True)
            fuzzing.start_soon(hostile, run, "eve", "eve-token", reader_gen, False)
        run.fuzz_seconds = time.monotonic() - started
        if run.alive():
            content = await final_checks(run, alice, bob)
        run.stop_honest.set()
        stop_status.set()
    return content


def difference(doc: Doc, content: dict, typed: dict[str, list[str]]) -> str:
    """How ``doc`` differs from ``content`` (what the clients saw), cell by cell."""
    seen = {cell.get("id"): cell.get("source") for cell in content.get("cells", []) if isinstance(cell, dict)}
    lines = []
    for cell_id, markers in typed.items():
        text = honest_text(doc, cell_id)
        missing = [m for m in markers if m not in text]
        source = find_source(doc, cell_id)
        lines.append(f"{cell_id}: {len(missing)} of {len(markers)} markers missing; "
                     f"source {str(source)[:120]!r} (clients: {str(seen.get(cell_id))[:120]!r})")
    return "\n    " + "\n    ".join(lines)


def summary(store: str, run: Run) -> str:
    """Frames sent, answered, closed and held back; the close reasons; counts by kind."""
    stats = run.stats
    elapsed = run.fuzz_seconds
    sent = sum(stats.sent.values())
    answered = sum(stats.answered.values())
    closes = Counter()
    for (kind, code, reason), n in stats.closed.items():
        closes[(code, reason)] += n
    issue_sent = sum(n for kind, n in stats.sent.items() if kind.startswith("known/issue"))
    lines = [
        f"[{store}] seed {SEED}: {sent} hostile frames sent in {elapsed:.1f}s ({sent / max(elapsed, 1e-9):.0f}/s), "
        f"{answered} answered, {sum(stats.closed.values())} closed the socket, "
        f"{sum(stats.held_back.values())} held back (legitimate edits), connections {dict(stats.connections)}, "
        f"issue frames sent {issue_sent}, markers typed {sum(len(m) for m in run.typed.values())}",
        "  closes: " + "; ".join(f"{code} {reason!r} x{n}" for (code, reason), n in closes.most_common(12)),
        "  sent by kind: " + ", ".join(f"{k} {n}" for k, n in sorted(stats.sent.items())),
        "  held back: " + ", ".join(f"{k} {n}" for k, n in stats.held_back.most_common()),
    ]
    return "\n".join(lines)


@pytest.mark.parametrize("store", STORES)
def test_fuzz_room(store: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    pg = None
    if store == "postgres":
        from postgres_helpers import fresh_config

        pg = fresh_config(request)
    root, home = tmp_path / "root", tmp_path / "home"
    write_fuzz_notebook(root / "fuzz.ipynb", CELLS)
    write_fuzz_notebook(root / "other.ipynb", {"other-1": "1 + 1"})
    home.mkdir(parents=True)
    tests_dir = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [tests_dir, os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("RUST_BACKTRACE", "0")  # a panic's message, not 50 lines of frames
    server = JupyterServerProcess(root, home, config=server_config(store, home, pg), token=ADMIN_TOKEN)
    recorder = Recorder()
    run = Run(server, recorder, Stats(), deadline=time.monotonic(), typed={cell: [] for cell in CELLS})
    server.start()
    content = None
    file_id = None
    try:
        file_id = server.session("fuzz.ipynb")["fileId"]
        content = anyio.run(fuzz, run, store, backend="asyncio")
    finally:
        if server.proc is not None and server.proc.poll() is None:
            try:
                server.terminate(HANG)
            except Exception:  # noqa: BLE001
                recorder.violation(4, "sigterm", f"SIGTERM did not stop the server within {HANG}s", frames=False)
        server.kill()
    log = server.log()
    if server.proc is not None and server.proc.returncode not in (0, None) and not run.dead.is_set():
        recorder.violation(4, "exit", f"the server exited with {server.proc.returncode} on SIGTERM", frames=False)
    log_violations(log, recorder)
    # 3. the store, opened directly with the server stopped, replays to what the clients saw
    if store == "memory":
        pass  # nothing outlives the process; the live replay is invariant 1 and the fresh client
    elif content is not None and file_id is not None:
        try:
            replayed = anyio.run(replay_store, store, home, pg, file_id, backend="asyncio")
            if snapshot(replayed) != content:
                recorder.violation(3, "replay", f"the {store} store replays to different content than the clients saw: "
                                   + difference(replayed, content, run.typed), frames=False)
        except BaseException as exc:  # noqa: BLE001
            if not crashed(exc):
                raise
            recorder.violation(3, "replay", f"the {store} store does not replay: {type(exc).__name__}: {exc}", frames=False)
    text = summary(store, run)
    warnings = log_summary(log)
    print(text)
    print("  server warnings/errors:\n    " + "\n    ".join(warnings))
    if REPORT_FILE:
        with open(REPORT_FILE, "a", encoding="utf-8") as out:
            out.write(json.dumps({
                "store": store, "seed": SEED, "seconds": SECONDS_PER_STORE, "summary": text,
                "violations": recorder.violations, "warnings": warnings, "log": str(server.log_path),
            }) + "\n")
    if recorder.violations:
        failed = "\n".join(
            f"invariant {number}:\n  " + "\n  ".join(messages) for number, messages in sorted(recorder.violations.items())
        )
        pytest.fail(f"{text}\n{failed}\n  server log: {server.log_path}", pytrace=False)
