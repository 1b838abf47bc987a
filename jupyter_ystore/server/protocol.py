"""The y-websocket wire protocol as the official JupyterLab front end speaks it.

Message building uses pycrdt's helpers; parsing is strict (every length is checked against the
frame) because frames come from the network: a truncated or garbled frame must become a
``ProtocolError`` for that one client, never an exception deep inside a room.

Frame layout (lib0 encoding)::

    [0][0][varBytes state vector]      sync step 1
    [0][1][varBytes update]            sync step 2
    [0][2][varBytes update]            update
    [1][varBytes awareness update]     awareness
    [2][varString "save"][varUint id]  RAW: client save request (JSON replies go the other way)
    [3]                                query awareness
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Iterable, Union

from pycrdt import (
    Awareness,
    Doc,
    Encoder,
    create_awareness_message,
    create_sync_message,
    create_update_message,
)

from jupyter_ystore.core.codec import (
    TruncatedError,
    read_var_bytes,
    read_var_string,
    read_var_uint,
    write_var_bytes,
    write_var_string,
    write_var_uint,
)

__all__ = [
    "MessageType",
    "SyncType",
    "ProtocolError",
    "SyncStep1",
    "SyncStep2",
    "SyncUpdate",
    "AwarenessMessage",
    "QueryAwareness",
    "SaveRequest",
    "RawMessage",
    "UnknownMessage",
    "parse_message",
    "sync_step1",
    "sync_step2",
    "update_message",
    "awareness_message",
    "raw_json_message",
    "save_reply",
    "read_awareness_entries",
    "awareness_text_frame",
]


class MessageType(IntEnum):
    SYNC = 0
    AWARENESS = 1
    RAW = 2
    QUERY_AWARENESS = 3


class SyncType(IntEnum):
    STEP1 = 0
    STEP2 = 1
    UPDATE = 2


class ProtocolError(ValueError):
    """A frame that does not follow the protocol (the sender gets this text back)."""


@dataclass(frozen=True)
class SyncStep1:
    state_vector: bytes


@dataclass(frozen=True)
class SyncStep2:
    update: bytes


@dataclass(frozen=True)
class SyncUpdate:
    update: bytes


@dataclass(frozen=True)
class AwarenessMessage:
    update: bytes
    frame: bytes  # relayed as received (the front end expects its own echo)


@dataclass(frozen=True)
class QueryAwareness:
    pass


@dataclass(frozen=True)
class SaveRequest:
    request_id: int


@dataclass(frozen=True)
class RawMessage:
    text: str


@dataclass(frozen=True)
class UnknownMessage:
    message_type: int


Message = Union[
    SyncStep1,
    SyncStep2,
    SyncUpdate,
    AwarenessMessage,
    QueryAwareness,
    SaveRequest,
    RawMessage,
    UnknownMessage,
]


#: The first two bytes of a sync update message.
_UPDATE_HEAD = bytes((MessageType.SYNC, SyncType.UPDATE))


def parse_message(frame: bytes) -> Message:
    """Decode one binary websocket frame; raise ``ProtocolError`` when it is malformed."""
    if type(frame) is bytes and frame[:2] == _UPDATE_HEAD and len(frame) > 2:
        size = frame[2]  # the common case, a keystroke: a length in one byte
        if size < 0x80 and len(frame) >= 3 + size:
            return SyncUpdate(frame[3 : 3 + size])
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise ProtocolError("text frames are not part of the protocol; send binary frames")
    frame = bytes(frame)
    if not frame:
        raise ProtocolError("empty frame")
    try:
        message_type, pos = read_var_uint(frame)
        if message_type == MessageType.SYNC:
            sync_type, pos = read_var_uint(frame, pos)
            payload, pos = read_var_bytes(frame, pos)
            if sync_type == SyncType.STEP1:
                return SyncStep1(payload)
            if sync_type == SyncType.STEP2:
                return SyncStep2(payload)
            if sync_type == SyncType.UPDATE:
                return SyncUpdate(payload)
            raise ProtocolError(f"unknown sync message type {sync_type}")
        if message_type == MessageType.AWARENESS:
            payload, pos = read_var_bytes(frame, pos)
            return AwarenessMessage(payload, frame)
        if message_type == MessageType.QUERY_AWARENESS:
            return QueryAwareness()
        if message_type == MessageType.RAW:
            text, pos = read_var_string(frame, pos)
            if text == "save":
                request_id, pos = read_var_uint(frame, pos)
                return SaveRequest(request_id)
            return RawMessage(text)
        return UnknownMessage(message_type)
    except TruncatedError as exc:
        raise ProtocolError(f"truncated frame: {exc}") from None
    except UnicodeDecodeError:
        raise ProtocolError("RAW message is not valid UTF-8") from None
    except ValueError as exc:
        if isinstance(exc, ProtocolError):
            raise
        raise ProtocolError(f"malformed frame: {exc}") from None


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON (a peer's JSON.parse would throw on it)")


def read_awareness_entries(update: bytes) -> list[tuple[int, int, str | None]]:
    """Decode an awareness update strictly: ``[(client_id, clock, state_json)]``, a removal's
    state ``None``.

    Each state is checked by parsing it, as every peer's ``JSON.parse`` will (Python's
    extensions, ``NaN`` and ``Infinity``, refused), and kept as the text it came as: a
    string is one object the garbage collector does not track, where the parsed state was
    five or more it walked in every full collection, for every client of every room."""
    try:
        count, pos = read_var_uint(update)
        entries = []
        for _ in range(count):
            client_id, pos = read_var_uint(update, pos)
            clock, pos = read_var_uint(update, pos)
            text, pos = read_var_string(update, pos)
            present = text and json.loads(text, parse_constant=_not_json) is not None
            entries.append((client_id, clock, text if present else None))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(f"malformed awareness update: {type(exc).__name__}: {exc}") from None
    return entries


def encode_awareness_update(entries: Iterable[tuple[int, int, str | None]]) -> bytes:
    """An awareness update of states given as JSON text (``read_awareness_entries``'s form),
    written as they are; ``None`` is a removal. Lengths in UTF-8 bytes, as lib0 reads them
    (pycrdt's ``Encoder.write_var_string`` writes characters)."""
    entries = list(entries)
    parts = [write_var_uint(len(entries))]
    for client_id, clock, text in entries:
        parts.append(write_var_uint(client_id))
        parts.append(write_var_uint(clock))
        parts.append(write_var_string("null" if text is None else text))
    return b"".join(parts)


def awareness_text_frame(entries: Iterable[tuple[int, int, str | None]]) -> bytes:
    """The awareness message of ``encode_awareness_update(entries)``."""
    return create_awareness_message(encode_awareness_update(entries))


def sync_step1(doc: Doc) -> bytes:
    """Our state vector, asking the peer for what we miss."""
    return create_sync_message(doc)


def sync_step2(doc: Doc, state_vector: bytes) -> bytes:
    """What the peer with ``state_vector`` misses."""
    try:
        update = doc.get_update(state_vector)
    except Exception as exc:
        raise ProtocolError(f"the state vector does not decode: {exc}") from None
    return bytes([MessageType.SYNC, SyncType.STEP2]) + write_var_bytes(update)


def update_message(update: bytes) -> bytes:
    return create_update_message(update)


def awareness_message(awareness: Awareness, client_ids: list[int]) -> bytes:
    return create_awareness_message(awareness.encode_awareness_update(client_ids))


def raw_json_message(payload: dict[str, Any]) -> bytes:
    """A RAW frame carrying JSON, the way the front end reads save replies and conflicts."""
    encoder = Encoder()
    encoder.write_var_uint(MessageType.RAW)
    encoder.write_var_string(json.dumps(payload))
    return encoder.to_bytes()


def save_reply(request_id: int, status: str) -> bytes:
    """``{"type":"save","responseTo":id,"status":"success"|"failed"|"skipped"}``."""
    return raw_json_message({"type": "save", "responseTo": request_id, "status": status})
