"""Collaboration session ids: they name a document's stored history, not a server process.

The front end gets a session id from ``PUT /api/collaboration/session/{path}`` and presents it
on every (re)connection of that tab's websocket. Ours is ``<history id>.<tab nonce>``:

- the history id is kept in the store with the document (``rooms.HISTORY_ID``), so after a
  restart, a crash, a long sleep, or on another server of the same database, a tab whose
  history is still there reconnects and merges what it typed meanwhile exactly once;
- it changes only when the history is replaced (deleted, set aside and reloaded from the
  file), and then the tab is asked to reload, since merging into another history would
  duplicate or scramble content;
- the nonce is new for every session request, so a server can refuse one tab's session
  (after telling it to reload) without refusing the other tabs of the same document.
"""

from __future__ import annotations

import secrets


def new_session_id(history_id: str) -> str:
    """A session id for one tab of the document whose history is ``history_id``."""
    return f"{history_id}.{secrets.token_hex(6)}"


def history_of(session_id: str) -> str:
    """The history id a session id names (a session id of another form names none)."""
    return session_id.split(".", 1)[0] if "." in session_id else ""
