"""Fork rooms: a copy of a document that clients can join, apart from the document itself.

The JupyterLab front end uses forks twice: the document timeline (the client connects its
document to a fork, the server moves the fork's content through older versions, and
"restore" makes the root document equal to the fork) and the fork API (``PUT fork/{root}``,
optionally kept in sync with the root, merged back on ``DELETE ...?merge=true``).

A fork lives in the room manager next to the rooms (same websocket endpoint, same
permissions), but it has no store and no file: it is a view, and nothing in it is durable
until it is merged into its root, where the change goes through the root's store like any
edit. Merging sends the root exactly the operations the fork's clients already hold (the
fork's changes since it was copied), so a client that reconnects to the root after a
restore does not insert the restored content a second time.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskStatus
from pycrdt import Doc

from jupyter_ystore.core.item_index import DOCUMENT_ROOTS
from jupyter_ystore.core.update_guard import DocumentDamaged, DocumentGuard
from jupyter_ystore.core.ydoc import CRDTError, crdt_errors
from jupyter_ystore.server import protocol
from jupyter_ystore.server.awareness import AwarenessRelay


@dataclass
class ForkInfo:
    """What ``GET fork/{root}`` lists for each fork (the front end's ``fork_info``)."""

    root_roomid: str
    synchronize: bool = False
    title: str = ""
    description: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "root_roomid": self.root_roomid,
            "synchronize": self.synchronize,
            "title": self.title,
            "description": self.description,
        }


@dataclass
class ForkRoom:
    """A document copied from a root room at ``base_state``; clients join it by its id."""

    room_id: str
    info: ForkInfo
    root_update: bytes  # the root document's whole state when the fork was made
    log: logging.Logger
    idle_timeout: float | None = 300.0
    read_only: bool = False
    timeline: Any = None  # the slider of a timeline fork (``timeline.Timeline``)
    ydoc: Doc = field(default_factory=Doc)
    relay: AwarenessRelay = field(default_factory=AwarenessRelay)
    closing: bool = False
    created: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.ydoc.apply_update(self.root_update)
        self.base_state = self.ydoc.get_state()
        self.closed = anyio.Event()
        self._close_requested = anyio.Event()
        self._activity = anyio.Event()
        parts = self.info.root_roomid.split(":")
        file_type = parts[1] if len(parts) == 3 else "file"
        self.guard = DocumentGuard(self.ydoc, DOCUMENT_ROOTS.get(file_type, DOCUMENT_ROOTS["file"]))
        self._subscription = self.ydoc.observe(self._on_change)
        self._root_subscription: Any = None
        self._root_doc: Any = None

    @property
    def clients(self) -> set[Any]:
        return self.relay.clients

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until closed, or until no client has been connected for ``idle_timeout``
        seconds (a timeline nobody restores, a browser tab closed)."""
        task_status.started()
        try:
            while not self._close_requested.is_set():
                timeout = self.idle_timeout if not self.clients else None
                with anyio.move_on_after(timeout) as scope:
                    await self._activity.wait()
                    self._activity = anyio.Event()
                if scope.cancelled_caught and not self.clients:
                    self.log.info("Fork %s of %s: unused, closing", self.room_id, self.info.root_roomid)
                    break
        finally:
            self.closing = True
            self.stop_following()
            self.ydoc.unobserve(self._subscription)
            # Clients still here (a fork deleted or restored under them) learn it is gone.
            for client in list(self.clients):
                close = getattr(client, "close", None)
                if close is not None:
                    close(1000, "fork closed")
            self.closed.set()

    async def close(self) -> None:
        self.closing = True
        self._close_requested.set()
        self._activity.set()
        await self.closed.wait()

    # ------------------------------------------------------------------ the root

    def follow(self, root_doc: Doc) -> None:
        """Apply the root's changes to the fork as they happen (``synchronize``)."""
        self._root_doc = root_doc
        self._root_subscription = root_doc.observe(self._on_root_change)

    def _on_root_change(self, event: Any) -> None:
        try:
            with crdt_errors():
                self.ydoc.apply_update(event.update)
        except CRDTError as exc:  # the root's own update: never seen, but never fatal
            self.log.error("Fork %s: a change of its root did not apply: %s", self.room_id, exc)

    def stop_following(self) -> None:
        if self._root_subscription is not None:
            try:
                self._root_doc.unobserve(self._root_subscription)
            except Exception:  # the root room closed and dropped its document
                pass
            self._root_subscription = None
            self._root_doc = None

    def changes(self) -> bytes:
        """The fork's own operations since it was copied (what merging sends to the root)."""
        return self.ydoc.get_update(self.base_state)

    # ------------------------------------------------------------------ clients

    def _on_change(self, event: Any) -> None:
        if event.update != b"\x00\x00":
            self.guard.note_change(event.update)
            self.relay.broadcast(protocol.update_message(event.update))

    def join(self, client: Any) -> None:
        self.relay.add(client)
        self._activity.set()
        client.send(protocol.sync_step1(self.ydoc))

    def leave(self, client: Any) -> None:
        self.relay.remove(client)
        self._activity.set()

    async def handle(self, client: Any, message: protocol.Message) -> None:
        if isinstance(message, protocol.SyncStep1):
            client.send(protocol.sync_step2(self.ydoc, message.state_vector))
        elif isinstance(message, (protocol.SyncStep2, protocol.SyncUpdate)):
            if message.update == b"\x00\x00":
                return
            if self.read_only or not client.can_write:
                raise PermissionError("this fork is read-only: your changes are not accepted")
            try:
                await self.guard.apply(message.update)
            except DocumentDamaged as exc:
                self.log.error("Fork %s: an update from %s %s; closing the fork", self.room_id, client.username, exc)
                self._close_requested.set()
                self._activity.set()
                raise
        elif isinstance(message, protocol.AwarenessMessage):
            self.relay.handle(client, message)
        elif isinstance(message, protocol.QueryAwareness):
            self.relay.query(client)
        elif isinstance(message, protocol.SaveRequest):
            # Nothing of a fork is saved to a file; the front end shows "skipped" quietly.
            client.send(protocol.save_reply(message.request_id, "skipped"))
