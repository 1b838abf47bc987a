"""Rooms: one shared document per file, its clients, its store and its file.

``manager`` (opens and closes rooms), ``document`` (a document's room), ``writer`` (store,
then relay), ``filesync`` (the file: saves, changes made outside), ``files`` (the file through
the contents manager), ``fingerprints`` (the polls' stats, batched), ``spill`` (store
outages), ``aside`` (untrusted histories), ``forks`` (timeline and fork rooms), ``room`` (what
rooms and clients are).
"""

from jupyter_ystore.server.rooms.document import DocumentRoom, RoomSettings
from jupyter_ystore.server.rooms.manager import RoomManager
from jupyter_ystore.server.rooms.room import (
    GLOBAL_AWARENESS_ROOM,
    Client,
    Room,
    RoomError,
)
from jupyter_ystore.server.rooms.writer import Origin

__all__ = [
    "GLOBAL_AWARENESS_ROOM",
    "Client",
    "DocumentRoom",
    "Origin",
    "Room",
    "RoomError",
    "RoomManager",
    "RoomSettings",
]
