"""Rooms: one shared document per file, its clients, its store and its file.

The rules this module exists for:

- Every change of a shared document goes through the store. One ``Doc.observe`` callback
  sees every change (a client's update, the server loading or merging the file, the
  ``state`` map after a save) and queues it in the room's ``WritePipeline``, which stores it
  and only then relays it (``room_writer``). Updates that came from the store itself (other
  servers' updates through ``watch()``) are relayed but not written back.
- Nothing from outside reaches the document unchecked (``update_guard``): an update that does
  not fit the document is refused and its sender disconnected; one that damages the document
  anyway resets the room, which reopens from the store.
- Neither the store nor the file simply wins. The room keeps the content it last saved to or
  loaded from the file (the *base*, stored with the document as an attribute, so it survives
  restarts); when the file changes on disk, the change from the base to the file is merged
  into the document as minimal edits (``merge``), at start-up too.
- A stored history the room cannot trust (missing dependencies, undecodable records, empty
  while the file is not) is set aside (``aside``), never trusted and never deleted.
- The history has an identity (``history_id``, a store attribute), which is what the session
  id a tab holds names: a tab reconnects to any server that holds that history.
- One room's failure stays in that room.

Lifecycles are task groups: the manager's group holds one task per room; a room's group holds
its store, its writer, its saver and its file poller. Closing a room (last client gone after
``document_cleanup_delay``, however the room was opened, or server shutdown) saves, flushes
and stops the store.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

import anyio
from anyio.abc import TaskGroup, TaskStatus
from jupyter_ydoc import ydocs as YDOCS
from pycrdt import Doc

from jupyter_ystore.server import metrics
from jupyter_ystore.server import protocol as sync
from jupyter_ystore.server.rooms.aside import set_aside
from jupyter_ystore.server.awareness import AwarenessRelay
from jupyter_ystore.errors import YDocNotFound, YStoreCorruptError
from jupyter_ystore.server.rooms.files import DocumentFile, FileGone, FileState
from jupyter_ystore.core.content import file_document
from jupyter_ystore.core.merge import MergeResult, merge_into
from jupyter_ystore.server.rooms.writer import Origin, WritePipeline
from jupyter_ystore.server.rooms.spill import Spill
from jupyter_ystore.stores.base import BaseYStore
from jupyter_ystore.core.item_index import DOCUMENT_ROOTS
from jupyter_ystore.core.update_guard import BadUpdate, DocumentDamaged, DocumentGuard, describe
from jupyter_ystore.core.ydoc import CRDTError, crdt_errors, is_panic

__all__ = [
    "GLOBAL_AWARENESS_ROOM",
    "AwarenessRelay",
    "AwarenessRoom",
    "BadUpdate",
    "DocumentRoom",
    "Origin",
    "RoomError",
    "RoomManager",
    "RoomSettings",
]

GLOBAL_AWARENESS_ROOM = "JupyterLab:globalAwareness"

#: The one format each document type is opened in (the front end's ``format:type`` pairs).
#: Any other pair would open the same file and store key as a second, separate document.
DOCUMENT_FORMATS = {"notebook": "json", "file": "text", "unicode": "text", "blob": "base64"}

#: Store attributes a room keeps beside the history.
HISTORY_ID = "history_id"
BASE = "base"


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


SERVER_LOAD = Origin("server", reason="load")
SERVER_FILE = Origin("server", reason="file-changed")
SERVER_SAVE = Origin("server", reason="save")
REMOTE = Origin("remote")


def check_room_format(file_format: str, file_type: str) -> None:
    """Raise ``ValueError`` unless ``format:type`` is how that type of document is opened."""
    expected = DOCUMENT_FORMATS.get(file_type)
    if expected is None:
        raise ValueError(f"unknown document type {file_type!r}")
    if file_format != expected:
        raise ValueError(f"a {file_type} is opened as {expected!r}, not {file_format!r}")


# ---------------------------------------------------------------------------- awareness


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
    #: Seconds before a failed save of the file is tried again (doubling up to 60).
    save_retry_delay: float = 2.0
    #: Longest a save or a sync answer waits for the store (it never waits for a failing one).
    store_wait: float = 10.0


def encode_base(content: Any) -> bytes:
    """The base content as a store attribute: compressed JSON (bytes for blobs)."""
    if isinstance(content, (bytes, bytearray)):
        return b"B" + zlib.compress(bytes(content), 6)
    return b"J" + zlib.compress(json.dumps(content, separators=(",", ":")).encode(), 6)


def decode_base(data: bytes | None) -> Any:
    """The inverse of ``encode_base``; None for no (or an unreadable) base."""
    if not data:
        return None
    try:
        raw = zlib.decompress(data[1:])
        return raw if data[:1] == b"B" else json.loads(raw)
    except (zlib.error, ValueError):
        return None


class DocumentRoom:
    """One shared document: its clients, its store, its file."""

    def __init__(
        self,
        room_id: str,
        file: DocumentFile,
        store: BaseYStore,
        settings: RoomSettings,
        log: logging.Logger,
        *,
        spill: Spill | None = None,
    ) -> None:
        self.room_id = room_id
        self.file = file
        self.store = store
        self.settings = settings
        self.log = log
        self.spill = spill
        self.ydoc = Doc()
        self.document = YDOCS.get(file.file_type, YDOCS["file"])(self.ydoc)
        self.guard = DocumentGuard(self.ydoc, DOCUMENT_ROOTS.get(file.file_type, DOCUMENT_ROOTS["file"]))
        self.relay = AwarenessRelay()
        self.writer = WritePipeline(
            room_id,
            store,
            self._relay_update,
            log,
            spill=spill,
            retry_delay=settings.store_retry_delay,
        )
        #: Identity of the stored history (what session ids name); set once open.
        self.history_id: str | None = None
        self.closed = anyio.Event()
        self.closing = False
        self._close_requested = anyio.Event()
        self._fault: str | None = None  # why the room resets: its document is not trusted
        self._work: TaskGroup | None = None
        self._origin: Origin | None = None
        self._changed_by_people = False
        # saving
        self._save_lock = anyio.Lock()
        self._save_wakeup = anyio.Event()
        self._last_change = 0.0
        self._base: Any = None  # the content last saved to or loaded from the file
        self._file_mtime: Any = None
        self._save_failure: str | None = None
        self._cleanup_scope: anyio.CancelScope | None = None
        self._subscription: Any = None
        self._claim = uuid.uuid4().hex  # names this room in file-import claims

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
                tg.start_soon(self.writer.run)
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
                if not self.clients:  # opened by a session request, a timeline, a fork...
                    self._schedule_cleanup()
                task_status.started()
        except Exception as exc:  # a bug in one of them: the room closes, the server goes on
            self.log.error("Room %s: %s; closing the room", self.room_id, exc, exc_info=exc)
            self.closing = True
            self._close_requested.set()
        finally:
            self._work = None
            done.set()

    async def close(self) -> None:
        """Save, flush and stop; returns when the store is stopped."""
        self.closing = True
        self._close_requested.set()
        await self.closed.wait()

    def reset(self, reason: str) -> None:
        """The document cannot be trusted any more (a bad update got through the checks):
        close the room without saving it; its clients reconnect to a room reopened from
        the store, which holds nothing of the bad update."""
        if self._fault is None:
            self._fault = reason
            self.log.error(
                "Room %s: %s; the room closes without saving and reopens from the store",
                self.room_id,
                reason,
            )
        self.closing = True
        self._close_requested.set()

    async def _finish(self) -> None:
        with anyio.CancelScope(shield=True):
            if self._fault is None:
                try:
                    with anyio.fail_after(30):
                        await self.save(reason="close")
                except Exception as exc:  # the store still holds every change
                    self.log.error("Room %s: final save failed: %s", self.room_id, exc)
            try:
                with anyio.fail_after(30):
                    await self.writer.flush()
            except Exception as exc:
                self.log.error("Room %s: final store flush failed: %s", self.room_id, exc)
            await self.writer.close()
            if self._subscription is not None:
                self.ydoc.unobserve(self._subscription)
                self._subscription = None
            if self._fault is not None:
                for client in list(self.clients):
                    close = getattr(client, "close", None)
                    if close is not None:
                        close(1011, "the document was reset; reconnecting")

    # ------------------------------------------------------------------ opening

    async def _open(self) -> None:
        self._subscription = self.ydoc.observe(self._on_change)
        try:
            file_state = await self.file.load()
        except FileGone as exc:
            raise RoomError(str(exc), code=4404) from None
        await self._replay_spill()
        file_content = file_document(self.file.file_type, file_state.content).get()
        started = time.perf_counter()
        trusted = await self._load_from_store(file_content)
        attributes = await self._attributes()
        self._file_mtime = file_state.last_modified
        if not trusted:
            # A fixed client id makes the loaded history the same for the same content.
            file_doc = file_document(self.file.file_type, file_state.content)
            with self._changes_by(SERVER_LOAD):
                self.ydoc.apply_update(file_doc.ydoc.get_update())
                self._set_state(hash=file_state.hash, path=self.file.path)
            self._base = file_content
            self.history_id = uuid.uuid4().hex
            await self._store_attributes({HISTORY_ID: self.history_id.encode(), BASE: encode_base(file_content)})
            self.log.info("Room %s: loaded %s from disk", self.room_id, self.file.path)
        else:
            metrics.LOAD_SECONDS.labels(metrics.store_label(self.store)).observe(
                time.perf_counter() - started
            )
            stored_id = attributes.get(HISTORY_ID)
            self.history_id = stored_id.decode("ascii", "replace") if stored_id else None
            if self.history_id is None:  # a history written before histories had an id
                self.history_id = uuid.uuid4().hex
                await self._store_attributes({HISTORY_ID: self.history_id.encode()})
            await self._reconcile(file_state, file_content, decode_base(attributes.get(BASE)))
        await self.writer.flush()

    async def _replay_spill(self) -> None:
        """Changes spilled while the store failed (the room closed, or the server died, before
        it recovered) go into the store before the history is read."""
        if self.spill is None:
            return
        count = await self.spill.replay(self.store.path, self.store, self.writer._set_metadata)
        if count:
            self.log.warning(
                "Room %s: wrote %d change(s) spilled during a store outage back to the store",
                self.room_id,
                count,
            )

    async def _load_from_store(self, file_content: Any) -> bool:
        """Apply the stored history; whether it can be trusted. One that cannot is set aside
        (see ``aside``) and the document starts empty, to be loaded from the file."""
        try:
            with self._changes_by(REMOTE):  # already stored: not written again
                await self.store.apply_updates(self.ydoc)
        except YDocNotFound:
            return False
        except (YStoreCorruptError, CRDTError) as exc:
            problem = f"it does not load ({exc})"
        else:
            problem = self.store.load_problem
            if problem is None and _is_empty(self.document.get()) and not _is_empty(file_content):
                problem = "it holds an empty document while the file is not empty"
            if problem is None:
                return True
        try:
            moved = await set_aside(self.store)
        except Exception as exc:
            self.log.error(
                "Room %s: the stored history of %s cannot be trusted (%s) and could not be set "
                "aside (%s)",
                self.room_id,
                self.file.path,
                problem,
                exc,
            )
            raise RoomError(f"the stored history cannot be trusted: {problem}") from exc
        self.log.warning(
            "Room %s: the stored history of %s cannot be trusted: %s. It was set aside as %r "
            "(%d updates%s; see `jupyter ystore info %s`), and the document is loaded from the "
            "file",
            self.room_id,
            self.file.path,
            problem,
            moved.key,
            moved.copied,
            f", {moved.skipped} undecodable left out" if moved.skipped else "",
            moved.key,
        )
        self._new_document()
        return False

    def _new_document(self) -> None:
        """Start again from an empty document (the loaded one is not trusted)."""
        if self._subscription is not None:
            self.ydoc.unobserve(self._subscription)
        self.ydoc = Doc()
        self.document = YDOCS.get(self.file.file_type, YDOCS["file"])(self.ydoc)
        self.guard = DocumentGuard(self.ydoc, self.guard.roots)
        self._subscription = self.ydoc.observe(self._on_change)

    async def _attributes(self) -> dict[str, bytes]:
        try:
            return await self.store.get_attributes()
        except NotImplementedError:  # a store class of a user's own, without attributes
            return {}

    async def _store_attributes(self, values: dict[str, bytes | None]) -> None:
        try:
            await self.store.set_attributes(values)
        except NotImplementedError:
            pass

    async def _reconcile(self, file_state: FileState, file_content: Any, base: Any) -> None:
        """After loading from the store, bring in what changed in the file since the last
        save: the change from the base to the file, merged (never simply replaced)."""
        content = self.document.get()
        if _comparable(content) == _comparable(file_content):
            self._adopt_base(file_content, stored=base)
            if self.document.hash != file_state.hash or self.document.path != self.file.path:
                with self._changes_by(SERVER_SAVE):
                    self._set_state(hash=file_state.hash, path=self.file.path)
            self.log.info("Room %s: store and %s agree", self.room_id, self.file.path)
            return
        unchanged = self.document.hash == file_state.hash or (
            base is not None and _comparable(file_content) == _comparable(base)
        )
        if unchanged:
            self.log.warning(
                "Room %s: the store holds edits newer than %s (e.g. after a crash); "
                "the file will be rewritten",
                self.room_id,
                self.file.path,
            )
            self._adopt_base(file_content, stored=base)
            self._schedule_save()
            return
        await self._merge_file(file_state, file_content, base, when="since the last save")

    async def _merge_file(self, state: FileState, file_content: Any, base: Any, *, when: str) -> None:
        """Merge the file's change since ``base`` into the document (one update)."""
        with self._changes_by(SERVER_FILE):
            try:
                result = merge_into(self.document, base, state.content)
            except Exception as exc:  # a file the merge cannot read: the file wins outright
                self.log.error("Room %s: merging %s failed (%s); taking the file as it is", self.room_id, self.file.path, exc)
                self.document.set(state.content)
                result = MergeResult(changed=True)
            self._set_state(hash=state.hash, path=self.file.path)
        self._log_merge(result, when, with_base=base is not None)
        self._adopt_base(file_content)
        if self.document.get() != file_content:
            self._schedule_save()  # live edits kept: the file must get them too
        else:
            with self._changes_by(SERVER_SAVE):
                self._set_state(dirty=False)

    def _log_merge(self, result: MergeResult, when: str, *, with_base: bool) -> None:
        how = "merged into the open document" if with_base else "applied (no earlier save to merge from)"
        self.log.warning("Room %s: %s changed on disk %s; %s", self.room_id, self.file.path, when, how)
        for conflict in result.conflicts:
            self.log.warning(
                "Room %s: %s and an edit since the last save changed the same text%s; the file's "
                "version was kept: %s",
                self.room_id,
                self.file.path,
                f" (cell {conflict.cell_id})" if conflict.cell_id else "",
                conflict.description,
            )

    def _adopt_base(self, content: Any, *, stored: Any = None) -> None:
        """``content`` is what the file holds now; remember it (in the store too)."""
        self._base = content
        if stored is None or stored != content:
            self._pending_base = content
            self._save_wakeup.set()  # the saver stores it (off the open path)

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
        self.guard.note_change(update)
        origin = self._origin or Origin("server")
        if origin is REMOTE:  # durable already: relay now
            self._relay_update(update)
            return
        self.writer.queue(update, origin)
        if origin is not SERVER_SAVE and origin is not SERVER_LOAD:
            self._schedule_save()

    def _relay_update(self, update: bytes) -> None:
        self.relay.broadcast(sync.update_message(update))

    async def flush(self) -> None:
        """Return once every change made so far is durable in the store (or spilled)."""
        await self.writer.flush()

    async def apply_change(self, update: bytes, origin: Origin) -> None:
        """Apply a change made through the server on someone's behalf (a restored version,
        a merged fork): stored with ``origin`` as its metadata, relayed and saved like a
        client's edit. Returns once it is durable."""
        with self._changes_by(origin), crdt_errors():
            self.ydoc.apply_update(update)
        self._changed_by_people = True
        await self.writer.flush()

    async def receive_update(self, client: Any, update: bytes) -> None:
        """A client's update: checked against the document, applied, stored, relayed.
        ``BadUpdate`` when refused (nothing of it applied, stored or relayed)."""
        if self._fault is not None:
            raise BadUpdate("the document is being reset; reconnect")
        mark = self.writer.queued
        try:
            with self._changes_by(Origin("client", user=client.username)):
                await self.guard.apply(update)
        except DocumentDamaged as exc:
            self.writer.drop_since(mark)  # never stored, never relayed
            self.reset(f"an update from {client.username} ({describe(update)}) {exc}")
            raise
        if self.writer.queued > mark:
            self._changed_by_people = True

    async def _watch_store(self) -> None:
        """Apply updates other servers committed to the store (they are stored already)."""
        failures = 0
        while True:
            try:
                async for update in self.store.watch():
                    failures = 0
                    try:
                        with self._changes_by(REMOTE), crdt_errors():
                            self.ydoc.apply_update(update)
                        self._changed_by_people = True
                    except CRDTError as exc:
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
        if not self.clients and not self.closing:
            self._schedule_cleanup()

    def _schedule_cleanup(self) -> None:
        if self._work is not None and self.settings.cleanup_delay is not None:
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
        """Act on one parsed message of ``client``. ``ProtocolError`` and ``BadUpdate`` are
        the client's fault (the caller disconnects it)."""
        if isinstance(message, sync.SyncStep1):
            # A step 2 answers once what the client sent before is durable (never waiting
            # for a failing store: collaboration goes on during an outage).
            await self.writer.settle(self.settings.store_wait)
            client.send(sync.sync_step2(self.ydoc, message.state_vector))
        elif isinstance(message, (sync.SyncStep2, sync.SyncUpdate)):
            if message.update == b"\x00\x00":
                return  # an empty update (a peer with nothing new)
            if not client.can_write:
                raise PermissionError("read-only access: your changes are not accepted")
            await self.receive_update(client, message.update)
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
            self._save_failed(exc, f"requested by {client.username}")
            status = "failed"
        client.send(sync.save_reply(request_id, status))

    # ------------------------------------------------------------------ saving

    def _schedule_save(self) -> None:
        self._last_change = time.monotonic()
        self._save_wakeup.set()

    async def _saver(self) -> None:
        """Debounced autosave: save once no change came for ``save_delay`` seconds; a failed
        save is retried (every ``save_retry_delay`` s, doubling up to a minute)."""
        delay = self.settings.save_delay
        retry = self.settings.save_retry_delay
        while True:
            await self._save_wakeup.wait()
            self._save_wakeup = anyio.Event()
            await self._store_pending_base()
            if delay is None and self._save_failure is None:
                continue
            while (wait := self._last_change + (delay or 0) - time.monotonic()) > 0:
                await anyio.sleep(wait)
            if self._base is not None and self.document.get() == self._base and self._save_failure is None:
                continue  # nothing new since the last save (e.g. only the state map changed)
            try:
                await self.save(reason="auto")
            except Exception as exc:
                self._save_failed(exc, "autosave")
                await anyio.sleep(retry)
                retry = min(60.0, retry * 2)
                self._save_wakeup.set()
            else:
                retry = self.settings.save_retry_delay

    def _save_failed(self, exc: Exception, what: str) -> None:
        """Log a failing save once (not at every retry); the document stays dirty."""
        reason = f"{type(exc).__name__}: {exc}"
        if self._save_failure != reason:
            self.log.error(
                "Room %s: cannot save %s (%s): %s; edits are kept in the store, the tab shows "
                "unsaved changes, and saving is retried",
                self.room_id,
                self.file.path if not isinstance(exc, FileGone) else "the file",
                what,
                reason,
            )
        self._save_failure = reason

    async def save(self, *, reason: str = "auto") -> bool:
        """Write the document to its file if it changed; whether the file was written.

        Waits for the store at most ``store_wait`` seconds and never for a failing one: the
        file is the users' copy and must not fall behind because the store is down. Raises
        if the file could not be written.
        """
        async with self._save_lock:
            await self.writer.settle(self.settings.store_wait)
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
            if content != self._base or disk.hash != self.document.hash:
                if _is_empty(content) and not self._changed_by_people and disk.size:
                    raise RuntimeError(
                        "refusing to write an empty document over a non-empty file that no "
                        "collaborator emptied"
                    )
                self.log.info("Room %s: saving %s (%s)", self.room_id, self.file.path, reason)
                state = await self.file.save(content)
                self._file_mtime = state.last_modified
                self._base = content
                self._pending_base = content
                written = True
                hash_ = state.hash
            else:
                hash_ = disk.hash
            with self._changes_by(SERVER_SAVE):
                self._set_state(hash=hash_, dirty=False)
            if self._save_failure is not None:
                self.log.info("Room %s: %s saved again", self.room_id, self.file.path)
                self._save_failure = None
            await self._store_pending_base()
            return written

    _pending_base: Any = None

    async def _store_pending_base(self) -> None:
        """Store the base (the content last saved or loaded) as a document attribute, so
        that a merge after a restart starts from it. A failing store is logged by the
        writer; the base is then stored with the next save."""
        content, self._pending_base = self._pending_base, None
        if content is None:
            return
        try:
            data = await anyio.to_thread.run_sync(encode_base, content)
            await self._store_attributes({BASE: data})
        except Exception as exc:
            if self._pending_base is None:
                self._pending_base = content
            self.log.debug("Room %s: the base was not stored: %s", self.room_id, exc)

    async def _apply_file_change(self) -> None:
        """The file changed on disk behind our back: merge its change since the base."""
        state = await self.file.load()
        self._file_mtime = state.last_modified
        file_content = file_document(self.file.file_type, state.content).get()
        if _comparable(file_content) == _comparable(self._base):  # touched, or saved again
            with self._changes_by(SERVER_SAVE):
                self._set_state(hash=state.hash)
            return
        await self._merge_file(state, file_content, self._base, when="while open")
        await self.writer.settle(self.settings.store_wait)

    async def _settled_elsewhere(self, disk: FileState) -> bool:
        """Whether a file change that lacks our document's hash is in the document already.

        With a store shared by several servers (``supports_live_updates``) it usually is:
        another server saved the document (its new hash comes through the store a moment
        after the file), or imported an out-of-band edit. Taking either for a new edit
        would merge the file again, so wait for the hash; if it does not come, claim the
        import in the shared state: every server sees the same winning claim, and only its
        owner imports (the others import only if the winner never does).
        """
        if not getattr(self.store, "supports_live_updates", False) or disk.hash is None:
            return False
        grace = self.settings.shared_file_grace
        if await self._hash_arrives(disk.hash, grace):
            return True
        claim = f"{disk.hash}:{self._claim}"
        with self._changes_by(SERVER_SAVE):
            self._set_state(file_import=claim)
        await self.writer.settle(self.settings.store_wait)
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
        self._base = file_document(self.file.file_type, state.content).get()
        if self.document.get() != self._base:
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


def _comparable(content: Any) -> Any:
    """``content`` without what the contents manager adds on reading and drops on saving
    (cells' ``metadata.trusted``, from the notebook's signature): not a change of the file."""
    if not isinstance(content, dict) or not any(
        "trusted" in cell.get("metadata", {}) for cell in content.get("cells", ())
    ):
        return content
    cells = []
    for cell in content["cells"]:
        metadata = cell.get("metadata", {})
        if "trusted" in metadata:
            cell = {**cell, "metadata": {k: v for k, v in metadata.items() if k != "trusted"}}
        cells.append(cell)
    return {**content, "cells": cells}


def _is_empty(content: Any) -> bool:
    """A document with nothing in it (no cells, no text)."""
    if isinstance(content, dict):
        return not content.get("cells")
    return not content


# ---------------------------------------------------------------------------- manager


def _room_kind(room: Any) -> str:
    if isinstance(room, DocumentRoom):
        return "document"
    if isinstance(room, AwarenessRoom):
        return "awareness"
    return "fork"


class _StartStatus:
    """Passes ``started()`` on, remembering that it was called."""

    def __init__(self, inner: TaskStatus[None]) -> None:
        self.inner = inner
        self.started_ = False

    def started(self, value: Any = None) -> None:
        self.started_ = True
        self.inner.started(value)


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
    rooms: dict[str, Any] = field(default_factory=dict)
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
        try:
            check_room_format(file_format, file_type)
        except ValueError as exc:
            raise RoomError(f"room {room_id!r}: {exc}", code=4400) from None
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

    async def _serve(self, room: Any, *, task_status: TaskStatus[None]) -> None:
        """Run one room; a failure after it opened stays in it (logged, clients closed)."""
        gauge = metrics.OPEN_ROOMS.labels(_room_kind(room))
        gauge.inc()
        status = _StartStatus(task_status)
        try:
            await room.run(task_status=status)
        except BaseException as exc:
            if not status.started_ or not (isinstance(exc, Exception) or is_panic(exc)):
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

    async def _replay_spills(self) -> None:
        """At start-up: spills left by rooms that closed (or a server that died) during a
        store outage go back into the store, whether or not their documents are reopened."""
        assert self.spill is not None
        spill = self.spill
        keys = await anyio.to_thread.run_sync(spill.keys)
        for key in keys:
            store = self.make_store_for_key(key)
            if store is None:
                continue
            try:
                async with store:
                    metadata = b""
                    store.metadata_callback = lambda: metadata

                    def set_metadata(value: bytes) -> None:
                        nonlocal metadata
                        metadata = value

                    count = await spill.replay(key, store, set_metadata)
                self.log.warning(
                    "jupyter_ystore: wrote %d change(s) spilled during a store outage back to %s",
                    count,
                    key,
                )
            except Exception as exc:
                self.log.error("jupyter_ystore: the spill of %s stays for later: %s", key, exc)

    #: Set by the extension: a store for a document key (spill replay at start-up).
    make_store_for_key: Callable[[str], Optional[BaseYStore]] = lambda self, key: None  # type: ignore[assignment]

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
