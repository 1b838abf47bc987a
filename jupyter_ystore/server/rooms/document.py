"""A document's room: one shared document per file, its clients, its store and its file.

The rules rooms exist for:

- Every change of a shared document goes through the store. One ``Doc.observe`` callback
  sees every change (a client's update, the server loading or merging the file, the
  ``state`` map after a save) and queues it in the room's ``WritePipeline``, which stores it
  and only then relays it (``writer``). Updates that came from the store itself (other
  servers' updates through ``watch()``) are relayed but not written back.
- Nothing from outside reaches the document unchecked (``core.update_guard``): an update that does
  not fit the document is refused and its sender disconnected; one that damages the document
  anyway resets the room, which reopens from the store.
- Neither the store nor the file simply wins. The room keeps the content it last saved to or
  loaded from the file (the *base*, stored with the document as an attribute, so it survives
  restarts); when the file changes on disk, the change from the base to the file is merged
  into the document as minimal edits (``filesync``, ``core.merge``), at start-up too.
- A stored history the room cannot trust (missing dependencies, undecodable records, empty
  while the file is not) is set aside (``aside``), never trusted and never deleted.
- The history has an identity (``history_id``, a store attribute), which is what the session
  id a tab holds names: a tab reconnects to any server that holds that history.
- One room's failure stays in that room.

Lifecycles are task groups: the manager's group (``manager``) holds one task per room; a
room's group holds its store and its writer; its work group, hosted in the room's own task,
holds its saver, its live updates and short tasks (a file change the poll found, a save
asked for). Closing a room (last client gone after ``document_cleanup_delay``, however the
room was opened, or server shutdown) saves, flushes and stops the store.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable

import anyio
from anyio.abc import TaskGroup, TaskStatus
from pycrdt import Doc

from jupyter_ystore.core.content import shared_document
from jupyter_ystore.core.item_index import DOCUMENT_ROOTS
from jupyter_ystore.core.keys import store_key
from jupyter_ystore.core.update_guard import (
    BadUpdate,
    DocumentDamaged,
    DocumentGuard,
    describe,
)
from jupyter_ystore.core.ydoc import CRDTError, crdt_errors
from jupyter_ystore.errors import YDocNotFound, YStoreCorruptError
from jupyter_ystore.server import metrics, protocol
from jupyter_ystore.server.awareness import AwarenessRelay
from jupyter_ystore.server.rooms import file_convert
from jupyter_ystore.server.rooms.aside import set_aside
from jupyter_ystore.server.rooms.files import DocumentFile, FileGone
from jupyter_ystore.server.rooms.filesync import (
    BASE,
    SERVER_SAVE,
    FileSync,
    decode_base,
    encode_base,
    document_is_empty,
    is_empty,
)
from jupyter_ystore.server.rooms.room import Client, RoomError
from jupyter_ystore.server.rooms.spill import Spill
from jupyter_ystore.server.rooms.writer import Origin, WritePipeline, client_origin
from jupyter_ystore.stores.base import BaseYStore

#: The store attribute naming the stored history (what session ids name).
HISTORY_ID = "history_id"


SERVER_LOAD = Origin("server", reason="load")
REMOTE = Origin("remote")


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
        self.document = shared_document(file.file_type, self.ydoc)
        self.guard = DocumentGuard(self.ydoc, DOCUMENT_ROOTS.get(file.file_type, DOCUMENT_ROOTS["file"]))
        self.relay = AwarenessRelay()
        self.writer = WritePipeline(
            room_id,
            store,
            self._relay_update,
            log,
            spill=spill,
            retry_delay=settings.store_retry_delay,
            key=store_key(file.file_type, file.file_id),
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
        self.changes = 0  # changes of the document so far (a converted content is current while equal)
        self.files = FileSync(self)
        self._cleanup_scope: anyio.CancelScope | None = None
        self._subscription: Any = None

    @property
    def clients(self) -> set[Any]:
        return self.relay.clients

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Open the room, report it started, serve until closed, then save and stop.

        Two task groups: ``tg`` holds the store and the writer, which outlive everything
        else; ``self._work`` holds what uses them (saver, file polls, live updates, save
        replies), cancelled once the final save is done and before the store stops.
        """
        failure: BaseException | None = None
        async with anyio.create_task_group() as tg:
            try:
                await tg.start(self.store.start)
                tg.start_soon(self.writer.run, tg)
                await self._open()
            except Exception as exc:
                failure = exc
            if failure is None:
                await self._serve(task_status)
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

    async def _serve(self, task_status: TaskStatus[None]) -> None:
        """Serve the open room until it is asked to close, then save it (``_finish``).

        The work group is hosted here, in the room's own task, not in one more task of its
        own: each open room's tasks are objects every full garbage collection walks (an
        anyio task waiting in a task group is about 26 of them)."""
        finished = False
        try:
            async with anyio.create_task_group() as work:
                self._work = work
                work.start_soon(self.files.saver)
                if self.settings.poll_interval:
                    self.files.watch_file(work)
                if getattr(self.store, "supports_live_updates", False):
                    work.start_soon(self._watch_store)
                if not self.clients:  # opened by a session request, a timeline, a fork...
                    self._schedule_cleanup()
                task_status.started()
                await self._close_requested.wait()
                await self._finish()
                finished = True
                work.cancel_scope.cancel()
        except Exception as exc:  # a bug in one of them: the room closes, the server goes on
            self.log.error("Room %s: %s; closing the room", self.room_id, exc, exc_info=exc)
            self.closing = True
            self._close_requested.set()
        finally:
            self._work = None
            self.files.unwatch_file()
        if not finished:
            await self._finish()

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
                        await self.files.save(reason="close")
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
            await self._open_file()
        except FileGone as exc:
            raise RoomError(str(exc), code=4404) from None
        await self.writer.flush()

    async def _open_file(self) -> None:
        # The file's time and hash only: when the store holds what was last saved to that
        # file, its content is never parsed (most of the cost of opening a notebook).
        file_state = await self.file.stat()
        await self._replay_spill()
        started = time.perf_counter()
        trusted = await self._load_from_store()
        attributes = await self._attributes()
        if not trusted:
            file_state = await self.file.load()
            # A fixed client id makes the loaded history the same for the same content;
            # file_content is the content as the document has it.
            update, file_content = await file_convert.load(self.file.file_type, file_state.content)
            with self._changes_by(SERVER_LOAD):
                self.ydoc.apply_update(update)
                self.files.record_file(file_state, path=self.file.path)
            self.files.loaded(file_state, file_content)
            self.history_id = await self._new_history_id()
            await self.store_attributes({HISTORY_ID: self.history_id.encode(), BASE: encode_base(file_content)})
            self.log.info("Room %s: loaded %s from disk", self.room_id, self.file.path)
        else:
            metrics.LOAD_SECONDS.labels(metrics.store_label(self.store)).observe(
                time.perf_counter() - started
            )
            stored_id = attributes.get(HISTORY_ID)
            self.history_id = stored_id.decode("ascii", "replace") if stored_id else None
            if self.history_id is None:  # a history written before histories had an id
                self.history_id = await self._new_history_id()
                await self.store_attributes({HISTORY_ID: self.history_id.encode()})
            self.files.opened(file_state)
            await self.files.reconcile(file_state, decode_base(attributes.get(BASE)))

    async def _new_history_id(self) -> str:
        """The id of a history without one: a digest of its first stored record. Servers
        sharing a store that open a new document at the same moment each store a load, but
        read the same first record, so they name the history alike (a random id each would
        split one history's sessions between servers: a tab could not move). A history
        deleted and loaded again starts with another record, hence another id."""
        try:
            await self.writer.flush()
            # Read through a store of its own: reading through the room's would move where
            # its watch() goes on from, past other servers' rows not applied yet.
            async with self.store.with_path(self.store.path) as reader:
                async for update, metadata, timestamp in reader.read():
                    digest = hashlib.blake2b(digest_size=16)
                    for part in (update, metadata or b"", repr(timestamp).encode()):
                        digest.update(len(part).to_bytes(8, "big") + part)
                    return digest.hexdigest()
        except Exception:  # nothing readable yet (a store outage): a random id
            pass
        return uuid.uuid4().hex

    async def _replay_spill(self) -> None:
        """Changes spilled while the store failed (the room closed, or the server died, before
        it recovered) go into the store before the history is read."""
        if self.spill is None:
            return
        count = await self.spill.replay(self.writer.key, self.store)
        if count:
            self.log.warning(
                "Room %s: wrote %d change(s) spilled during a store outage back to the store",
                self.room_id,
                count,
            )

    async def _load_from_store(self) -> bool:
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
            if problem is None and document_is_empty(self.document):
                if not is_empty((await self.file.load()).content):
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
        self.document = shared_document(self.file.file_type, self.ydoc)
        self.guard = DocumentGuard(self.ydoc, self.guard.roots)
        self._subscription = self.ydoc.observe(self._on_change)

    async def _attributes(self) -> dict[str, bytes]:
        try:
            return await self.store.get_attributes()
        except NotImplementedError:  # a store class of a user's own, without attributes
            return {}

    async def store_attributes(self, values: dict[str, bytes | None]) -> None:
        try:
            await self.store.set_attributes(values)
        except NotImplementedError:
            pass

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
        self.changes += 1
        self.guard.note_change(update)
        origin = self._origin or Origin("server")
        if origin is REMOTE:  # durable already: relay now
            self._relay_update(update)
            return
        self.writer.queue(update, origin)
        if origin is not SERVER_SAVE and origin is not SERVER_LOAD:
            self.files.schedule_save()

    def _relay_update(self, update: bytes) -> None:
        self.relay.broadcast(protocol.update_message(update))

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

    async def receive_update(self, client: Client, update: bytes) -> None:
        """A client's update: checked against the document, applied, stored, relayed.
        ``BadUpdate`` when refused (nothing of it applied, stored or relayed)."""
        with self._receiving(client, update):
            await self.guard.apply(update)

    def receive_update_now(self, client: Client, update: bytes) -> bool:
        """``receive_update`` without waiting, when the guard can take the update at once
        (``DocumentGuard.apply_now``); whether it was done."""
        with self._receiving(client, update, held=True):
            return self.guard.apply_now(update)

    def _receiving(self, client: Client, update: bytes, *, held: bool = False) -> _Receiving:
        """Around applying a client's update: its origin; a damaged document reset, with
        nothing of the update stored or relayed. ``held``: around code that does not await,
        the writer holds the change until the update is checked, then may hand it straight
        to the store (``WritePipeline.hold``); else its task takes it at an await."""
        if self._fault is not None:
            raise BadUpdate("the document is being reset; reconnect")
        return _Receiving(self, client_origin(client.username), update, held)

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

    def join(self, client: Client) -> None:
        if self._cleanup_scope is not None:
            self._cleanup_scope.cancel()
            self._cleanup_scope = None
        self.relay.add(client)
        client.send(protocol.sync_step1(self.ydoc))
        if client.can_write and not self.guard.prepared and self._work is not None:
            # Someone who may edit: the checks' index is built now, not in the way of the
            # first keystroke (a class opening its notebooks at once would queue every
            # first edit behind every room's build).
            self._work.start_soon(self.guard.prepare)

    def leave(self, client: Client) -> None:
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

    async def handle(self, client: Client, message: protocol.Message) -> None:
        """Act on one parsed message of ``client``. ``ProtocolError`` and ``BadUpdate`` are
        the client's fault (the caller disconnects it)."""
        pending = self.handle_now(client, message)
        if pending is not None:
            await pending

    def handle_now(self, client: Client, message: protocol.Message) -> Awaitable[None] | None:
        """``handle``, done at once for the messages that need no wait (awareness, and the
        updates the guard takes without a thread: nearly every message); for the others,
        the awaitable that handles them. A websocket then needs no task per message."""
        if isinstance(message, protocol.AwarenessMessage):
            self.relay.handle(client, message)
        elif isinstance(message, (protocol.SyncStep2, protocol.SyncUpdate)):
            if message.update == b"\x00\x00":
                return None  # an empty update (a peer with nothing new)
            if not client.can_write:
                raise PermissionError("read-only access: your changes are not accepted")
            if not self.receive_update_now(client, message.update):
                return self.receive_update(client, message.update)
        elif isinstance(message, protocol.SyncStep1):
            return self._answer_sync(client, message.state_vector)
        elif isinstance(message, protocol.QueryAwareness):
            self.relay.query(client)
        elif isinstance(message, protocol.SaveRequest):
            if self._work is None:  # closing: the final save is on its way
                client.send(protocol.save_reply(message.request_id, "skipped"))
            else:
                self._work.start_soon(self._answer_save, client, message.request_id)
        return None

    async def _answer_sync(self, client: Client, state_vector: bytes) -> None:
        # A step 2 answers once what the client sent before is durable (never waiting for a
        # failing store: collaboration goes on during an outage).
        await self.writer.settle(self.settings.store_wait)
        client.send(protocol.sync_step2(self.ydoc, state_vector))

    async def _answer_save(self, client: Client, request_id: int) -> None:
        if not client.can_write:
            client.send(protocol.save_reply(request_id, "failed"))
            return
        try:
            await self.files.save(reason="request")
            status = "success"
        except Exception as exc:
            self.files.save_failed(exc, f"requested by {client.username}")
            status = "failed"
        client.send(protocol.save_reply(request_id, status))


class _Receiving(DocumentRoom._OriginScope):
    """``DocumentRoom._receiving``: the origin's scope, plus what a client's update needs
    (a class, not a generator: it runs for every keystroke)."""

    def __init__(self, room: DocumentRoom, origin: Origin, update: bytes, held: bool) -> None:
        super().__init__(room, origin)
        self.update = update
        self.held = held

    def __enter__(self) -> None:
        writer = self.room.writer
        self.mark = writer.hold() if self.held else writer.queued
        super().__enter__()

    def __exit__(self, kind: Any, exc: Any, traceback: Any) -> None:
        super().__exit__()
        room = self.room
        writer = room.writer
        try:
            if exc is None:
                if writer.queued > self.mark:
                    room._changed_by_people = True
            elif isinstance(exc, DocumentDamaged):
                writer.drop_since(self.mark)  # never stored, never relayed
                room.reset(f"an update from {self.origin.user} ({describe(self.update)}) {exc}")
        finally:
            if self.held:
                writer.release()
