"""The names of documents, in one place: room ids and store keys.

The front end names a room ``{format}:{type}:{fileId}``; each document type opens in one
format only (another pair for the same file would open it a second time, as a separate
document). Stores keep a document under jupyter-collaboration's key ``.{type}:{fileId}.y``,
so that its users' histories are found. Keys written by older tools (``notebook:<name>``,
``json:notebook:<id>``) are still read.
"""

from __future__ import annotations

#: The one format each document type is opened in (the front end's ``format:type`` pairs).
DOCUMENT_FORMATS = {"notebook": "json", "file": "text", "unicode": "text", "blob": "base64"}


def check_format(file_format: str, file_type: str) -> None:
    """Raise ``ValueError`` unless ``format:type`` is how that type of document is opened."""
    expected = DOCUMENT_FORMATS.get(file_type)
    if expected is None:
        raise ValueError(f"unknown document type {file_type!r}")
    if file_format != expected:
        raise ValueError(f"a {file_type} is opened as {expected!r}, not {file_format!r}")


def parse_room_id(room_id: str) -> tuple[str, str, str]:
    """``(format, type, file id)`` of a document room id; ``ValueError`` if it is not one."""
    parts = room_id.split(":", 2)
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"{room_id!r} is not format:type:fileId")
    return parts[0], parts[1], parts[2]


def store_key(file_type: str, file_id: str) -> str:
    """The key a document's history is stored under (jupyter-collaboration's)."""
    return f".{file_type}:{file_id}.y"


def key_document_type(key: str) -> str | None:
    """The document type a store key or room id names (``notebook``), if any."""
    parts = key.rsplit("/", 1)[-1].split(":")
    if len(parts) >= 3:
        return parts[1].lower() or None
    if len(parts) == 2:
        return parts[0].lstrip(".").lower() or None
    return None


def key_file_id(key: str) -> str | None:
    """The file id a store key or room id names, if it has one."""
    parts = key.rsplit("/", 1)[-1].split(":")
    if len(parts) < 2:
        return None
    last = parts[-1]
    if last.endswith(".y"):
        last = last[:-2]
    return last or None
