"""``FileYStore``: one append-only log file per document (ypy-websocket's VERSION:2)."""

from jupyter_ystore.stores.file.store import FileYStore, TempFileYStore

__all__ = ["FileYStore", "TempFileYStore"]
