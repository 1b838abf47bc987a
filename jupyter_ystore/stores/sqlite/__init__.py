"""``SQLiteYStore``: every document of a server in one SQLite database file."""

from jupyter_ystore.stores.sqlite.store import SQLiteYStore

__all__ = ["SQLiteYStore"]
