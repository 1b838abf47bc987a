"""Rooms: one shared document per file, its clients, its store and its file.

The one rule this module exists for: every change of a shared document goes through the
store. A single ``Doc.observe`` callback sees every change (a client's update, the server
loading the file, the ``state`` map after a save) and queues it for one writer task, which
writes queued changes in order and only then relays them to the clients, so whatever a
client receives from the server (its own echo included) is durable. ``flush()`` waits for the
writer: a save is acknowledged, and a sync step 2 answered, only once everything before it is
durable. Updates that came from the store itself (other servers' updates through ``watch()``)
are relayed but not written back.

Lifecycles are task groups: the manager's group holds one task per room; a room's group holds
its store, its writer, its saver and its file poller. Closing a room (last client gone after
``document_cleanup_delay``, or server shutdown) saves, flushes and stops the store.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

import anyio
from anyio.abc import TaskGroup, TaskStatus
from jupyter_ydoc import ydocs as YDOCS
from pycrdt import Awareness, Doc

from . import metrics, sync
from .errors import YDocNotFound
from .loaders import DocumentFile, FileGone, FileState
from .stores.base import BaseYStore
from .ydoc import merge_updates

GLOBAL_AWARENESS_ROOM = "JupyterLab:globalAwareness"


class Client(Protocol):
    """A connected peer, as rooms see it (the websocket handler in production)."""

    username: str
    can_write: bool

    def send(self, message: bytes) -> None: ...


class RoomError(Exception):
    """A room could not open. ``code`` is the websocket close code the front end knows."""

    def __init__(self, message: str, code: int = 4500):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Origin:
    """Who made a change; stored as each update's metadata."""

    kind: str  # "client" | "server" | "remote"
    user: str | None = None
    reason: str | None = None

    def metadata(self) -> bytes:
        data: dict[str, Any] = {"origin": self.kind}
        if self.user is not None:
            data["user"] = self.user
        if self.reason is not None:
            data["reason"] = self.reason
        return json.dumps(data, separators=(",", ":")).encode()


@dataclass
class _Change:
    """One change of the shared document waiting for the writer."""

    update: bytes
    origin: Origin
    relayed: bool = False


SERVER_LOAD = Origin("server", reason="load")
SERVER_FILE = Origin("server", reason="file-changed")
SERVER_SAVE = Origin("server", reason="save")
REMOTE = Origin("remote")


# ---------------------------------------------------------------------------- awareness


class AwarenessRelay:
    """Relays awareness between a room's clients and remembers whose states are whose.

    Every awareness frame is sent to every client, the sender included (the front end waits
    for its own echo). When a socket closes, the removal of its states is broadcast.
    """

    def __init__(self) -> None:
        self.awareness = Awareness(Doc())
        self.awareness.set_local_state(None)  # the server is not a peer
        self.clients: set[Any] = set()
        self._owned: dict[Any, set[int]] = {}

    def broadcast(self, message: bytes) -> None:
        for client in list(self.clients):
            client.send(message)

    def add(self, client: Any) -> None:
        self.clients.add(client)
        self._owned.setdefault(client, set())
        ids = [cid for cid, state in self.awareness.states.items() if state is not None]
        if ids:
            client.send(sync.awareness_message(self.awareness, ids))

    def handle(self, client: Any, message: sync.AwarenessMessage) -> None:
        entries = sync.check_awareness_update(message.update)
        self.awareness.apply_awareness_update(message.update, origin=client)
        owned = self._owned.setdefault(client, set())
        for client_id, _clock, state in entries:
            if state is None:
                owned.discard(client_id)
            else:
                owned.add(client_id)
        self.broadcast(message.frame)

    def query(self, client: Any) -> None:
        ids = list(self.awareness.states)
        client.send(sync.awareness_message(self.awareness, ids))

    def remove(self, client: Any) -> None:
        self.clients.discard(client)
        ids = [cid for cid in self._owned.pop(client, set()) if cid in self.awareness.states]
        if ids:
            self.awareness.remove_awareness_states(ids, origin=client)
            self.broadcast(sync.awareness_message(self.awareness, ids))


class AwarenessRoom:
    """A room without a document (``JupyterLab:globalAwareness``): awareness relay only."""

    def __init__(self, room_id: str, log: logging.Logger) -> None:
        self.room_id = room_id
        self.log = log
        self.relay = AwarenessRelay()
        self.closed = anyio.Event()
        self.closing = False

    @property
    def clients(self) -> set[Any]:
        return self.relay.clients

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await self.closed.wait()

    def join(self, client: Any) -> None:
        self.relay.add(client)

    def leave(self, client: Any) -> None:
        self.relay.remove(client)

    async def handle(self, client: Any, message: sync.Message) -> None:
        if isinstance(message, sync.AwarenessMessage):
            self.relay.handle(client, message)
        elif isinstance(message, sync.QueryAwareness):
            self.relay.query(client)
        elif isinstance(message, sync.SyncStep1):
            # y-websocket clients sync every room; answer with an empty document.
            client.send(sync.sync_step2(Doc(), message.state_vector))
        # Updates and RAW messages have nothing to act on here.

    async def close(self) -> None:
        self.closing = True
        self.closed.set()


# ---------------------------------------------------------------------------- documents


@dataclass
class RoomSettings:
    save_delay: float | None = 1.0
    cleanup_delay: float | None = 60.0
    poll_interval: float = 1.0
    store_retry_delay: float = 1.0
    #: With a store shared by several servers: how long a file change waits for the news
    #: (through the store) that another server saved or imported it; see _settled_elsewhere.
    shared_file_grace: float = 1.0


class DocumentRoom:
    """One shared document: its clients, its store, its file."""

    def __init__(
        self,
        room_id: str,
        file: DocumentFile,
        store: BaseYStore,
        settings: RoomSettings,
        log: logging.Logger,
    ) -> None:
        self.room_id = room_id
        self.file = file
        self.store = store
        self.settings = settings
        self.log = log
        self.ydoc = Doc()
        self.document = YDOCS.get(file.file_type, YDOCS["file"])(self.ydoc)
        self.relay = AwarenessRelay()
        self.closed = anyio.Event()
        self.closing = False
        self._close_requested = anyio.Event()
        self._work: TaskGroup | None = None
        # change queue → writer
        self._origin: Origin | None = None
        self._pending: list[_Change] = []
        self._queued = 0
        self._written = 0
        self._wakeup = anyio.Event()
        self._progress = anyio.Event()
        self._store_error: Exception | None = None
        self._writing_meta = b""
        # saving
        self._save_lock = anyio.Lock()
        self._save_wakeup = anyio.Event()
        self._last_change = 0.0
        self._saved_content: Any = None
        self._file_mtime: Any = None
        self._cleanup_scope: anyio.CancelScope | None = None
        self._subscription: Any = None
        self._claim = uuid.uuid4().hex  # names this room in file-import claims
        label = metrics.store_label(store)
        self._write_seconds = metrics.WRITE_SECONDS.labels(label)
        self._updates_written = metrics.UPDATES_WRITTEN.labels(label)
        if store.metadata_callback is None:  # a user's own callback keeps working
            store.metadata_callback = lambda: self._writing_meta

    @property
    def clients(self) -> set[Any]:
        return self.relay.clients

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Open the room, report it started, serve until closed, then save and stop.

        Two task groups: ``tg`` holds the store and the writer, which outlive everything
        else; ``self._work`` holds what uses them (saver, poller, live updates, save
        replies), cancelled once the final save is done and before the store stops.
        """
        failure: BaseException | None = None
        async with anyio.create_task_group() as tg:
            try:
                await tg.start(self.store.start)
                tg.start_soon(self._writer)
                await self._open()
            except Exception as exc:
                failure = exc
            if failure is None:
                work_done = anyio.Event()
                await tg.start(self._run_work, work_done)
                task_status.started()
                await self._close_requested.wait()
                await self._finish()
                if self._work is not None:
                    self._work.cancel_scope.cancel()
                await work_done.wait()
            elif self._subscription is not None:
                self.ydoc.unobserve(self._subscription)
                self._subscription = None
            with anyio.CancelScope(shield=True):
                try:
                    await self.store.stop()
                except RuntimeError:
                    pass  # the store never started
            tg.cancel_scope.cancel()
        self.closed.set()
        if failure is not None:
            raise failure

    async def _run_work(self, done: anyio.Event, *, task_status: TaskStatus[None]) -> None:
        try:
            async with anyio.create_task_group() as work:
                self._work = work
                work.start_soon(anyio.sleep_forever)  # open until cancelled, even if idle
                work.start_soon(self._saver)
                if self.settings.poll_interval:
                    work.start_soon(self._poller)
                if getattr(self.store, "supports_live_updates", False):
                    work.start_soon(self._watch_store)
                task_status.started()
        finally:
            self._work = None
            done.set()

    async def close(self) -> None:
        """Save, flush and stop; returns when the store is stopped."""
        self.closing = True
        self._close_requested.set()
        await self.closed.wait()

    async def _finish(self) -> None:
        with anyio.CancelScope(shield=True):
            try:
                with anyio.fail_after(30):
                    await self.save(reason="close")
            except Exception as exc:  # the store still holds every change
                self.log.error("Room %s: final save failed: %s", self.room_id, exc)
            try:
                with anyio.fail_after(30):
                    await self.flush()
            except Exception as exc:
                self.log.error("Room %s: final store flush failed: %s", self.room_id, exc)
            if self._subscription is not None:
                self.ydoc.unobserve(self._subscription)
                self._subscription = None

    # ------------------------------------------------------------------ opening

    async def _open(self) -> None:
        self._subscription = self.ydoc.observe(self._on_change)
        try:
            file_state = await self.file.load()
        except FileGone as exc:
            raise RoomError(str(exc), code=4404) from None
        from_store = True
        started = time.perf_counter()
        try:
            with self._changes_by(REMOTE):  # already stored: not written again
                await self.store.apply_updates(self.ydoc)
        except YDocNotFound:
            from_store = False
        else:
            metrics.LOAD_SECONDS.labels(metrics.store_label(self.store)).observe(
                time.perf_counter() - started
            )
        self._file_mtime = file_state.last_modified
        file_doc = _scratch_document(self.file.file_type, file_state.content)
        file_content = file_doc.get()
        if not from_store:
            # A fixed client id makes the loaded history the same for the same content.
            with self._changes_by(SERVER_LOAD):
                self.ydoc.apply_update(file_doc.ydoc.get_update())
                self._set_state(hash=file_state.hash, path=self.file.path)
            self._saved_content = file_content
            self.log.info("Room %s: loaded %s from disk", self.room_id, self.file.path)
        else:
            await self._reconcile(file_state, file_content)
        await self.flush()

    async def _reconcile(self, file_state: FileState, file_content: Any) -> None:
        """After loading from the store: who wins, the store or the file?"""
        content = self.document.get()
        if content == file_content:
            self._saved_content = file_content
            if self.document.hash != file_state.hash or self.document.path != self.file.path:
                with self._changes_by(SERVER_SAVE):
                    self._set_state(hash=file_state.hash, path=self.file.path)
            self.log.info("Room %s: store and %s agree", self.room_id, self.file.path)
            return
        if self.document.hash is not None and self.document.hash == file_state.hash:
            file_newer = False  # the file is as we last wrote or read it
        else:
            last = await self._last_store_timestamp()
            mtime = file_state.last_modified
            file_newer = mtime is not None and (last is None or mtime.timestamp() > last)
        if file_newer:
            self.log.warning(
                "Room %s: %s changed on disk after the last stored update; applying it as an update",
                self.room_id,
                self.file.path,
            )
            with self._changes_by(SERVER_FILE):
                self.document.set(file_state.content)
                self._set_state(hash=file_state.hash, path=self.file.path)
            self._saved_content = self.document.get()
        else:
            self.log.warning(
                "Room %s: the store holds edits newer than %s (e.g. after a crash); "
                "the file will be rewritten",
                self.room_id,
                self.file.path,
            )
            self._saved_content = file_content
            self._schedule_save()

    async def _last_store_timestamp(self) -> float | None:
        last = None
        try:
            async for _update, _meta, timestamp in self.store.read():
                last = timestamp
        except YDocNotFound:
            return None
        return last

    # ------------------------------------------------------------------ changes and the store

    class _OriginScope:
        def __init__(self, room: DocumentRoom, origin: Origin):
            self.room, self.origin = room, origin

        def __enter__(self) -> None:
            self.previous, self.room._origin = self.room._origin, self.origin

        def __exit__(self, *exc: Any) -> None:
            self.room._origin = self.previous

    def _changes_by(self, origin: Origin) -> DocumentRoom._OriginScope:
        return DocumentRoom._OriginScope(self, origin)

    def _set_state(self, **fields: Any) -> None:
        with self.ydoc.transaction():
            for key, value in fields.items():
                if value is not None and self.document.ystate.get(key) != value:
                    self.document.ystate[key] = value

    def _on_change(self, event: Any) -> None:
        update: bytes = event.update
        if update == b"\x00\x00":
            return
        origin = self._origin or Origin("server")
        if origin is REMOTE:  # durable already: relay now
            self.relay.broadcast(sync.update_message(update))
            return
        self._pending.append(_Change(update, origin))
        self._queued += 1
        self._wakeup.set()
        if origin is not SERVER_SAVE and origin is not SERVER_LOAD:
            self._schedule_save()

    async def _writer(self) -> None:
        """Write queued changes in order, consecutive changes of one origin in one write,
        then relay them: what any client receives (its own echo included) is durable.

        While the store fails, changes are relayed anyway (collaboration goes on, the error
        is logged) and their writes retried until the store takes them.
        """
        while True:
            if not self._pending:
                await self._wakeup.wait()
                self._wakeup = anyio.Event()
                continue
            origin = self._pending[0].origin
            count = 1
            while count < len(self._pending) and self._pending[count].origin == origin:
                count += 1
            batch = self._pending[:count]
            merged = merge_updates([change.update for change in batch])
            try:
                self._writing_meta = origin.metadata()
                started = time.perf_counter()
                await self.store.write(merged)
                self._write_seconds.observe(time.perf_counter() - started)
                self._updates_written.inc()
            except Exception as exc:
                if self._store_error is None or type(exc) is not type(self._store_error):
                    self.log.error(
                        "Room %s: writing to the store failed (%s); changes are kept in memory "
                        "and retried: %s",
                        self.room_id,
                        type(self.store).__name__,
                        exc,
                    )
                self._store_error = exc
                for change in self._pending:
                    self._relay(change)
                self._notify_progress()
                await anyio.sleep(self.settings.store_retry_delay)
                continue
            if self._store_error is not None:
                self.log.info("Room %s: the store accepts writes again", self.room_id)
                self._store_error = None
            if not any(change.relayed for change in batch):
                self.relay.broadcast(sync.update_message(merged))
            else:
                for change in batch:
                    self._relay(change)
            del self._pending[:count]
            self._written += count
            self._notify_progress()

    def _relay(self, change: _Change) -> None:
        if not change.relayed:
            change.relayed = True
            self.relay.broadcast(sync.update_message(change.update))

    def _notify_progress(self) -> None:
        self._progress.set()
        self._progress = anyio.Event()

    async def flush(self) -> None:
        """Return once every change made so far is durable in the store."""
        target = self._queued
        while self._written < target:
            if self._store_error is not None:
                raise self._store_error
            await self._progress.wait()

    async def apply_change(self, update: bytes, origin: Origin) -> None:
        """Apply a change made through the server on someone's behalf (a restored version,
        a merged fork): stored with ``origin`` as its metadata, relayed and saved like a
        client's edit. Returns once it is durable."""
        with self._changes_by(origin):
            self.ydoc.apply_update(update)
        await self.flush()

    async def _watch_store(self) -> None:
        """Apply updates other servers committed to the store (they are stored already)."""
        failures = 0
        while True:
            try:
                async for update in self.store.watch():
                    failures = 0
                    try:
                        with self._changes_by(REMOTE):
                            self.ydoc.apply_update(update)
                    except Exception as exc:
                        self.log.error("Room %s: a live update did not apply: %s", self.room_id, exc)
                return
            except NotImplementedError:
                return
            except Exception as exc:
                failures += 1
                if failures == 1:
                    self.log.error("Room %s: live updates stopped, retrying: %s", self.room_id, exc)
                await anyio.sleep(self.settings.store_retry_delay)

    # ------------------------------------------------------------------ clients

    def join(self, client: Any) -> None:
        if self._cleanup_scope is not None:
            self._cleanup_scope.cancel()
            self._cleanup_scope = None
        self.relay.add(client)
        client.send(sync.sync_step1(self.ydoc))

    def leave(self, client: Any) -> None:
        self.relay.remove(client)
        if not self.clients and not self.closing and self._work is not None:
            if self.settings.cleanup_delay is not None:
                self._work.start_soon(self._cleanup_later)

    async def _cleanup_later(self) -> None:
        with anyio.CancelScope() as scope:
            self._cleanup_scope = scope
            await anyio.sleep(self.settings.cleanup_delay or 0)
            if not self.clients and not self.closing:
                self.log.info("Room %s: no client left, closing", self.room_id)
                self.closing = True
                self._close_requested.set()

    async def handle(self, client: Any, message: sync.Message) -> None:
        """Act on one parsed message of ``client``. ``ProtocolError`` is the client's fault."""
        if isinstance(message, sync.SyncStep1):
            # A step 2 answers only once what the client sent before is durable.
            try:
                with anyio.move_on_after(10):
                    await self.flush()
            except Exception:
                pass  # the writer logged it; syncing must not depend on the store
            client.send(sync.sync_step2(self.ydoc, message.state_vector))
        elif isinstance(message, (sync.SyncStep2, sync.SyncUpdate)):
            if message.update == b"\x00\x00":
                return  # an empty update (a peer with nothing new)
            if not client.can_write:
                raise PermissionError("read-only access: your changes are not accepted")
            sync.check_update(message.update)
            try:
                with self._changes_by(Origin("client", user=client.username)):
                    self.ydoc.apply_update(message.update)
            except Exception as exc:
                self.log.warning("Room %s: update from %s conflicts: %s", self.room_id, client.username, exc)
                client.send(sync.raw_json_message({"type": "conflict"}))
        elif isinstance(message, sync.AwarenessMessage):
            self.relay.handle(client, message)
        elif isinstance(message, sync.QueryAwareness):
            self.relay.query(client)
        elif isinstance(message, sync.SaveRequest):
            if self._work is None:  # closing: the final save is on its way
                client.send(sync.save_reply(message.request_id, "skipped"))
            else:
                self._work.start_soon(self._answer_save, client, message.request_id)

    async def _answer_save(self, client: Any, request_id: int) -> None:
        if not client.can_write:
            client.send(sync.save_reply(request_id, "failed"))
            return
        try:
            await self.save(reason="request")
            status = "success"
        except Exception as exc:
            self.log.error("Room %s: save requested by %s failed: %s", self.room_id, client.username, exc)
            status = "failed"
        client.send(sync.save_reply(request_id, status))

    # ------------------------------------------------------------------ saving

    def _schedule_save(self) -> None:
        self._last_change = time.monotonic()
        self._save_wakeup.set()

    async def _saver(self) -> None:
        """Debounced autosave: save once no change came for ``save_delay`` seconds."""
        delay = self.settings.save_delay
        if delay is None:
            return
        while True:
            await self._save_wakeup.wait()
            self._save_wakeup = anyio.Event()
            while (wait := self._last_change + delay - time.monotonic()) > 0:
                await anyio.sleep(wait)
            try:
                await self.save(reason="auto")
            except Exception as exc:
                self.log.error("Room %s: autosave failed: %s", self.room_id, exc)

    async def save(self, *, reason: str = "auto") -> bool:
        """Flush the store, then write the document to its file if it changed.

        Returns whether the file was written. Raises if the store or the file failed.
        """
        async with self._save_lock:
            await self.flush()
            try:
                disk = await self.file.stat()
            except FileGone as exc:
                raise RoomError(f"cannot save: {exc}", code=4404) from None
            if self._file_mtime is not None and disk.last_modified != self._file_mtime:
                if disk.hash is None or disk.hash != self.document.hash:
                    if not await self._settled_elsewhere(disk):
                        await self._apply_file_change()
                        return False
                    await self._adopt_saved_file()  # unchanged since: nothing to write
            content = self.document.get()
            written = False
            if content != self._saved_content or disk.hash != self.document.hash:
                self.log.info("Room %s: saving %s (%s)", self.room_id, self.file.path, reason)
                state = await self.file.save(content)
                self._file_mtime = state.last_modified
                self._saved_content = content
                written = True
                hash_ = state.hash
            else:
                hash_ = disk.hash
            with self._changes_by(SERVER_SAVE):
                self._set_state(hash=hash_, dirty=False)
            await self.flush()
            return written

    async def _apply_file_change(self) -> None:
        """The file changed on disk behind our back: it goes in as a normal update."""
        state = await self.file.load()
        self._file_mtime = state.last_modified
        new = _scratch_document(self.file.file_type, state.content).get()
        if new != self.document.get():
            self.log.warning("Room %s: %s changed on disk; applying the change", self.room_id, self.file.path)
            with self._changes_by(SERVER_FILE):
                self.document.set(state.content)
        with self._changes_by(SERVER_SAVE):
            self._set_state(hash=state.hash, dirty=False)
        self._saved_content = self.document.get()
        await self.flush()

    async def _settled_elsewhere(self, disk: FileState) -> bool:
        """Whether a file change that lacks our document's hash is in the document already.

        With a store shared by several servers (``supports_live_updates``) it usually is:
        another server saved the document (its new hash comes through the store a moment
        after the file), or imported an out-of-band edit. Taking either for a new edit
        would apply the file over newer edits (reverting them) or import it twice
        (duplicating it). So wait for the hash; if it does not come, claim the import in
        the shared state: every server sees the same winning claim, and only its owner
        imports (the others import only if the winner never does).
        """
        if not getattr(self.store, "supports_live_updates", False) or disk.hash is None:
            return False
        grace = self.settings.shared_file_grace
        if await self._hash_arrives(disk.hash, grace):
            return True
        claim = f"{disk.hash}:{self._claim}"
        with self._changes_by(SERVER_SAVE):
            self._set_state(file_import=claim)
        await self.flush()
        if await self._hash_arrives(disk.hash, grace):
            return True
        if self.document.ystate.get("file_import") == claim:
            return False  # our claim won: we import
        return await self._hash_arrives(disk.hash, grace)

    async def _hash_arrives(self, hash_: str, timeout: float) -> bool:
        with anyio.move_on_after(timeout):
            while self.document.hash != hash_:
                await anyio.sleep(0.02)
        return self.document.hash == hash_

    async def _adopt_saved_file(self) -> None:
        """Another server wrote the file: remember what it holds, so that we write it only
        if our document differs (not the same content again)."""
        state = await self.file.load()
        self._file_mtime = state.last_modified
        self._saved_content = _scratch_document(self.file.file_type, state.content).get()
        if self.document.get() != self._saved_content:
            self._schedule_save()  # it saved before our latest changes reached it

    async def _poller(self) -> None:
        """Notice out-of-band file changes and renames every ``poll_interval`` seconds."""
        failures = 0
        while True:
            await anyio.sleep(self.settings.poll_interval)
            try:
                async with self._save_lock:
                    disk = await self.file.stat()
                    path = self.file.path
                    if self.document.path != path:
                        with self._changes_by(SERVER_SAVE):
                            self._set_state(path=path)
                    if disk.last_modified != self._file_mtime and disk.hash != self.document.hash:
                        if await self._settled_elsewhere(disk):
                            await self._adopt_saved_file()
                        else:
                            await self._apply_file_change()
                    elif disk.last_modified != self._file_mtime:
                        self._file_mtime = disk.last_modified
                failures = 0
            except Exception as exc:
                failures += 1
                if failures == 1:
                    self.log.warning("Room %s: cannot poll its file: %s", self.room_id, exc)


def _scratch_document(file_type: str, content: Any) -> Any:
    """``content`` in a fresh document with client id 0 (deterministic history)."""
    doc = YDOCS.get(file_type, YDOCS["file"])(Doc(client_id=0))
    doc.set(content)
    return doc


# ---------------------------------------------------------------------------- manager


def _room_kind(room: Any) -> str:
    if isinstance(room, DocumentRoom):
        return "document"
    if isinstance(room, AwarenessRoom):
        return "awareness"
    return "fork"


@dataclass
class RoomManager:
    """Opens each room once, closes it when unused, and closes them all on shutdown."""

    make_store: Callable[[str, str], BaseYStore]  # (file_type, file_id) -> store
    make_file: Callable[[str, str, str], DocumentFile]  # (format, type, file_id) -> file
    settings: RoomSettings
    log: logging.Logger
    rooms: dict[str, Any] = field(default_factory=dict)
    _locks: dict[str, anyio.Lock] = field(default_factory=dict)
    _tg: Optional[TaskGroup] = None
    _started: Optional[anyio.Event] = None
    _stop: Optional[anyio.Event] = None
    _stopped: Optional[anyio.Event] = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._stop = anyio.Event()
        self._stopped = anyio.Event()
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                task_status.started()
                await self._stop.wait()
                tg.cancel_scope.cancel()
        finally:
            self._tg = None
            self._stopped.set()

    async def get_room(self, room_id: str) -> Any:
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

    async def _get_room_locked(self, room_id: str) -> Any:
        assert self._tg is not None
        room = self.rooms.get(room_id)
        if room is not None and room.closing:
            await room.closed.wait()
            room = None
        if room is not None:
            return room
        room = self._create(room_id)
        try:
            await self._tg.start(self._serve, room)
        except RoomError:
            raise
        except Exception as exc:
            self.log.error("Room %s failed to open: %s", room_id, exc, exc_info=exc)
            raise RoomError(f"{type(exc).__name__}: {exc}", code=4500) from exc
        self.rooms[room_id] = room
        return room

    def _create(self, room_id: str) -> Any:
        if room_id == GLOBAL_AWARENESS_ROOM:
            return AwarenessRoom(room_id, self.log)
        parts = room_id.split(":", 2)
        if len(parts) != 3 or not all(parts):
            raise RoomError(f"unknown room {room_id!r}: expected format:type:fileId", code=4400)
        file_format, file_type, file_id = parts
        if file_format not in ("json", "text", "base64"):
            raise RoomError(f"unknown file format {file_format!r}", code=4400)
        if file_type not in YDOCS:
            raise RoomError(f"unknown document type {file_type!r}", code=4400)
        file = self.make_file(file_format, file_type, file_id)
        try:
            file.path  # noqa: B018  (an unknown file id never reaches the store)
        except FileGone as exc:
            raise RoomError(f"unknown room {room_id!r}: {exc}", code=4404) from None
        try:
            store = self.make_store(file_type, file_id)
        except ValueError as exc:
            raise RoomError(f"room {room_id!r} has no valid store name: {exc}", code=4400) from None
        return DocumentRoom(room_id, file, store, self.settings, self.log)

    async def _serve(self, room: Any, *, task_status: TaskStatus[None]) -> None:
        gauge = metrics.OPEN_ROOMS.labels(_room_kind(room))
        gauge.inc()
        try:
            await room.run(task_status=task_status)
        finally:
            gauge.dec()
            if self.rooms.get(room.room_id) is room:
                del self.rooms[room.room_id]
            if isinstance(room, DocumentRoom):
                metrics.request_bytes_refresh()

    async def add_room(self, room: Any) -> None:
        """Serve a room made elsewhere (a fork) under its id, until it closes."""
        if self._tg is None:
            raise RoomError("the room manager is not running", code=4500)
        if room.room_id in self.rooms:
            raise RoomError(f"room {room.room_id!r} exists already", code=4500)
        await self._tg.start(self._serve, room)
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
