"""Rooms: one shared document per file, its clients, its store and its file.

``document`` (a document's room and the room manager), ``writer`` (store, then relay),
``files`` (the file, through the contents manager), ``spill`` (outages), ``aside`` (untrusted
histories), ``forks`` (timeline and fork rooms).
"""

from jupyter_ystore.server.rooms.document import (
    GLOBAL_AWARENESS_ROOM,
    AwarenessRoom,
    DocumentRoom,
    Origin,
    RoomError,
    RoomManager,
    RoomSettings,
    check_room_format,
)

__all__ = [
    "GLOBAL_AWARENESS_ROOM",
    "AwarenessRoom",
    "DocumentRoom",
    "Origin",
    "RoomError",
    "RoomManager",
    "RoomSettings",
    "check_room_format",
]
