"""Awareness (who is here, cursors) relayed between the clients of one room.

Every awareness frame is sent to every client, the sender included (the front end waits for
its own echo). A client may only set or remove the states of the awareness ids it uses: the
first client to set an id owns it until it removes it or leaves, and a frame setting the state
of an id another user owns is refused. When a socket closes, the removal of its states is
broadcast.

Other users' ids in a frame are normal, though: y-websocket sends every change of its
awareness, whatever its origin, so it echoes the states the server relayed to it, and it
removes the states of others itself (a state not renewed for 30 s, all of them when its
socket closed). Entries no newer than what the server holds (echoes), and removals of another
user's state, are dropped (not applied, not relayed) and the rest of the frame goes on;
refusing the frame disconnected the tab again at every reconnection (seen after a server
restart, with a real browser). Only a newer state for another user's id is refused.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus
from pycrdt import Doc

from jupyter_ystore.server import protocol
from jupyter_ystore.server.awareness_states import AwarenessStates

if TYPE_CHECKING:  # (rooms import this module: importing them here would be a cycle)
    from jupyter_ystore.server.rooms.room import Client

#: Awareness ids one client may hold at once (a tab uses one).
MAX_IDS_PER_CLIENT = 8


class AwarenessRelay:
    """The awareness states of one room and which client owns each of them."""

    def __init__(self) -> None:
        self.awareness = AwarenessStates()  # the server is not a peer: no state of its own
        self.clients: set[Any] = set()
        #: The ids each client set a state for (tuples: nearly always one id, and a tuple of
        #: ints is no object for the garbage collector to walk, a set is one a client).
        self._owned: dict[Any, tuple[int, ...]] = {}
        self._owner: dict[int, Any] = {}

    def broadcast(self, message: bytes) -> None:
        for client in list(self.clients):
            client.send(message)

    def add(self, client: Any) -> None:
        self.clients.add(client)
        self._owned.setdefault(client, ())
        ids = list(self.awareness.states)
        if ids:
            client.send(self.awareness.message(ids))

    def handle(self, client: Any, message: protocol.AwarenessMessage) -> None:
        """Relay one awareness frame of ``client``; ``ProtocolError`` if it is malformed or
        touches ids the client may not change."""
        entries = protocol.read_awareness_entries(message.update)
        owned = self._owned.setdefault(client, ())
        claims = []
        kept = []
        clocks = self.awareness.clocks
        for entry in entries:
            client_id, clock, state = entry
            owner = self._owner.get(client_id)
            if owner is not client:
                known = clocks.get(client_id)
                if known is not None and clock <= known:
                    continue  # an echo: y-websocket sends back every change it applies
            if owner is not None and owner is not client:
                if getattr(owner, "username", None) != getattr(client, "username", None):
                    if state is None:
                        continue  # its own view of another user's presence: dropped
                    raise protocol.ProtocolError(f"awareness id {client_id} belongs to another user")
                claims.append(client_id)  # the same user's new socket (a reload, a reconnect)
            elif owner is None and state is not None:
                claims.append(client_id)
            kept.append(entry)
        if len(owned) + len(claims) > MAX_IDS_PER_CLIENT:
            raise protocol.ProtocolError(f"more than {MAX_IDS_PER_CLIENT} awareness ids on one socket")
        if not kept:
            return
        frame = message.frame
        if len(kept) < len(entries):  # re-encoded without the dropped entries
            frame = protocol.awareness_text_frame(kept)
        entries = kept
        self.awareness.apply(entries)
        for client_id, _clock, state in entries:
            previous = self._owner.get(client_id)
            if state is None:
                if previous is client or client_id in claims:
                    self._release(client_id)
                continue
            if previous is not client:
                if previous is not None:
                    self._disown(previous, client_id)
                self._owner[client_id] = client
                mine = self._owned.get(client, ())
                if client_id not in mine:
                    self._owned[client] = mine + (client_id,)
        self.broadcast(frame)

    def _release(self, client_id: int) -> None:
        owner = self._owner.pop(client_id, None)
        if owner is not None:
            self._disown(owner, client_id)

    def _disown(self, client: Any, client_id: int) -> None:
        owned = self._owned.get(client)
        if owned is not None and client_id in owned:
            self._owned[client] = tuple(cid for cid in owned if cid != client_id)

    def query(self, client: Any) -> None:
        ids = list(self.awareness.states)
        client.send(self.awareness.message(ids))

    def remove(self, client: Any) -> None:
        self.clients.discard(client)
        ids = [cid for cid in self._owned.pop(client, ()) if cid in self.awareness.states]
        for client_id in ids:
            if self._owner.get(client_id) is client:
                del self._owner[client_id]
        if ids:
            self.awareness.remove(ids)
            self.broadcast(self.awareness.message(ids))


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

    def join(self, client: Client) -> None:
        self.relay.add(client)

    def leave(self, client: Client) -> None:
        self.relay.remove(client)

    def handle_now(self, client: Client, message: protocol.Message) -> None:
        """``handle`` needs no wait here."""
        if isinstance(message, protocol.AwarenessMessage):
            self.relay.handle(client, message)
        elif isinstance(message, protocol.QueryAwareness):
            self.relay.query(client)
        elif isinstance(message, protocol.SyncStep1):
            # y-websocket clients sync every room; answer with an empty document.
            client.send(protocol.sync_step2(Doc(), message.state_vector))
        # Updates and RAW messages have nothing to act on here.

    async def handle(self, client: Client, message: protocol.Message) -> None:
        self.handle_now(client, message)

    async def close(self) -> None:
        self.closing = True
        self.closed.set()
