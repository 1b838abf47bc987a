"""Exceptions raised by the stores.

``YDocNotFound`` means one thing only: nothing is stored for the document. Every other
failure (corruption, locking, permissions, an unknown format version) is a ``YStoreError``
carrying the path of the store and a hint of what to do, so that a caller never mistakes a
broken store for an empty document and rebuilds it from disk.
"""

from __future__ import annotations


def _other_not_found_errors() -> tuple[type[Exception], ...]:
    """pycrdt-store's "nothing stored" exception, where installed: jupyter-collaboration's rooms
    catch that one, and must catch ours when our stores serve as its ``ystore_class``."""
    import importlib.util

    try:
        if importlib.util.find_spec("pycrdt.store") is None:
            return (Exception,)
        from pycrdt.store import YDocNotFound as PycrdtYDocNotFound
    except ImportError:
        return (Exception,)
    return (PycrdtYDocNotFound,)


class YDocNotFound(*_other_not_found_errors()):  # type: ignore[misc]
    """Nothing is stored for this document (a new document, not an error of the store)."""


class YStoreError(Exception):
    """A store could not do what was asked; the data it holds is left untouched."""

    def __init__(self, message: str, *, path: str | None = None, hint: str | None = None):
        self.path = path
        self.hint = hint
        text = message
        if path:
            text = f"{text} [{path}]"
        if hint:
            text = f"{text}. {hint}"
        super().__init__(text)


class YStoreCorruptError(YStoreError):
    """Stored bytes cannot be decoded (a damaged file or database)."""


class YStoreLockedError(YStoreError):
    """Another process holds the store locked for longer than we are willing to wait."""


class YStorePermissionError(YStoreError):
    """The operating system refused access to the store's file or folder."""


class YStoreVersionError(YStoreError):
    """The store was written in a format version this code does not know."""


class YStoreInvalidPath(YStoreError, ValueError):
    """A document path would leave the store's folder or is not a valid name."""


class YStoreInvalidUpdate(YStoreError, ValueError):
    """``write()`` was given bytes that are not a Yjs v1 update; nothing was stored. A caller
    drops such an update (retrying cannot help), unlike an outage of the store."""


class YStoreConnectionError(YStoreError):
    """A database server could not be reached."""
